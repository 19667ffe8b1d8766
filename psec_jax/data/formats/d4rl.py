"""D4RL-layout HDF5 files: :func:`save_d4rl` and :func:`load_d4rl`.

Also holds the reader shared with :mod:`.dsrl` (``_read_transition_file``: top-level datasets
named like the transition keys, plus the ``metadata`` group) and the derivation of
``next_observations`` for older D4RL files that lack them (``_derive_next_observations``, the
rule of D4RL's ``qlearning_dataset``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from psec_jax.data.formats._common import (
    _FIELDS,
    _METADATA_GROUP,
    D4RL_KEYS,
    OPTIONAL_KEYS,
    DatasetError,
    PathLike,
    Transitions,
    _check_layout,
    _coerce,
    _dataset,
    _encode_metadata,
    _open_hdf5,
    _read,
    _read_metadata,
    _requested_keys,
    _validate,
    _write_atomically,
)

__all__ = ["load_d4rl", "save_d4rl"]


def _read_transition_file(
    path: PathLike, required: tuple[str, ...], keys: Iterable[str] | None
) -> tuple[Transitions, dict[str, Any]]:
    """Shared reader for the D4RL and DSRL layouts (top-level datasets named like _FIELDS)."""
    path = Path(path)
    source = str(path)
    with _open_hdf5(path) as f:
        nodes = {k: _dataset(f, k, source) for k in _FIELDS}
        nodes = {k: node for k, node in nodes.items() if node is not None}
        derive = "next_observations" not in nodes and "next_observations" not in required
        for key in required:
            if key not in nodes:
                raise DatasetError(f"{source}: missing required key '{key}' (top-level keys: {sorted(f.keys())})")
        wanted = _requested_keys(keys, set(nodes), source)
        for key in wanted:
            if key not in nodes and not (key == "next_observations" and derive):
                raise DatasetError(f"{source}: missing requested key '{key}'")
        _check_layout({k: tuple(node.shape) for k, node in nodes.items()}, source)
        to_read = set(wanted) - {"next_observations"} if derive else set(wanted)
        if derive:
            to_read |= {"observations", "terminals", "timeouts"}
        data = {k: _coerce(k, _read(nodes[k], k, source), source) for k in sorted(to_read)}
        metadata = _read_metadata(f, source)
    if derive:
        data = _derive_next_observations(data)
    return {k: data[k] for k in wanted}, metadata


def _derive_next_observations(data: Transitions) -> Transitions:
    """Add next_observations to a file without them (D4RL ``qlearning_dataset`` rule).

    Row i gets ``next_observations[i] = observations[i + 1]``. Rows with ``timeouts`` and the
    last row of the file are dropped: their successor is not in the data. Terminal rows are
    kept: their next observation is never bootstrapped from, and they carry the termination.
    A kept row whose successor was dropped gets ``timeouts = True`` (unless it is terminal),
    so trajectory boundaries survive.
    """
    n = len(data["observations"])
    dropped = data["timeouts"].copy()
    dropped[-1] = True
    keep = ~dropped
    next_obs = np.concatenate([data["observations"][1:], data["observations"][-1:]])
    successor_dropped = np.append(dropped[1:], True)[:n]
    out = {k: v[keep] for k, v in data.items()}
    out["next_observations"] = next_obs[keep]
    out["timeouts"] = (successor_dropped & ~data["terminals"])[keep]
    return out


def save_d4rl(
    path: PathLike,
    data: Mapping[str, Any],
    metadata: Mapping[str, Any] | None = None,
    *,
    compression: str | int | None = "gzip",
) -> None:
    """Write transitions as an HDF5 file in the D4RL layout.

    Args:
      path: destination file; replaced atomically (temporary file + ``os.replace``), so a failed
        call leaves any previous file at ``path`` untouched.
      data: transition dict: ``observations [N, obs_dim]``, ``actions [N, act_dim]``,
        ``rewards [N]``, ``terminals [N]``, ``timeouts [N]``, ``next_observations [N, obs_dim]``
        and optionally ``costs [N]``. Floats are stored as float32 and must be finite; flags are
        stored as bool and may be given as 0/1 numbers. ``[N, 1]`` is accepted for ``[N]``.
      metadata: stored as attributes of the ``metadata`` group: strings, bools, ints, floats
        and numeric arrays as such; None, dicts, lists and tuples as JSON text (tuples come back
        as lists). :func:`load_d4rl` returns it.
      compression: h5py dataset compression ("gzip", "lzf", a gzip level 0-9, or None).

    Raises:
      DatasetError: naming the file and key, for a missing/unexpected key, a wrong rank,
        differing lengths, N == 0, non-finite floats, non-0/1 flags or unsupported metadata.

    The same data and metadata always give identical bytes (no timestamps are stored).
    """
    path = Path(path)
    source = f"{path} (not written)"
    arrays = _validate(data, source, D4RL_KEYS)
    attrs = _encode_metadata(metadata or {}, source)

    def write(f: h5py.File) -> None:
        for key in (*D4RL_KEYS, *OPTIONAL_KEYS):
            if key in arrays:
                f.create_dataset(key, data=arrays[key], compression=compression, track_times=False)
        f.create_group(_METADATA_GROUP).attrs.update(attrs)

    _write_atomically(path, write)


def load_d4rl(path: PathLike, *, keys: Iterable[str] | None = None) -> tuple[Transitions, dict[str, Any]]:
    """Read a D4RL-layout HDF5 file (public D4RL datasets and files from :func:`save_d4rl`).

    Reads the top-level datasets ``observations [N, obs_dim]``, ``actions [N, act_dim]``,
    ``rewards [N]``, ``terminals [N]``, ``timeouts [N]``, ``next_observations [N, obs_dim]``
    and ``costs [N]`` when present. ``infos/*`` is ignored. The metadata dict holds the
    attributes of the ``metadata`` group and every dataset below it, by relative name (public
    D4RL v2 files: ``"algorithm"``, ``"iteration"``, ``"policy/fc0/weight"``, ...); byte strings
    become ``str``, scalars Python numbers, arrays stay arrays.

    Files without ``next_observations`` (older D4RL releases) get it from the next row, with the
    rule of D4RL's ``qlearning_dataset`` (Farama-Foundation/D4RL, ``d4rl/__init__.py``):
    ``next_observations[i] = observations[i + 1]``; rows with ``timeouts`` and the final row of
    the file are dropped (their successor is not recorded). Terminal rows are kept, since their
    next observation is never used for bootstrapping. Unlike ``qlearning_dataset``, the row
    before a dropped one gets ``timeouts = True`` (unless terminal), so
    :func:`trajectory_returns` still splits trajectories there. The result has fewer rows.

    Args:
      path: the ``.hdf5`` file.
      keys: transition keys to return (default: the six D4RL keys plus ``costs`` if present).
        Rows are the same as for a full load, also when next_observations is derived.

    Returns:
      ``(data, metadata)``: float32 / bool arrays, all of the same length N.

    Raises:
      DatasetError: naming the file (and key): missing file, not HDF5, truncated or corrupt,
        missing key (``timeouts`` is required), wrong rank, differing lengths, bad values.
    """
    return _read_transition_file(path, D4RL_KEYS[:-1], keys)
