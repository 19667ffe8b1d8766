"""DSRL (offline safe RL) datasets: :func:`load_dsrl`, :func:`dsrl_normalize` and the
per-task reference returns ``DSRL_SCORE_RANGES``.

DSRL files use the D4RL layout with ``costs`` and ``next_observations`` always present; they are
read with the reader of :mod:`.d4rl`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from psec_jax.data.formats._common import D4RL_KEYS, PathLike, Transitions
from psec_jax.data.formats.d4rl import _read_transition_file

__all__ = ["DSRL_SCORE_RANGES", "dsrl_normalize", "load_dsrl"]

_DSRL_KEYS = (*D4RL_KEYS, "costs")

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


def load_dsrl(path: PathLike, *, keys: Iterable[str] | None = None) -> tuple[Transitions, dict[str, Any]]:
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
