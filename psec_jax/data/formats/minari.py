"""Minari datasets stored with the HDF5 backend: :func:`load_minari`.

A Minari dataset directory holds ``data/main_data.hdf5`` (one ``episode_<i>`` group per
episode) and ``data/metadata.json``; :func:`load_minari` flattens the episodes into one
transition dict.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from psec_jax.data.formats._common import (
    D4RL_KEYS,
    DatasetError,
    PathLike,
    Transitions,
    _check_layout,
    _coerce,
    _open_hdf5,
    _read,
    _to_python,
)

__all__ = ["load_minari"]

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
    raise DatasetError(f"{source}: key '{key}' has shape {array.shape}; only [T] or [T, dim] is supported")


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
                f"{source}: key '{name}/{key}' has length {len(arrays[key])} but '{name}/rewards' has length {steps}"
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
