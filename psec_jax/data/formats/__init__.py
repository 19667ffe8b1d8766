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

Modules (everything public is re-exported here; import from ``psec_jax.data.formats``):

* :mod:`._common`: :class:`DatasetError`, ``D4RL_KEYS`` / ``OPTIONAL_KEYS``, the field table,
  validation and conversion of transition arrays, metadata encoding, HDF5 read helpers and
  the atomic file writer.
* :mod:`.d4rl`: :func:`save_d4rl`, :func:`load_d4rl`, the reader shared with DSRL and the
  derivation of missing ``next_observations``.
* :mod:`.dsrl`: :func:`load_dsrl`, :func:`dsrl_normalize` and ``DSRL_SCORE_RANGES``.
* :mod:`.minari`: :func:`load_minari`.
* :mod:`.trajectories`: :func:`trajectory_returns`.
"""

from psec_jax.data.formats._common import D4RL_KEYS, OPTIONAL_KEYS, DatasetError
from psec_jax.data.formats._common import PathLike as PathLike  # public alias, not in __all__
from psec_jax.data.formats._common import Transitions as Transitions  # public alias, not in __all__
from psec_jax.data.formats.d4rl import load_d4rl, save_d4rl
from psec_jax.data.formats.dsrl import DSRL_SCORE_RANGES, dsrl_normalize, load_dsrl
from psec_jax.data.formats.minari import load_minari
from psec_jax.data.formats.trajectories import trajectory_returns

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
