"""Read and write offline-RL dataset files: D4RL and DSRL (HDF5) and Minari (HDF5 backend).

Every reader returns the same *transition dict* (``dict[str, np.ndarray]``, D4RL key names)::

    observations       [N, obs_dim]  float32
    actions            [N, act_dim]  float32
    rewards            [N]           float32
    terminals          [N]           bool     the episode ended in a terminal state
    timeouts           [N]           bool     the episode was cut off (time limit / truncation)
    next_observations  [N, obs_dim]  float32
    costs              [N]           float32  optional (DSRL safe-RL datasets)

Row ``i`` is one transition. A trajectory ends at a row with ``terminals | timeouts``.

    data, meta = load_d4rl("hopper_medium-v2.hdf5")
    save_d4rl("mine.hdf5", data, {"env": "hopper", "policy": {"seed": 0}})
    data, meta = load_dsrl("SafetyCarCircle-v0-100-1450.hdf5")
    data, meta = load_minari("~/.minari/datasets/mujoco/hopper/medium-v0")
    returns = trajectory_returns(data)                        # [num_traj]

Layouts, as read from the public sources (where is noted on each function):

* D4RL: top-level datasets with the keys above; ``infos/*`` (ignored here) and ``metadata/*``
  (policy description: strings, scalars and weight arrays, read into the metadata dict).
  Older files have no ``next_observations``; see :func:`load_d4rl` for how it is derived.
* DSRL: the D4RL layout with ``costs`` and ``next_observations`` always present.
* Minari: ``<dataset_dir>/data/main_data.hdf5`` holding one group per episode and
  ``<dataset_dir>/data/metadata.json``.

Every problem with a file raises :class:`DatasetError` naming the file and, where there is one,
the key.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

Transitions = dict[str, np.ndarray]
PathLike = str | os.PathLike

__all__ = [
    "DSRL_SCORE_RANGES",
    "DatasetError",
    "D4RL_KEYS",
    "OPTIONAL_KEYS",
    "dsrl_normalize",
    "load_d4rl",
    "load_dsrl",
    "load_minari",
    "save_d4rl",
    "trajectory_returns",
]


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

_DSRL_KEYS = (*D4RL_KEYS, "costs")
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
            raise DatasetError(
                f"{source}: key '{key}' has shape {shape}, expected {_expected(key)}"
            )
    ref = "observations" if "observations" in shapes else next(iter(shapes))
    n = shapes[ref][0]
    for key, shape in shapes.items():
        if shape[0] != n:
            raise DatasetError(
                f"{source}: key '{key}' has length {shape[0]} but '{ref}' has length {n}"
            )
    if n == 0:
        raise DatasetError(f"{source}: key '{ref}' holds no transitions (length 0)")
    obs, next_obs = shapes.get("observations"), shapes.get("next_observations")
    if obs is not None and next_obs is not None and obs[1:] != next_obs[1:]:
        raise DatasetError(
            f"{source}: key 'next_observations' has shape {next_obs} "
            f"but 'observations' has shape {obs}"
        )
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
        raise DatasetError(
            f"{source}: key '{key}' has shape {array.shape}, expected {_expected(key)}"
        )
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
            raise DatasetError(
                f"{source}: metadata key '{name}' has unsupported type {type(value).__name__}"
            )
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
                raise DatasetError(
                    f"{source}: missing required key '{key}' (top-level keys: {sorted(f.keys())})"
                )
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


# --------------------------------------------------------------------------------------------
# D4RL
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
                f.create_dataset(
                    key, data=arrays[key], compression=compression, track_times=False
                )
        f.create_group(_METADATA_GROUP).attrs.update(attrs)

    _write_atomically(path, write)


def load_d4rl(
    path: PathLike, *, keys: Iterable[str] | None = None
) -> tuple[Transitions, dict[str, Any]]:
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


# --------------------------------------------------------------------------------------------
# DSRL
# --------------------------------------------------------------------------------------------

# (min, max) episode reward per DSRL task: MIN_EPISODE_REWARD / MAX_EPISODE_REWARD in
# liuzuxin/DSRL dsrl/infos.py at commit 71064f21976f59c8f7139d00f1294963a1558369, read and
# transcribed by script (keys are the task names used there).
DSRL_SCORE_RANGES: dict[str, tuple[float, float]] = {
    # bullet_safety_gym
    "AntCircle": (0.0177031010389328, 460.7091979980469),
    "AntRun": (0.001767391717990563, 955.4818725585938),
    "BallCircle": (0.38312244415283203, 881.46337890625),
    "BallRun": (26.339754104614258, 1327.445556640625),
    "CarCircle": (3.484419822692871, 534.3060913085938),
    "CarRun": (204.28726196289062, 574.6533203125),
    "DroneCircle": (207.794189453125, 996.38916015625),
    "DroneRun": (10.557029724121094, 682.8330078125),
    # safety_gymnasium
    "CarButton1": (0.0028926206826067613, 44.420003345738984),
    "CarButton2": (0.001767391717990563, 41.99513815522894),
    "CarCircle1": (8.037073135375977, 24.94155502319336),
    "CarCircle2": (5.113386154174805, 25.950098037719727),
    "CarGoal1": (0.012232819540852091, 39.907809198384705),
    "CarGoal2": (0.001032874531954775, 28.902897990056502),
    "CarPush1": (0.013700173533941762, 16.304467598905237),
    "CarPush2": (0.00029391133526335267, 15.141648491514314),
    "PointButton1": (0.008822109034937853, 41.19301568767707),
    "PointButton2": (0.014114166087574098, 42.8985953616709),
    "PointCircle1": (20.067626953125, 61.72819519042969),
    "PointCircle2": (20.478347778320312, 54.02184295654297),
    "PointGoal1": (0.01196012764197707, 30.071114857340543),
    "PointGoal2": (0.002616959830266108, 27.717709787852737),
    "PointPush1": (0.0014001545292344209, 16.518654299293367),
    "PointPush2": (0.0012438183001730607, 14.691039145644403),
    "AntVelocity": (6.1519012451171875, 2976.276611328125),
    "HalfCheetahVelocity": (5.7509765625, 2806.93310546875),
    "HopperVelocity": (37.05154800415039, 1911.396728515625),
    "SwimmerVelocity": (0.07114458084106445, 238.95831298828125),
    "Walker2dVelocity": (18.668498992919922, 3418.223876953125),
    # safe_metadrive
    "easysparse": (20.094310760498047, 425.8006286621094),
    "easymean": (22.142553329467773, 425.82440185546875),
    "easydense": (19.71139144897461, 425.81732177734375),
    "mediumsparse": (17.446578979492188, 269.80084228515625),
    "mediummean": (17.032529830932617, 269.8221435546875),
    "mediumdense": (15.102348327636719, 269.7813415527344),
    "hardsparse": (17.247974395751953, 486.80523681640625),
    "hardmean": (19.387981414794922, 486.9967956542969),
    "harddense": (15.386894226074219, 486.63616943359375),
}


def load_dsrl(
    path: PathLike, *, keys: Iterable[str] | None = None
) -> tuple[Transitions, dict[str, Any]]:
    """Read a DSRL (offline safe RL) HDF5 file.

    DSRL files have top-level ``observations [N, obs_dim]``, ``next_observations [N, obs_dim]``,
    ``actions [N, act_dim]``, ``rewards [N]``, ``costs [N]``, ``terminals [N]`` and
    ``timeouts [N]``, all required (checked against liuzuxin/DSRL ``dsrl/offline_env.py``,
    ``OfflineEnv.get_dataset``). Other datasets are ignored; a ``metadata`` group is read as in
    :func:`load_d4rl`.

    Args:
      path: the ``.hdf5`` file.
      keys: transition keys to return (default: all seven).

    Returns:
      ``(data, metadata)`` with float32 / bool arrays of one length N.

    Raises:
      DatasetError: naming the file (and key), as for :func:`load_d4rl`.
    """
    return _read_transition_file(path, _DSRL_KEYS, keys)


def dsrl_normalize(
    reward_return: float | np.ndarray,
    cost_return: float | np.ndarray,
    *,
    min_reward: float,
    max_reward: float,
    cost_threshold: float,
    eps: float | None = None,
) -> tuple[float | np.ndarray, float | np.ndarray]:
    """DSRL's normalised reward and cost of episode returns.

    ``normalized_reward = (R - min_reward) / (max_reward - min_reward)`` and
    ``normalized_cost = (C + eps) / (cost_threshold + eps)``, as in liuzuxin/DSRL
    ``dsrl/offline_env.py`` (``OfflineEnv.get_normalized_score``). There ``eps`` is not a
    constant: ``set_target_cost`` sets it to 1 when the threshold is 0 and to 0 otherwise, which
    is what ``eps=None`` (default) does here. A normalised cost <= 1 means the constraint holds.

    ``min_reward``/``max_reward`` for the DSRL tasks are in :data:`DSRL_SCORE_RANGES`.

    Args:
      reward_return: episode reward return(s), scalar or array.
      cost_return: episode cost return(s), broadcastable with ``reward_return``.
      min_reward, max_reward: reference episode returns (keyword only).
      cost_threshold: the cost limit (DSRL's ``target_cost``).
      eps: override for DSRL's epsilon rule.

    Returns:
      ``(normalized_reward, normalized_cost)``: floats for scalar inputs, arrays otherwise.
    """
    if not max_reward > min_reward:
        raise ValueError(f"max_reward ({max_reward}) must exceed min_reward ({min_reward})")
    if eps is None:
        eps = 1.0 if cost_threshold == 0 else 0.0
    if not cost_threshold + eps > 0:
        raise ValueError(f"cost_threshold + eps must be > 0, got {cost_threshold} + {eps}")
    reward = (np.asarray(reward_return, np.float64) - min_reward) / (max_reward - min_reward)
    cost = (np.asarray(cost_return, np.float64) + eps) / (cost_threshold + eps)
    return _scalar_or_array(reward), _scalar_or_array(cost)


def _scalar_or_array(x: np.ndarray) -> float | np.ndarray:
    return float(x) if x.ndim == 0 else x


# --------------------------------------------------------------------------------------------
# Minari (HDF5 backend)
# --------------------------------------------------------------------------------------------

_EPISODE_RE = re.compile(r"episode_(\d+)")
_MINARI_STEP_KEYS = ("actions", "rewards", "terminations", "truncations")
_UNSUPPORTED_SPACES = ("Dict", "Tuple", "Text")


def _minari_metadata(main: h5py.File, json_path: Path) -> dict[str, Any]:
    """metadata.json (Minari >= 0.5) over the root attributes of main_data.hdf5 (older)."""
    meta = {name: _to_python(value) for name, value in main.attrs.items()}
    if json_path.is_file():
        try:
            meta.update(json.loads(json_path.read_text()))
        except (OSError, ValueError) as err:
            raise DatasetError(f"{json_path}: cannot read metadata JSON: {err}") from err
    return meta


def _check_space(meta: Mapping[str, Any], key: str, source: str) -> None:
    """Reject spaces the transition dict cannot hold, from the serialised space in metadata."""
    text = meta.get(f"{key[:-1]}_space")  # "observations" -> "observation_space"
    try:
        kind = json.loads(text).get("type") if isinstance(text, str) else None
    except (ValueError, AttributeError):
        kind = None
    if kind in _UNSUPPORTED_SPACES:
        raise DatasetError(
            f"{source}: key '{key}' uses a {kind} space, which is not supported "
            "(only Box and Discrete spaces flatten to [N, dim] arrays)"
        )


def _episode_names(main: h5py.File) -> list[str]:
    """Episode group names sorted by their index (episode_2 before episode_10)."""
    indexed = [(int(m.group(1)), name) for name in main if (m := _EPISODE_RE.fullmatch(name))]
    return [name for _, name in sorted(indexed)]


def _as_matrix(array: np.ndarray, key: str, source: str) -> np.ndarray:
    """[T] (Discrete) -> [T, 1]; [T, d] stays; anything else is unsupported."""
    if array.ndim == 1:
        return array[:, None]
    if array.ndim == 2:
        return array
    raise DatasetError(
        f"{source}: key '{key}' has shape {array.shape}; only [T] or [T, dim] is supported"
    )


def _read_episode(group: h5py.Group, name: str, source: str) -> Transitions | None:
    """One Minari episode -> transitions; None for an episode with no steps."""
    arrays = {}
    for key in ("observations", *_MINARI_STEP_KEYS):
        full_key = f"{name}/{key}"
        try:
            node = group.get(key)
        except (OSError, RuntimeError, KeyError, ValueError) as err:
            raise DatasetError(f"{source}: key '{full_key}' cannot be read: {err}") from err
        if node is None:
            raise DatasetError(f"{source}: missing required key '{full_key}'")
        if isinstance(node, h5py.Group):
            raise DatasetError(
                f"{source}: key '{full_key}' is a group (Dict or Tuple space), which is not "
                "supported; only Box and Discrete spaces flatten to [N, dim] arrays"
            )
        arrays[key] = _read(node, full_key, source)
    steps = len(arrays["rewards"])
    for key in _MINARI_STEP_KEYS:
        if len(arrays[key]) != steps:
            raise DatasetError(
                f"{source}: key '{name}/{key}' has length {len(arrays[key])} "
                f"but '{name}/rewards' has length {steps}"
            )
    if len(arrays["observations"]) != steps + 1:
        raise DatasetError(
            f"{source}: key '{name}/observations' has length {len(arrays['observations'])}, "
            f"expected {steps + 1} (steps + 1)"
        )
    if steps == 0:
        return None
    obs = _as_matrix(arrays["observations"], f"{name}/observations", source)
    transitions = {
        "observations": obs[:-1],
        "actions": _as_matrix(arrays["actions"], f"{name}/actions", source),
        "rewards": arrays["rewards"],
        "terminals": arrays["terminations"],
        "timeouts": arrays["truncations"],
        "next_observations": obs[1:],
    }
    out = {k: _coerce(k, v, f"{source}: episode '{name}'") for k, v in transitions.items()}
    if not (out["terminals"][-1] or out["timeouts"][-1]):
        out["timeouts"][-1] = True  # an episode recorded without an end flag ends here anyway
    return out


def load_minari(dataset_dir: PathLike) -> tuple[Transitions, dict[str, Any]]:
    """Read a Minari dataset stored with the HDF5 backend, flattened to transitions.

    Layout (checked against Farama-Foundation/Minari ``minari/dataset/_storages/hdf5_storage.py``
    and ``minari/dataset/minari_storage.py``, and the "Dataset Standards" page of the Minari
    docs): ``<dataset_dir>/data/main_data.hdf5`` holds one group per episode, ``episode_<i>``,
    with ``observations [T+1, ...]``, ``actions [T, ...]``, ``rewards [T]``,
    ``terminations [T]``, ``truncations [T]`` and ``infos`` (ignored); dataset metadata is
    ``<dataset_dir>/data/metadata.json`` (older Minari: attributes of main_data.hdf5; both are
    read, the JSON wins).

    Episodes are concatenated in index order: ``observations = obs[:-1]``,
    ``next_observations = obs[1:]``, ``terminals = terminations``, ``timeouts = truncations``.
    An episode whose last step has neither flag gets ``timeouts = True`` there, so
    trajectories stay separate. Discrete observations/actions ``[T]`` become ``[T, 1]`` floats.
    Episodes with no steps contribute nothing.

    Args:
      dataset_dir: the Minari dataset directory (the one containing ``data/``).

    Returns:
      ``(data, metadata)``: the transition dict (float32 / bool) and the metadata JSON dict.

    Raises:
      DatasetError: naming the file (and key) for a missing directory or file, an unreadable
        file, missing keys, inconsistent lengths, or Dict/Tuple/Text spaces (not supported).
    """
    data_dir = Path(dataset_dir) / "data"
    main_path = data_dir / "main_data.hdf5"
    source = str(main_path)
    with _open_hdf5(main_path) as main:
        meta = _minari_metadata(main, data_dir / "metadata.json")
        for key in ("observations", "actions"):
            _check_space(meta, key, source)
        names = _episode_names(main)
        if not names:
            raise DatasetError(f"{source}: no 'episode_<i>' groups found")
        episodes = []
        for name in names:
            group = main[name]
            if not isinstance(group, h5py.Group):
                raise DatasetError(f"{source}: key '{name}' is not a group")
            episode = _read_episode(group, name, source)
            if episode is not None:
                episodes.append(episode)
    if not episodes:
        raise DatasetError(f"{source}: every episode is empty (no steps)")
    data = {k: np.concatenate([ep[k] for ep in episodes]) for k in D4RL_KEYS}
    _check_layout({k: v.shape for k, v in data.items()}, source)
    return data, meta


# --------------------------------------------------------------------------------------------
# Trajectories
# --------------------------------------------------------------------------------------------


def trajectory_returns(data: Mapping[str, np.ndarray], key: str = "rewards") -> np.ndarray:
    """Undiscounted return of every trajectory in a transition dict.

    A trajectory ends at each row with ``terminals | timeouts`` (``timeouts`` may be absent);
    rows after the last end form a final, partial trajectory.

    Args:
      data: transition dict with ``key [N]`` and ``terminals [N]`` (and ``timeouts [N]``).
      key: the per-step quantity to sum, e.g. ``"rewards"`` or ``"costs"``.

    Returns:
      float64 array ``[num_traj]`` in data order (empty for N == 0).
    """
    values = np.asarray(data[key], np.float64).reshape(-1)
    ends = np.asarray(data["terminals"], bool).reshape(-1)
    if "timeouts" in data:
        ends = ends | np.asarray(data["timeouts"], bool).reshape(-1)
    if len(ends) != len(values):
        raise ValueError(f"'{key}' has length {len(values)} but 'terminals' has {len(ends)}")
    if len(values) == 0:
        return np.zeros(0, np.float64)
    starts = np.concatenate([[0], np.flatnonzero(ends[:-1]) + 1])
    return np.add.reduceat(values, starts)
