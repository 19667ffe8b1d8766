"""Dynamics shift (PSEC section 5, D4RL-style): pi_0 pretrained on data collected under shifted
dynamics (e.g. half the friction), one LoRA skill expanded on a small share (5%) of nominal-dynamics
data, evaluated in the nominal environment.

Methods (``METHODS``), all acting by sampling candidates and keeping the best by an IQL Q:

- ``source_only``: pi_0 alone, candidates ranked by the target skill run's critic (trained on the
  target subset), i.e. what the source policy achieves with target-aware action selection.
- ``target_only``: a full diffusion policy and its IQL critic trained on the target subset alone
  (``make_expand(actor, cfg, "full")``, the same loss and steps as the skill; the critic is the one
  trained in the skill's stage, on the same data, when that stage runs).
- ``psec``: pi_0 plus the target LoRA skill (weight 1), ranked by that skill's critic.

Scores are D4RL-style, ``100 (R - R_random) / (R_expert - R_random)`` with our behaviour policies'
returns (``scores.policy_references()``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Mapping

import jax
import ml_collections

from psec_jax import envs as envs_lib
from psec_jax import runs
from psec_jax.data import datasets, scores
from psec_jax.data.offline import OfflineData
from psec_jax.envs import registry
from psec_jax.rl import critics, evaluate, pipeline, report, train
from psec_jax.rl.continual import load_data

METHODS = ("source_only", "target_only", "psec")
SKILL = "target"  # name of the skill in the saved library


def data_names(config: ml_collections.ConfigDict) -> tuple[str, str]:
    """(source, target) dataset names of a config (its templates filled with env, variant, kind)."""
    fill = dict(env=config.env, variant=config.variant, kind=config.kind)
    return config.source_data.format(**fill), config.target_data.format(**fill)


def check_config(config: ml_collections.ConfigDict) -> None:
    """ValueError (one line) for a config this setting cannot run; nothing is loaded or compiled."""
    pipeline.check_common(config, ("pretrain", "expand"), ("expand.critic",))
    pipeline.check_methods(config.methods, METHODS)
    if config.variant == "nominal" or config.variant not in envs_lib.VARIANTS:
        raise ValueError(f"config.variant must be a shifted dynamics variant, one of "
                         f"{sorted(v for v in envs_lib.VARIANTS if v != 'nominal')}; got {config.variant!r}")
    if config.kind not in datasets.KINDS:
        raise ValueError(f"config.kind must be one of {datasets.KINDS}, got {config.kind!r}")
    if not 0.0 < config.target_fraction <= 1.0:
        raise ValueError(f"config.target_fraction must be in (0, 1], got {config.target_fraction}")
    if config.expand.critic.kind != "reward":
        raise ValueError(f"config.expand.critic.kind must be 'reward', got {config.expand.critic.kind!r}")
    if config.eval.candidates < 1:
        raise ValueError(f"config.eval.candidates must be >= 1, got {config.eval.candidates}")
    if config.num_seeds < 1:
        raise ValueError(f"config.num_seeds must be >= 1, got {config.num_seeds}")


def target_subset(data: OfflineData, config: ml_collections.ConfigDict) -> OfflineData:
    """``config.target_fraction`` of the episodes of ``data`` (at least one), chosen with a key derived
    from ``config.seed``: the same subset for every seed of a run (and every method)."""
    from psec_jax import prng

    return data.subsample_episodes(prng.stream(jax.random.key(config.seed), "target_subset"),
                                   config.target_fraction)


def run(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *,
        data: Mapping[str, OfflineData] | None = None, env: envs_lib.Env | None = None,
        reference: tuple[float, float] | None = None) -> dict[str, Any]:
    """Runs every stage and baseline for ``config.num_seeds`` seeds, evaluates on the nominal
    environment and writes results.{json,md,png}, pi_0 and per-seed skill libraries to ``workdir``.

    ``data``: ``{"source": ..., "target": ...}`` (the *whole* target set; the ``target_fraction``
    subset is taken here) instead of loading ``config.source_data`` / ``config.target_data``; ``env``:
    the evaluation environment (default ``config.env``, nominal dynamics); ``reference``: (random,
    expert) returns of 1000-step episodes (default ``scores.policy_references()[config.env]``).
    Returns ``{"methods": normalised summary, "raw": raw returns, "target_data": sizes, "seconds"}``."""
    check_config(config)
    workdir = Path(workdir)
    t_start = time.perf_counter()
    source_name, target_name = data_names(config)
    if data is not None:
        source_name, target_name = "(given source data)", "(given target data)"
    else:
        for field, name in (("source_data", source_name), ("target_data", target_name)):
            recipe = datasets.parse(name)
            want = config.variant if field == "source_data" else "nominal"
            if recipe.env != config.env or recipe.variant != want:
                raise ValueError(f"config.{field}={name!r} is not {config.env} with {want} dynamics")
        data = {"source": load_data(source_name), "target": load_data(target_name)}
    if env is None:
        env = envs_lib.make(config.env, episode_length=config.eval.episode_length)
    if reference is None:
        reference = scores.reference_scores(config.env, table=scores.policy_references())
    normalizer = pipeline.Normalizer.of(data["source"])  # pi_0's data fixes the input statistics
    target = target_subset(data["target"], config)
    target_info = {"episodes": int(data["target"].episode_ids()[-1]) + 1,
                   "kept_episodes": int(target.episode_ids()[-1]) + 1, "kept_transitions": int(target.size),
                   "fraction": float(config.target_fraction)}
    print(f"psec_dynamics: target subset {target_info['kept_episodes']} of {target_info['episodes']} episodes "
          f"({target.size} transitions)")

    source, target = normalizer.data(data["source"]), normalizer.data(target)
    obs_dim, act_dim = env.observation_size, env.action_size
    num_seeds, methods = config.num_seeds, list(config.methods)
    actor = pipeline.make_actor(config.network, obs_dim, act_dim, "lora")
    critic = critics.make_critic(obs_dim, act_dim, config.expand.critic)
    stage = lambda tr, keys, frozen, d, name, **kw: pipeline.run_stage(
        tr, keys, frozen, d, workdir=workdir / "stages" / name, config=config, desc=name, **kw)[0]

    acts, params = {}, {}
    target_critic = None
    if {"source_only", "psec"} & set(methods):
        # 1. pretrain pi_0 on the source (shifted-dynamics) data
        base = pipeline.pretrain_base(actor, config, source, normalizer, workdir=workdir, data_name=source_name)
        # 2. expand one LoRA skill on the target subset (nominal dynamics)
        st = stage(train.make_expand(actor, config.expand, "lora"),
                   pipeline.seed_keys(config.seed, num_seeds, "expand/target"), base, target, "expand_target")
        skill = jax.vmap(actor.as_skills)(st.ema)
        for s in range(num_seeds):
            lib = pipeline.library_of(pipeline.take_seed(base, s), pipeline.take_seed(skill, s), [SKILL],
                                      actor.lora_config, {SKILL: config.expand})
            lib.save(workdir / "policies" / f"library_seed{s}")
        target_critic = st.critic
        act = pipeline.make_act(actor, critic, config.eval.candidates, normalizer=normalizer)
        if "source_only" in methods:
            acts["source_only"], params["source_only"] = act, {"base": base, "skills": None, "critic": st.critic}
        if "psec" in methods:
            acts["psec"], params["psec"] = act, {"base": base, "skills": skill, "critic": st.critic}
    if "target_only" in methods:
        # baseline: a full diffusion policy + IQL trained on the target subset alone; the IQL critic of
        # the skill stage (same data, same loss, independent of the actor) is reused when there is one
        shared = target_critic is not None
        scratch = stage(train.make_expand(actor, config.expand, "full", train_critic=not shared),
                        pipeline.seed_keys(config.seed, num_seeds, "target_only"),
                        (None, target_critic) if shared else None, target, "target_only", frozen_per_seed=shared)
        acts["target_only"] = pipeline.make_act(actor, critic, config.eval.candidates, normalizer=normalizer)
        params["target_only"] = {"base": scratch.ema, "skills": None, "critic": scratch.critic}
    acts = {m: acts[m] for m in methods}

    # 3. evaluate every method in one rollout on the nominal dynamics
    t_eval = time.perf_counter()
    evaluate_fn = evaluate.make_evaluate(env, acts, num_seeds, config.eval.episodes)
    results = jax.device_get(evaluate_fn(params, jax.random.key(config.seed + 10_000)))
    results = {m: results[m] for m in methods}
    offset, scale = report.reference_normalization(reference, config.eval.episode_length,
                                                   reference_length=registry.EPISODE_LENGTH, scale=100.0)
    summary = report.summarize(results, normalizers={"return": scale}, offsets={"return": offset})
    raw = report.summarize(results)
    seconds = {"total": time.perf_counter() - t_start, "evaluate": time.perf_counter() - t_eval}
    title = (f"{env.name}: {config.variant} -> {env.variant} dynamics, {config.kind}, "
             f"{100 * config.target_fraction:g}% target data: normalized score, "
             f"{num_seeds} seeds x {config.eval.episodes} episodes")
    extra = {"raw": raw, "target_data": target_info, "seconds": seconds, "config": runs.to_jsonable(config),
             "data": {"source": source_name, "target": target_name},
             "normalization": {"reference_random_expert": list(map(float, reference)),
                               "reference_episode_length": registry.EPISODE_LENGTH,
                               "episode_length": config.eval.episode_length}}
    table = report.write(workdir, summary, title=title, extra=extra, labels={"return": "normalized score"})
    note = (f"\nnormalized score = 100 (R - R_random) / (R_expert - R_random) with (R_random, R_expert) = "
            f"({reference[0]:.1f}, {reference[1]:.1f}) per {registry.EPISODE_LENGTH} steps. Source data "
            f"{source_name}; target: {target_info['kept_episodes']} of {target_info['episodes']} episodes of "
            f"{target_name}.\n")
    (workdir / "results.md").write_text(table + note)
    print(table + note)
    print(f"took {seconds['total']:.0f} s (evaluation {seconds['evaluate']:.0f} s); results in {workdir}")
    return {"methods": summary, "raw": raw, "target_data": target_info, "seconds": seconds}
