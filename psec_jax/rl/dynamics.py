"""Dynamics shift (PSEC section 5, D4RL-style): pi_0 pretrained on data collected under shifted
dynamics (e.g. half the friction), one LoRA skill expanded on a small share (5%) of nominal-dynamics
data, evaluated in the nominal environment.

Methods (``METHODS``), all acting by sampling candidates and keeping the best by an IQL Q:

- ``source_only``: pi_0 alone, candidates ranked by the target skill run's critic (trained on the
  target subset), i.e. what the source policy achieves with target-aware action selection.
- ``target_only``: a full diffusion policy and its IQL critic trained on the target subset alone
  (the same loss and steps as the skill; the critic is the one trained in the skill's stage, on the
  same data, when that stage runs).
- ``source_target``: the same full policy trained on the source data and the target subset together.
- ``psec``: pi_0 plus the target LoRA skill (weight 1), ranked by that skill's critic.
- ``psec_composed``: the composition variant: pi_0 plus the target skill at a state-dependent weight from
  the context-aware AlphaNet, fitted on the target subset.

Scores are D4RL-style, ``100 (R - R_random) / (R_expert - R_random)`` with our behaviour policies'
returns (``scores.policy_references()``).
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import ml_collections

from psec_jax import prng
from psec_jax.data.offline import OfflineData
from psec_jax.envs.base import EPISODE_LENGTH, Env
from psec_jax.rl import methods as M
from psec_jax.rl import pipeline, report, runner
from psec_jax.rl.continual import load_data

SKILL = "target"  # name of the skill in the saved library
TABLE = {
    "source_only": M.PRIOR,
    "target_only": M.SCRATCH,
    "source_target": M.SCRATCH._replace(data="source_target"),
    "psec": M.one_skill(SKILL),
    "psec_composed": M.PSEC,
}
METHODS = tuple(TABLE)


def data_names(config: ml_collections.ConfigDict) -> tuple[str, str]:
    """(source, target) dataset names of a config (its templates filled with env, variant, kind)."""
    fill = dict(env=config.env, variant=config.variant, kind=config.kind)
    return config.source_data.format(**fill), config.target_data.format(**fill)


def check(config: ml_collections.ConfigDict) -> None:
    """ValueError (one line) for a body, dynamics variant, fraction or dataset name this setting cannot use
    (names only: nothing is generated)."""
    from psec_jax import envs
    from psec_jax.data import datasets
    from psec_jax.envs import variants

    if config.variant == "nominal" or config.variant not in variants.VARIANTS:
        raise ValueError(
            f"config.variant must be a shifted dynamics variant, one of "
            f"{sorted(v for v in variants.VARIANTS if v != 'nominal')}; got {config.variant!r}"
        )
    if config.kind not in datasets.KINDS:
        raise ValueError(f"config.kind must be one of {datasets.KINDS}, got {config.kind!r}")
    if config.target_split not in SPLITS:
        raise ValueError(f"config.target_split must be one of {SPLITS}, got {config.target_split!r}")
    if not 0.0 < config.target_fraction <= 1.0:
        raise ValueError(f"config.target_fraction must be in (0, 1], got {config.target_fraction}")
    if config.env not in envs.names():
        raise ValueError(f"config.env must be one of {envs.names()}, got {config.env!r}")
    try:
        names = data_names(config)
    except (KeyError, IndexError, ValueError) as e:
        raise ValueError(
            f"config.source_data / target_data: not a template with {{env}}, {{variant}} and {{kind}} "
            f"({type(e).__name__}: {e})"
        ) from None
    for field, name, variant in (("source_data", names[0], config.variant), ("target_data", names[1], "nominal")):
        recipe = pipeline.data_recipe(field, name)
        if recipe.env != config.env or recipe.variant != variant:
            raise ValueError(f"config.{field}={name!r} is not {config.env} with {variant} dynamics")


def pi0_source(config: ml_collections.ConfigDict) -> tuple[str, str]:
    """(pi_0's data name, evaluation environment) of a run without overrides."""
    return data_names(config)[0], config.env


SPLITS = ("transitions", "episodes")  # what config.target_fraction is a share of


def target_subset(data: OfflineData, config: ml_collections.ConfigDict) -> OfflineData:
    """``config.target_fraction`` of the transitions (``config.target_split="transitions"``, the official
    code's) or of the episodes of ``data`` (at least one), chosen with a key derived from ``config.seed``:
    the same subset for every seed of a run (and every method)."""
    key = prng.stream(jax.random.key(config.seed), "target_subset")
    if config.target_split == "transitions":
        return data.subsample_transitions(key, config.target_fraction)
    return data.subsample_episodes(key, config.target_fraction)


def prepare(
    config: ml_collections.ConfigDict,
    *,
    data: Mapping[str, OfflineData] | None = None,
    env: Env | None = None,
    reference: tuple[float, float] | None = None,
) -> runner.Prepared:
    """``data``: ``{"source": ..., "target": ...}`` (the *whole* target set; the ``target_fraction``
    subset is taken here) instead of loading ``config.source_data`` / ``config.target_data``; ``env``:
    the evaluation environment (default ``config.env``, nominal dynamics); ``reference``: (random,
    expert) returns of 1000-step episodes (default ``scores.policy_references()[config.env]``)."""
    source_name, target_name = data_names(config)
    if data is not None:
        source_name, target_name = "(given source data)", "(given target data)"
    else:
        from psec_jax.data import datasets

        for field, name in (("source_data", source_name), ("target_data", target_name)):
            recipe = datasets.parse(name)
            want = config.variant if field == "source_data" else "nominal"
            if recipe.env != config.env or recipe.variant != want:
                raise ValueError(f"config.{field}={name!r} is not {config.env} with {want} dynamics")
        data = {"source": load_data(source_name), "target": load_data(target_name)}
    if env is None:
        from psec_jax import envs

        env = envs.make(config.env, episode_length=config.eval.episode_length)
    if reference is None:
        from psec_jax.data import scores

        reference = scores.reference_scores(config.env, table=scores.policy_references())
    target = target_subset(data["target"], config)
    info = {
        "episodes": int(data["target"].episode_ids()[-1]) + 1,
        "transitions": int(data["target"].size),
        "kept_transitions": int(target.size),
        "fraction": float(config.target_fraction),
        "split": config.target_split,
    }
    print(
        f"psec_dynamics: target subset {info['kept_transitions']} of {info['transitions']} transitions "
        f"(a {config.target_split} split of {info['episodes']} episodes)"
    )
    offset, scale = report.reference_normalization(
        reference, config.eval.episode_length, reference_length=EPISODE_LENGTH, scale=100.0
    )
    title = (
        f"{env.name}: {config.variant} -> {env.variant} dynamics, {config.kind}, "
        f"{100 * config.target_fraction:g}% target data: normalized score, "
        f"{config.num_seeds} seeds x {config.eval.episodes} episodes"
    )
    note = (
        f"\nnormalized score = 100 (R - R_random) / (R_expert - R_random) with (R_random, R_expert) = "
        f"({reference[0]:.1f}, {reference[1]:.1f}) per {EPISODE_LENGTH} steps. Source data "
        f"{source_name}; target: {info['kept_transitions']} of {info['transitions']} transitions "
        f"({config.target_split} split) of {target_name}.\n"
    )
    extra = {
        "target_data": info,
        "data": {"source": source_name, "target": target_name},
        "normalization": {
            "reference_random_expert": list(map(float, reference)),
            "reference_episode_length": EPISODE_LENGTH,
            "episode_length": config.eval.episode_length,
        },
    }
    rep = runner.Report(
        title, ("return",), {"return": "normalized score"}, {"return": scale}, {"return": offset}, note, extra
    )
    return runner.Prepared(
        data={
            "source": data["source"],
            "target": target,
            "source_target": OfflineData.concatenate([data["source"], target]),
        },
        env=env,
        pretrain="source",
        pretrain_name=source_name,
        skills=(runner.Skill(SKILL, "target", "reward"),),
        target=SKILL,
        compose="target",
        critics={"reward": SKILL},
        report=rep,
    )


SETTING = runner.Setting(
    "dynamics", TABLE, "argmax_q", check, prepare, expand_key="expand/{name}", pi0_source=pi0_source
)
