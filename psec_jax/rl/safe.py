"""Multi-objective composition for safe offline RL (PSEC section 5, DSRL-style velocity tasks).

pi_0 is pretrained by diffusion behaviour cloning on the whole offline dataset (DSRL-shaped: the
``mixed-cost`` kind mixes behaviour policies trained with several velocity-cost penalties, so episode
costs span a range). Two LoRA skills are expanded from it on the same data: a *reward* skill
(advantage-weighted with an IQL critic) and a *cost* skill (weighted by the reachability critic, which
favours feasible, i.e. never-unsafe, actions). The two are composed by the context-aware AlphaNet in
parameter space (PSEC), noise space (NSEC) or action space (ASEC), each composer fitted, as in the
official code, on a separate small imitation set of the safe expert (``config.compose_data``; empty:
the training data's *safe subset*, ``safe_subset``, the episodes whose cost is within the limit).

Methods (``METHODS``): ``pi0`` (pi_0 alone), ``reward`` / ``cost`` (one skill alone, weight 1),
``asec`` / ``nsec`` / ``psec`` (the two skills composed), and the two cheap offline safe-RL references,
``bc_all`` (pi_0, i.e. diffusion BC on all data, one sample per state) and ``bc_safe`` (diffusion BC on
the safe subset, one sample per state). Each method samples its own candidates and keeps one by
``config.eval.rule``: ``argmin_qc`` (the official rule: the lowest predicted cost; preset ``small``) or
``feasible_then_reward`` (among the candidates the cost critic deems feasible the best by the reward
critic; preset ``small_project``). Scores are DSRL's: normalised reward ``(R - R_min) / (R_max - R_min)``
with R_min / R_max the lowest and highest episode returns of the training data (DSRL takes them from its
datasets; ``config.normalization="policies"``: the behaviour policies' random and expert returns), and
normalised cost ``cost / cost_limit`` (<= 1 is safe).
"""

from __future__ import annotations

from typing import Any

import ml_collections
import numpy as np

from psec_jax.data.offline import OfflineData
from psec_jax.envs.base import EPISODE_LENGTH, Env
from psec_jax.rl import methods as M
from psec_jax.rl import pipeline, report, runner
from psec_jax.rl.continual import load_data

NORMALIZATIONS = ("dsrl", "policies")
SKILLS = ("reward", "cost")  # order of the skills in the composed stack
TABLE = {
    "pi0": M.PRIOR,
    "reward": M.one_skill("reward"),
    "cost": M.one_skill("cost"),
    "asec": M.ASEC,
    "nsec": M.NSEC,
    "psec": M.PSEC,
    "bc_all": M.PRIOR._replace(candidates=1),
    # pi_0's budget (steps, batch, optimiser): the two references differ in their data only
    "bc_safe": M.SCRATCH._replace(data="safe", objective="bc", candidates=1, budget="pretrain"),
}
METHODS = tuple(TABLE)
LABELS = {"return": "normalized reward", "cost": "normalized cost"}


def episode_costs(data: OfflineData) -> np.ndarray:
    """[num_episodes] total cost of each episode (episodes as in ``OfflineData.episode_ids``)."""
    return np.bincount(data.episode_ids(), weights=np.asarray(data.costs, np.float64))


