"""Offline data: behaviour policies (SAC), rollouts into D4RL-style HDF5 datasets, readers for the
public D4RL / DSRL / Minari formats, reference scores, and on-device datasets for training loops.

    path = datasets.get("walker-walk-expert-10traj")        # generated once, then cached
    data, meta = formats.load_d4rl(path)
    offline = OfflineData.from_numpy(data)                  # jittable offline.sample(key, batch)
"""

from psec_jax.data import behavior, collect, datasets, formats, sac, scores
from psec_jax.data.formats import (DatasetError, load_d4rl, load_dsrl, load_minari, save_d4rl,
                                   trajectory_returns)
from psec_jax.data.offline import OfflineData

__all__ = ["behavior", "collect", "datasets", "formats", "sac", "scores", "DatasetError",
           "load_d4rl", "load_dsrl", "load_minari", "save_d4rl", "trajectory_returns", "OfflineData"]
