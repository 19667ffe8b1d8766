"""D4RL normalised scores: 0 for a random policy, 100 for the D4RL expert.

    normalized_score("hopper-medium-v2", 1607.0)                 # D4RL reference table
    normalized_score("my-env", 310.0, reference=(12.0, 950.0))   # our own (random, expert)
    normalized_score("my-env", 310.0, table=PROJECT_TABLE)       # or a table of our own

D4RL's numbers are returns of the Gym MuJoCo environments; the project's Brax bodies share their
names but not their simulator, so score those with `policy_references()` too.

The project's own environments use the returns measured for their committed behaviour policies
(`policy_references()`: the SAC actor at initialisation and the expert snapshot, each the mean
return of full episodes as its manifest records them: its run's `eval_mode`; every policy committed
so far: tanh of the mean, 16 episodes):

    normalized_score("walker-walk", 480.0, table=policy_references())
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

__all__ = ["D4RL_REF_SCORES", "UnknownEnvError", "normalized_score", "policy_references", "reference_scores"]

# (random, expert) episode returns = (REF_MIN_SCORE, REF_MAX_SCORE) of D4RL, read in
# Farama-Foundation/D4RL d4rl/infos.py (commit 0ace16de1795f9e99b0e413f3617f797a997b57e):
# the '<env>-random-v0' entries, which that file copies to every -v1/-v2 dataset of the env
# (random, medium, expert, medium-replay, full-replay, medium-expert).
D4RL_REF_SCORES: dict[str, tuple[float, float]] = {
    "halfcheetah": (-280.178953, 12135.0),
    "hopper": (-20.272305, 3234.3),
    "walker2d": (1.629008, 4592.3),
    "ant": (-325.6, 3879.7),
}


class UnknownEnvError(KeyError):
    """No reference scores for an environment name (the message lists the known names)."""

    def __str__(self) -> str:  # KeyError would show the message in quotes
        return str(self.args[0])


def reference_scores(env_name: str, table: Mapping[str, tuple[float, float]] | None = None) -> tuple[float, float]:
    """The ``(random, expert)`` returns for an environment or D4RL dataset name.

    Looks up ``env_name`` itself, else the longest table name it starts with (followed by ``-``
    or ``:``), so D4RL dataset names such as ``"hopper-medium-replay-v2"`` resolve to
    ``"hopper"`` and ``"walker-walk-expert-10traj"`` to ``"walker-walk"``.

    Args:
      env_name: environment or dataset name.
      table: name -> (random, expert); default :data:`D4RL_REF_SCORES`.

    Raises:
      UnknownEnvError: (a KeyError) listing the names the table knows.
    """
    table = D4RL_REF_SCORES if table is None else table
    for name in sorted(table, key=len, reverse=True):  # longest match: "walker-walk" before "walker"
        if env_name == name or env_name.startswith((name + "-", name + ":")):
            random, expert = table[name]
            return float(random), float(expert)
    raise UnknownEnvError(
        f"no reference scores for {env_name!r}; known: {sorted(table)} "
        "(pass reference=(random, expert) for other environments)"
    )


def normalized_score(
    env_name: str,
    raw_return: float | np.ndarray,
    table: Mapping[str, tuple[float, float]] | None = None,
    *,
    reference: tuple[float, float] | None = None,
) -> float | np.ndarray:
    """D4RL normalised score ``100 * (R - random) / (expert - random)``.

    Args:
      env_name: environment or D4RL dataset name (see :func:`reference_scores`); only used for
        the lookup, so any name will do when ``reference`` is given.
      raw_return: undiscounted episode return(s), scalar or array of any shape.
      table: name -> (random, expert) to look up in; default :data:`D4RL_REF_SCORES`.
      reference: explicit ``(random, expert)`` returns; overrides the table.

    Returns:
      A float for a scalar return, else an array of ``raw_return``'s shape.

    Raises:
      UnknownEnvError: the name is not in the table and no ``reference`` was given.
      ValueError: random and expert returns are equal or not finite.
    """
    random, expert = reference if reference is not None else reference_scores(env_name, table)
    random, expert = float(random), float(expert)
    if not (np.isfinite(random) and np.isfinite(expert)) or random == expert:
        raise ValueError(f"{env_name}: bad reference returns (random={random}, expert={expert})")
    score = 100.0 * (np.asarray(raw_return, np.float64) - random) / (expert - random)
    return float(score) if score.ndim == 0 else score


def policy_references(policy_dir: str | None = None) -> dict[str, tuple[float, float]]:
    """(random, expert) returns of every committed behaviour policy, keyed by environment name.

    Read from the manifests in ``psec_jax/data/policies/`` (or ``policy_dir``): the measured
    returns of the ``random`` and ``expert`` levels.
    """
    import json
    from pathlib import Path

    from psec_jax.data import behavior

    root = Path(policy_dir) if policy_dir is not None else behavior.POLICY_DIR
    table = {}
    for manifest in sorted(root.glob(f"*/{behavior.MANIFEST}")):
        levels = json.loads(manifest.read_text())["levels"]
        table[manifest.parent.name] = (float(levels["random"]["return"]), float(levels["expert"]["return"]))
    return table