def safe_subset(data: OfflineData, cost_limit: float) -> tuple[OfflineData, dict[str, Any]]:
    """The episodes of ``data`` whose total cost is <= ``cost_limit`` (the composers' training data).

    If no episode qualifies, falls back to the lowest-cost quarter of the episodes (at least one) and
    says so in the returned info (``fallback``: True). Returns ``(subset, info)`` with info
    ``{"episodes", "kept", "fallback", "cost_limit", "kept_cost_mean", "kept_cost_max"}``."""
    costs = episode_costs(data)
    kept = np.flatnonzero(costs <= cost_limit)
    fallback = kept.size == 0
    if fallback:
        kept = np.sort(np.argsort(costs, kind="stable")[: max(1, costs.size // 4)])
    info = {
        "episodes": int(costs.size),
        "kept": int(kept.size),
        "fallback": bool(fallback),
        "cost_limit": float(cost_limit),
        "kept_cost_mean": float(costs[kept].mean()),
        "kept_cost_max": float(costs[kept].max()),
    }
    return data.take_episodes(kept), info


def check(config: ml_collections.ConfigDict) -> None:
    """ValueError (one line) for a cost limit, body or dataset name this setting cannot use (names only:
    nothing is generated)."""
    from psec_jax import envs

    if not config.cost_limit > 0:
        raise ValueError(f"config.cost_limit must be > 0, got {config.cost_limit}")
    if config.env not in envs.VELOCITY_THRESHOLDS:
        raise ValueError(f"config.env={config.env!r} has no cost; use one of {list(envs.VELOCITY_THRESHOLDS)}")
    for field in ("data", "compose_data") if config.compose_data else ("data",):
        try:
            name = config[field].format(env=config.env)
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(
                f"config.{field}={config[field]!r} is not a template with {{env}} ({type(e).__name__}: {e})"
            ) from None
        recipe = pipeline.data_recipe(field, name)
        if recipe.env != config.env:
            raise ValueError(f"config.{field}={name!r} is not data of config.env={config.env!r}")
    if config.normalization not in NORMALIZATIONS:
        raise ValueError(f"config.normalization must be one of {NORMALIZATIONS}, got {config.normalization!r}")


def data_name(config: ml_collections.ConfigDict) -> str:
    """The name of the offline dataset: ``config.data`` with ``{env}`` filled in."""
    return config.data.format(env=config.env)


def pi0_source(config: ml_collections.ConfigDict) -> tuple[str, str]:
    """(pi_0's data name, evaluation environment) of a run without overrides."""
    return data_name(config), config.env


def episode_returns(data: OfflineData) -> np.ndarray:
    """[num_episodes] total reward of each episode (episodes as in ``OfflineData.episode_ids``)."""
    return np.bincount(data.episode_ids(), weights=np.asarray(data.rewards, np.float64))


def prepare(
    config: ml_collections.ConfigDict,
    *,
    data: OfflineData | None = None,
    env: Env | None = None,
    reference: tuple[float, float] | None = None,
    compose_data: OfflineData | None = None,
) -> runner.Prepared:
    """``data``: the offline dataset instead of loading ``config.data``; ``env``: the evaluation
    environment (default ``config.env``); ``reference``: the (low, high) returns of 1000-step episodes the
    normalised reward maps to 0 and 1 (default: DSRL's, the training data's lowest and highest episode
    returns; with ``config.normalization="policies"`` the behaviour policies' random and expert returns);
    ``compose_data``: the composers' data instead of loading ``config.compose_data``."""
    if env is None:
        from psec_jax import envs

        if config.env not in envs.VELOCITY_THRESHOLDS:
            raise ValueError(f"config.env={config.env!r} has no cost; use one of {list(envs.VELOCITY_THRESHOLDS)}")
    data_name = config.data.format(env=config.env) if data is None else "(given data)"
    if data is None:
        from psec_jax.data import datasets

        if datasets.parse(data_name).env != config.env:
            raise ValueError(f"config.data={data_name!r} is not data of config.env={config.env!r}")
        data = load_data(data_name)
    if env is None:
        env = envs.make(config.env, episode_length=config.eval.episode_length)
    if env.cost_threshold is None:
        raise ValueError(
            f"config.env={config.env!r} has no cost; use a velocity body (halfcheetah, hopper, walker2d, ant)"
        )
    source = "given" if reference is not None else config.normalization
    if reference is None and config.normalization == "policies":
        from psec_jax.data import scores

        reference = scores.reference_scores(config.env, table=scores.policy_references())
    elif reference is None:
        returns = episode_returns(data)
        reference = (float(returns.min()), float(returns.max()))
    safe_data, info = safe_subset(data, config.cost_limit)
    if info["fallback"]:
        print(
            f"psec_safe: no episode has cost <= cost_limit={config.cost_limit:g}; the safe subset is the "
            f"{info['kept']} lowest-cost of {info['episodes']} episodes instead (their cost <= "
            f"{info['kept_cost_max']:.1f})"
        )
    composed = any(TABLE[m].policy == "composed" for m in config.methods)
    compose_name = "(given data)" if compose_data is not None else config.compose_data.format(env=config.env)
    if not composed:  # no composer to fit: the imitation set is neither loaded nor generated
        compose_name, compose_data = "", None
    elif compose_data is None and compose_name:
        compose_data = load_data(compose_name)
    composers = "imitation" if compose_data is not None else "safe"
    compose_costs = episode_costs(compose_data) if compose_data is not None else None
    offset, scale = report.reference_normalization(
        reference, config.eval.episode_length, reference_length=EPISODE_LENGTH
    )
    title = (
        f"{env.name} safe composition (reward + cost skills): normalized reward and cost "
        f"(cost limit {config.cost_limit:g}, acting rule {runner.rule_of(SETTING, config)}), "
        f"{config.num_seeds} seeds x {config.eval.episodes} episodes"
    )
    what = {
        "dsrl": "lowest and highest episode returns of the training data (DSRL)",
        "policies": "behaviour policies' random and expert returns",
        "given": "returns given to the run",
    }[source]
    note = (
        f"\nnormalized reward = (R - R_low) / (R_high - R_low) with (R_low, R_high) = ({reference[0]:.1f}, "
        f"{reference[1]:.1f}) per {EPISODE_LENGTH} steps, the {what}; normalized cost = episode cost / "
        f"{config.cost_limit:g} (<= 1 is safe). The safe subset (bc_safe's data) holds {info['kept']} of "
        f"{info['episodes']} episodes"
        + (" (fallback: lowest-cost quarter)" if info["fallback"] else f" with cost <= {config.cost_limit:g}")
        + (
            f"; composers fitted on the imitation set ({compose_costs.size} episodes, mean cost "
            f"{compose_costs.mean():.1f}).\n"
            if compose_costs is not None
            else "; composers fitted on the safe subset.\n"
        )
    )
    extra = {
        "data": data_name,
        "compose_data": compose_name or ("(safe subset)" if composed else "(no composer)"),
        "safe_data": info,
        "normalization": {
            "kind": source,
            "reference_low_high": list(map(float, reference)),
            "reference_episode_length": EPISODE_LENGTH,
            "episode_length": config.eval.episode_length,
            "cost_limit": config.cost_limit,
        },
    }
    rep = runner.Report(
        title, ("return", "cost"), LABELS, {"return": scale, "cost": config.cost_limit}, {"return": offset}, note, extra
    )
    sets = {"all": data, "safe": safe_data}
    if compose_data is not None:
        sets["imitation"] = compose_data
    return runner.Prepared(
        data=sets,
        env=env,
        pretrain="all",
        pretrain_name=data_name,
        skills=tuple(runner.Skill(k, "all", k) for k in SKILLS),
        target="reward",
        compose=composers,
        critics={"reward": "reward", "cost": "cost"},
        report=rep,
    )


SETTING = runner.Setting(
    "safe",
    TABLE,
    "argmin_qc",
    check,
    prepare,
    expand_key="expand/{name}",
    pi0_source=pi0_source,
    roles=("reward", "cost"),
)
