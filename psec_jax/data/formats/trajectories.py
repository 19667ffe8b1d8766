"""Per-trajectory sums over a transition dict: :func:`trajectory_returns`."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

__all__ = ["trajectory_returns"]


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
