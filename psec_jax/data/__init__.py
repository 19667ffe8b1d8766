"""Offline data: behaviour policies (SAC), rollouts into D4RL-style HDF5 datasets, readers for the
public D4RL / DSRL / Minari formats, reference scores, and on-device datasets for training loops.

    path = datasets.get("walker-walk-expert-10traj")        # generated once, then cached
    data, meta = formats.load_d4rl(path)
    offline = OfflineData.from_numpy(data)                  # jittable offline.sample(key, batch)

Submodules load on first use: ``OfflineData`` (what training needs) imports nothing but JAX, while the
behaviour policies, SAC and dataset generation (which import the simulators) load only when asked for.
"""

import importlib

from psec_jax.data.offline import OfflineData

_SUBMODULES = ("behavior", "collect", "datasets", "formats", "sac", "scores")
_FROM_FORMATS = ("DatasetError", "load_d4rl", "load_dsrl", "load_minari", "save_d4rl", "trajectory_returns")

__all__ = [*_SUBMODULES, *_FROM_FORMATS, "OfflineData"]


def __getattr__(name: str):
    if name in _SUBMODULES:
        value = importlib.import_module(f"psec_jax.data.{name}")
    elif name in _FROM_FORMATS:
        value = getattr(importlib.import_module("psec_jax.data.formats"), name)
    else:
        raise AttributeError(f"module 'psec_jax.data' has no attribute {name!r}")
    globals()[name] = value
    return value
