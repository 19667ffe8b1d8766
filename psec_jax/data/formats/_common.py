"""Shared pieces of the dataset readers and writer in :mod:`psec_jax.data.formats`.

* :class:`DatasetError`, the one exception every reader and writer raises for a bad file.
* The field table: each transition key with its stored kind (float32 or bool) and rank, and
  ``D4RL_KEYS`` (always present) / ``OPTIONAL_KEYS`` (``costs``).
* Validation and conversion of transition arrays (ranks, one common length N > 0, matching
  observation widths, finite floats, 0/1 flags).
* Metadata: encoding a metadata dict as attributes of the ``metadata`` group, and reading that
  group (attributes and datasets) back.
* HDF5 access: opening a file for reading, looking up and reading top-level datasets, choosing
  the requested keys; and writing a file atomically (temporary file + ``os.replace``).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

Transitions = dict[str, np.ndarray]
PathLike = str | os.PathLike

__all__ = ["D4RL_KEYS", "DatasetError", "OPTIONAL_KEYS", "PathLike", "Transitions"]


class DatasetError(ValueError):
    """A dataset file is missing, unreadable or does not have the expected layout or values."""


@dataclass(frozen=True)
class _Field:
    kind: str  # "float" (stored float32) or "flag" (stored bool)
    rank: int  # 2: [N, dim]; 1: [N]


_FIELDS: dict[str, _Field] = {
    "observations": _Field("float", 2),
    "actions": _Field("float", 2),
    "rewards": _Field("float", 1),
    "terminals": _Field("flag", 1),
    "timeouts": _Field("flag", 1),
    "next_observations": _Field("float", 2),
    "costs": _Field("float", 1),
}

D4RL_KEYS: tuple[str, ...] = (
    "observations",
    "actions",
    "rewards",
    "terminals",
    "timeouts",
    "next_observations",
)
"""Keys every transition dict has."""

OPTIONAL_KEYS: tuple[str, ...] = ("costs",)
"""Keys a transition dict may have."""

_METADATA_GROUP = "metadata"
_JSON_KEYS_ATTR = "_json_encoded_keys"  # on the metadata group: names whose value is JSON text

# --------------------------------------------------------------------------------------------
# Validation and conversion of transition arrays
# --------------------------------------------------------------------------------------------


def _expected(key: str) -> str:
    return "[N, dim]" if _FIELDS[key].rank == 2 else "[N]"


def _check_layout(shapes: Mapping[str, tuple[int, ...]], source: str) -> int:
    """Check ranks, one common length N > 0 and matching observation widths; return N.

    Rank-1 keys may also have shape [N, 1] (some D4RL files store rewards that way).
    """
    for key, shape in shapes.items():
        rank = _FIELDS[key].rank
        squeezable = rank == 1 and len(shape) == 2 and shape[1] == 1
        if len(shape) != rank and not squeezable:
            raise DatasetError(f"{source}: key '{key}' has shape {shape}, expected {_expected(key)}")
    ref = "observations" if "observations" in shapes else next(iter(shapes))
    n = shapes[ref][0]
    for key, shape in shapes.items():
        if shape[0] != n:
            raise DatasetError(f"{source}: key '{key}' has length {shape[0]} but '{ref}' has length {n}")
    if n == 0:
        raise DatasetError(f"{source}: key '{ref}' holds no transitions (length 0)")
    obs, next_obs = shapes.get("observations"), shapes.get("next_observations")
    if obs is not None and next_obs is not None and obs[1:] != next_obs[1:]:
        raise DatasetError(f"{source}: key 'next_observations' has shape {next_obs} but 'observations' has shape {obs}")
    return n


def _coerce(key: str, array: np.ndarray, source: str) -> np.ndarray:
    """Convert one array to its stored dtype (float32 or bool) and check its values.

    Floats must be finite; flags must be bool or numbers equal to 0 or 1.
    """
    array = np.asarray(array)
    field = _FIELDS[key]
    if field.rank == 1 and array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != field.rank:
        raise DatasetError(f"{source}: key '{key}' has shape {array.shape}, expected {_expected(key)}")
    if array.dtype.kind not in "biuf":
        raise DatasetError(f"{source}: key '{key}' has non-numeric dtype {array.dtype}")
    if field.kind == "flag":
        if array.dtype != np.bool_ and not np.isin(array, (0, 1)).all():
            raise DatasetError(f"{source}: key '{key}' must be boolean (or 0/1), got other values")
        return array.astype(np.bool_)
    with np.errstate(over="ignore", invalid="ignore"):
        out = array.astype(np.float32)
    finite = np.isfinite(out)
    if not finite.all():
        row = int(np.argwhere(~finite)[0][0])
        raise DatasetError(
            f"{source}: key '{key}' contains non-finite values (first at row {row}; "
            "values beyond the float32 range count as non-finite)"
        )
    return out


def _validate(data: Mapping[str, Any], source: str, required: Iterable[str]) -> Transitions:
    """Check an in-memory transition dict and return it converted to float32/bool arrays."""
    if not isinstance(data, Mapping):
        raise DatasetError(f"{source}: data must be a mapping of key -> array, got {type(data)}")
    for key in required:
        if key not in data:
            raise DatasetError(f"{source}: missing required key '{key}'")
    for key in data:
        if key not in _FIELDS:
            raise DatasetError(f"{source}: unexpected key '{key}'; allowed keys: {list(_FIELDS)}")
    arrays = {key: np.asarray(value) for key, value in data.items()}
    _check_layout({key: a.shape for key, a in arrays.items()}, source)
    return {key: _coerce(key, a, source) for key, a in arrays.items()}


# --------------------------------------------------------------------------------------------
# Metadata: attributes of the `metadata` group
# --------------------------------------------------------------------------------------------


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _encode_metadata(metadata: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Map metadata to HDF5 attribute values.

    Strings, bools, integers, floats and numeric arrays are stored as they are; None, dicts,
    lists and tuples are stored as JSON text and their names listed in ``_json_encoded_keys``.
    """
    attrs: dict[str, Any] = {}
    json_keys: list[str] = []
    for name, value in metadata.items():
        if not isinstance(name, str) or not name or name == _JSON_KEYS_ATTR:
            raise DatasetError(f"{source}: metadata key {name!r} is not allowed")
        if isinstance(value, str):
            attrs[name] = value
        elif isinstance(value, bool | np.bool_):
            attrs[name] = np.bool_(value)
        elif isinstance(value, int | np.integer):
            if not -(2**63) <= int(value) < 2**63:
                raise DatasetError(f"{source}: metadata key '{name}': integer out of int64 range")
            attrs[name] = np.int64(value)
        elif isinstance(value, float | np.floating):
            attrs[name] = np.float64(value)
        elif isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
            attrs[name] = value
        elif value is None or isinstance(value, Mapping | list | tuple):
            try:
                attrs[name] = json.dumps(value, default=_json_default)
            except (TypeError, ValueError) as err:
                raise DatasetError(f"{source}: metadata key '{name}': {err}") from err
            json_keys.append(name)
        else:
            raise DatasetError(f"{source}: metadata key '{name}' has unsupported type {type(value).__name__}")
    attrs[_JSON_KEYS_ATTR] = json.dumps(json_keys)
    return attrs


