"""Continual policy shift (PSEC section 5): pi_0 pretrained on one task, new skills expanded from a few
target trajectories, composed, and compared with baselines on the target task.

Methods (``METHODS``): ``scratch`` (a full diffusion policy trained on the target data alone),
``asec`` / ``nsec`` (LoRA skills composed in action / noise space by a context-aware network),
``psec_mlp`` (MLP adapters instead of LoRA, composed in their output), ``psec_fixed`` (parameter-space
composition with fixed weights, no context module), ``psec`` (parameter space, context-aware) and
``psec_routed`` (the context network's outputs route each state to its smallest set of skills whose
probability exceeds ``config.compose.routing.p``; only those run: ``psec_jax.routed``).
Every method acts by sampling candidates and keeping the best by the target task's Q.
"""

from __future__ import annotations

from collections.abc import Mapping

import ml_collections

from psec_jax.data.offline import OfflineData
from psec_jax.envs.base import Env
from psec_jax.rl import methods as M
from psec_jax.rl import pipeline, runner

# task name -> (skills learned before the target, target task); pi_0 is always pretrained on stand
TASKS = {
    "stand_walk": ((), "walk"),
    "stand_run": ((), "run"),
    "stand_walk_run": (("walk",), "run"),
    # a library large enough for routing to matter (issue 36): walk, speeds 2 and 4 and run learned before
    # the target speed 3 (walker-speed<v>: WalkerWalk at move speed v; walk is 1, run 8)
    "library_speed3": (("walk", "speed2", "speed4", "run"), "speed3"),
}
TABLE = {
    "scratch": M.SCRATCH,
    "asec": M.ASEC,
    "nsec": M.NSEC,
    "psec_mlp": M.PSEC_MLP,
    "psec_fixed": M.PSEC_FIXED,
    "psec": M.PSEC,
    "psec_routed": M.PSEC_ROUTED,  # the skills routed per state (top-p over the library: psec_jax.routed)
}
METHODS = tuple(m for m in TABLE if m != "psec_routed")  # the default columns; psec_routed is asked for by name


def load_data(name: str) -> OfflineData:
    """A generated dataset by name (generated from the committed behaviour policies if absent)."""
    from psec_jax.data import datasets

    return OfflineData.from_numpy(datasets.load(name)[0])


def skill_data_name(config: ml_collections.ConfigDict, task: str) -> str:
    """The dataset name of ``task``'s skill: ``config.skill_data`` with ``{task}`` and ``{n}``
    (``config.skill_trajectories``) filled in."""
    return config.skill_data.format(task=task, n=config.skill_trajectories)


def check(config: ml_collections.ConfigDict) -> None:
    """ValueError (one line) for a task, dataset name or template this setting cannot use (names only:
    nothing is generated)."""
    if config.task not in TASKS:
        raise ValueError(f"unknown task {config.task!r}; choose from {sorted(TASKS)}")
    if config.skill_trajectories < 1:
        raise ValueError(f"config.skill_trajectories must be >= 1, got {config.skill_trajectories}")
    prior, target = TASKS[config.task]
    names = {"base_data": (config.base_data, "walker-stand")}
    for task in (*prior, target):
        try:
            names[f"skill_data ({task})"] = (skill_data_name(config, task), f"walker-{task}")
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(
                f"config.skill_data={config.skill_data!r} is not a template with {{task}} and {{n}} "
                f"({type(e).__name__}: {e})"
            ) from None
    for field, (name, env) in names.items():
        recipe = pipeline.data_recipe(field, name)
        if recipe.env != env:
            raise ValueError(f"config.{field}={name!r} is data of {recipe.env}, not {env}")


def pi0_source(config: ml_collections.ConfigDict) -> tuple[str, str]:
    """(pi_0's data name, evaluation environment) of a run without overrides."""
    return config.base_data, f"walker-{TASKS[config.task][1]}"


def prepare(
    config: ml_collections.ConfigDict, *, data: Mapping[str, OfflineData] | None = None, env: Env | None = None
) -> runner.Prepared:
    """``data``: ``{"base": ..., <skill name>: ...}`` instead of loading ``config.base_data`` /
    ``config.skill_data``; ``env``: the evaluation environment (default: walker-<target>)."""
    prior, target = TASKS[config.task]
    names = [*prior, target]
    if data is None:
        data = {n: load_data(skill_data_name(config, n)) for n in names}
        if not config.pretrained:  # a given pi_0 carries its normaliser: its data is not needed
            data["base"] = load_data(config.base_data)
    if env is None:
        from psec_jax import envs

        env = envs.make(f"walker-{target}", episode_length=config.eval.episode_length)
    title = (
        f"walker {' + '.join(['stand', *prior])} -> {target} (protocol {config.protocol}, "
        f"{config.skill_trajectories} target trajectories): return, "
        f"{config.num_seeds} seeds x {config.eval.episodes} episodes"
    )
    return runner.Prepared(
        data=data,
        env=env,
        pretrain="base",
        pretrain_name=config.base_data,
        skills=tuple(runner.Skill(n, n, "reward") for n in names),
        target=target,
        compose=target,
        critics={"reward": target},
        report=runner.Report(title),
    )


SETTING = runner.Setting("continual", TABLE, "argmax_q", check, prepare, pi0_source=pi0_source)