def _to_python(value: Any) -> Any:
    """HDF5 attribute or dataset value -> plain Python value (str, int, float, bool) or ndarray."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.generic):
        return _to_python(value.item())
    if isinstance(value, np.ndarray) and value.dtype.kind in "SOU":
        return [_to_python(v) for v in value.tolist()]
    return value


def _read_metadata(f: h5py.File, source: str) -> dict[str, Any]:
    """Attributes of the ``metadata`` group plus every dataset below it ('policy/fc0/weight')."""
    group = f.get(_METADATA_GROUP)
    if not isinstance(group, h5py.Group):
        return {}
    try:
        attrs = dict(group.attrs)
        json_keys = set(json.loads(_to_python(attrs.pop(_JSON_KEYS_ATTR, "[]"))))
        meta = {}
        for name, value in attrs.items():
            value = _to_python(value)
            meta[name] = json.loads(value) if name in json_keys else value
        datasets: list[tuple[str, h5py.Dataset]] = []

        def collect(name: str, obj: h5py.HLObject) -> None:
            if isinstance(obj, h5py.Dataset):
                datasets.append((name, obj))

        group.visititems(collect)
        for name, dataset in datasets:
            meta[name] = _to_python(dataset[()])
    except (OSError, RuntimeError, ValueError, KeyError, TypeError) as err:
        raise DatasetError(f"{source}: key '{_METADATA_GROUP}' cannot be read: {err}") from err
    return meta


# --------------------------------------------------------------------------------------------
# HDF5 file access
# --------------------------------------------------------------------------------------------


def _open_hdf5(path: Path) -> h5py.File:
    """Open an existing HDF5 file for reading, with a DatasetError for every way that fails."""
    if not path.exists():
        raise DatasetError(f"{path}: file does not exist")
    if not path.is_file():
        raise DatasetError(f"{path}: is not a regular file")
    try:
        if not h5py.is_hdf5(path):
            raise DatasetError(f"{path}: not an HDF5 file")
        return h5py.File(path, "r")
    except OSError as err:
        raise DatasetError(f"{path}: cannot open HDF5 file (truncated or corrupt?): {err}") from err


def _dataset(f: h5py.Group, key: str, source: str) -> h5py.Dataset | None:
    try:
        node = f.get(key)
    except (OSError, RuntimeError, KeyError, ValueError) as err:
        raise DatasetError(f"{source}: key '{key}' cannot be read: {err}") from err
    if node is not None and not isinstance(node, h5py.Dataset):
        raise DatasetError(f"{source}: key '{key}' is a group, expected a dataset")
    return node


def _read(dataset: h5py.Dataset, key: str, source: str) -> np.ndarray:
    try:
        return np.asarray(dataset[()])
    except (OSError, RuntimeError, KeyError, ValueError, TypeError) as err:
        raise DatasetError(f"{source}: key '{key}' cannot be read: {err}") from err


def _requested_keys(keys: Iterable[str] | None, present: set[str], source: str) -> list[str]:
    if keys is None:
        return [*D4RL_KEYS, *(k for k in OPTIONAL_KEYS if k in present)]
    wanted = list(keys)
    for key in wanted:
        if key not in _FIELDS:
            raise DatasetError(f"{source}: unknown key '{key}' requested; known: {list(_FIELDS)}")
    return wanted


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def _write_atomically(path: Path, write: Callable[[h5py.File], None]) -> None:
    """Write an HDF5 file to a temporary name in the same directory, then rename it to ``path``.

    A failure at any point removes the temporary file and leaves ``path`` as it was.
    """
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with h5py.File(tmp, "x") as f:
            write(f)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except (OSError, ValueError, TypeError) as err:
        tmp.unlink(missing_ok=True)
        raise DatasetError(f"{path}: writing failed, file left unchanged: {err}") from err
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
