"""Continual policy shift (PSEC section 5): pi_0 pretrained on one task, new skills expanded from a few
target trajectories, composed, and compared with baselines on the target task.

Methods (``METHODS``): ``scratch`` (a full diffusion policy trained on the target data alone),
``asec`` / ``nsec`` (LoRA skills composed in action / noise space by a context-aware network),
``psec_mlp`` (MLP adapters instead of LoRA, composed in their output), ``psec_fixed`` (parameter-space
composition with fixed weights, no context module) and ``psec`` (parameter space, context-aware).
Every method acts by sampling candidates and keeping the best by the target task's Q.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections

from psec_jax import envs as envs_lib
from psec_jax import runs
from psec_jax.data import datasets
from psec_jax.data.offline import OfflineData
from psec_jax.rl import critics, evaluate, pipeline, policy, report, train
from psec_jax.rl.policy import Skills

METHODS = ("scratch", "asec", "nsec", "psec_mlp", "psec_fixed", "psec")
_COMPOSED = {"asec": ("lora", "action"), "nsec": ("lora", "noise"), "psec": ("lora", "param"),
             "psec_mlp": ("mlp", "param")}


def load_data(name: str) -> OfflineData:
    """A generated dataset by name (generated from the committed behaviour policies if absent)."""
    return OfflineData.from_numpy(datasets.load(name)[0])


def _stack_skills(parts: list[Skills]) -> Skills:
    """Join [S, 1, ...] skill stacks into [S, K, ...] (seed axis first)."""
    return jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=1), *parts)


def check_config(config: ml_collections.ConfigDict) -> None:
    """ValueError (one line) for a config this setting cannot run; nothing is loaded or compiled."""
    from experiments.configs.psec_continual import TASKS  # the task table lives with the config

    pipeline.check_common(config, ("pretrain", "expand", "compose"), ("expand.critic",))
    pipeline.check_methods(config.methods, METHODS)
    if config.task not in TASKS:
        raise ValueError(f"unknown task {config.task!r}; choose from {sorted(TASKS)}")


def run(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *,
        data: Mapping[str, OfflineData] | None = None, env: envs_lib.Env | None = None) -> dict[str, Any]:
    """Runs every stage and baseline for ``config.num_seeds`` seeds, evaluates on the target task and
    writes results.{json,md,png}, the pretrained policy and per-seed skill libraries to ``workdir``.

    ``data``: ``{"base": ..., <skill name>: ...}`` to use instead of loading ``config.base_data`` /
    ``config.skill_data``; ``env``: the evaluation environment (default: walker-<target>)."""
    from experiments.configs.psec_continual import TASKS  # the task table lives with the config

    check_config(config)
    workdir = Path(workdir)
    t_start = time.perf_counter()
    prior, target = TASKS[config.task]
    names = [*prior, target]
    if data is None:
        data = {"base": load_data(config.base_data),
                **{n: load_data(config.skill_data.format(task=n)) for n in names}}
    if env is None:
        env = envs_lib.make(f"walker-{target}", episode_length=config.eval.episode_length)
    normalizer = pipeline.Normalizer.of(data["base"])  # pi_0's data fixes the input statistics
    data = {k: normalizer.data(v) for k, v in data.items()}
    obs_dim, act_dim = env.observation_size, env.action_size
    num_seeds = config.num_seeds
    methods = list(config.methods)
    kinds = sorted({_COMPOSED[m][0] for m in methods if m in _COMPOSED} | ({"lora"} if "psec_fixed" in methods else set()))
    actors = {k: pipeline.make_actor(config.network, obs_dim, act_dim, k) for k in ("lora", "mlp")}
    critic = critics.make_critic(obs_dim, act_dim, config.expand.critic)
    stage = lambda tr, keys, frozen, d, name, **kw: pipeline.run_stage(
        tr, keys, frozen, d, workdir=workdir / "stages" / name, config=config, desc=name, **kw)[0]

    # 1. pretrain pi_0 on the base data
    base = pipeline.pretrain_base(actors["lora"], config, data["base"], normalizer, workdir=workdir,
                                  data_name=config.base_data)

    # 2. expand: one skill per task and skill kind; scratch trains a full network on the target data
    # Each task's critic is trained once, alongside its first skill; later skill kinds and the scratch
    # baseline on the same data reuse it (frozen): same data and loss, so the same critic, at no cost.
    skills: dict[str, Skills] = {}
    critic_of: dict[str, critics.CriticState] = {}
    for kind in kinds:
        parts = []
        for name in names:
            shared = name in critic_of
            st = stage(train.make_expand(actors[kind], config.expand, kind, train_critic=not shared),
                       pipeline.seed_keys(config.seed, num_seeds, f"expand/{kind}/{name}"),
                       (base, critic_of[name]) if shared else base, data[name], f"expand_{kind}_{name}")
            parts.append(jax.vmap(actors[kind].as_skills)(st.ema))
            critic_of.setdefault(name, st.critic)
        skills[kind] = _stack_skills(parts)
    if "lora" in skills:
        for s in range(num_seeds):
            lib = pipeline.library_of(pipeline.take_seed(base, s), pipeline.take_seed(skills["lora"], s), names,
                                      actors["lora"].lora_config, {n: config.expand for n in names})
            lib.save(workdir / "policies" / f"library_seed{s}")
    scratch = None
    if "scratch" in methods:
        shared = target in critic_of
        scratch = stage(train.make_expand(actors["lora"], config.expand, "full", train_critic=not shared),
                        pipeline.seed_keys(config.seed, num_seeds, "scratch"),
                        (None, critic_of[target]) if shared else None, data[target], "scratch",
                        frozen_per_seed=shared)

    # 3. compose, and 4. evaluate every method in one rollout
    acts, params = {}, {}
    k = len(names)
    for m in methods:
        if m == "scratch":
            acts[m] = pipeline.make_act(actors["lora"], critic, config.eval.candidates, normalizer=normalizer)
            params[m] = {"base": scratch.ema, "skills": None, "critic": scratch.critic}
            continue
        kind, mode = _COMPOSED.get(m, ("lora", "param"))
        if m == "psec_fixed":
            composer = policy.make_composer("fixed", obs_dim, k, fixed=(config.compose.fixed_weight,) * k)
            cparams = jnp.broadcast_to(composer.init(None), (num_seeds, k))
        else:
            composer = policy.make_composer("context", obs_dim, policy.num_outputs(mode, k), tuple(config.compose.hidden))
            frozen = pipeline.compose_frozen(actors[kind], base, skills[kind], mode, data[target].observations,
                                             pipeline.seed_keys(config.seed, num_seeds, f"components/{m}"))
            cparams = stage(train.make_compose(actors[kind], composer, mode, config.compose),
                            pipeline.seed_keys(config.seed, num_seeds, f"compose/{m}"), frozen, data[target],
                            f"compose_{m}").params
            for s in range(num_seeds):
                pipeline.save_composer(workdir / "policies" / f"composer_{m}_seed{s}", pipeline.take_seed(cparams, s),
                                       mode=mode, kind="context", skills=names, skill_kind=kind)
        acts[m] = pipeline.make_act(actors[kind], critic, config.eval.candidates, mode, composer, normalizer)
        params[m] = {"base": base, "skills": skills[kind], "composer": cparams, "critic": critic_of[target]}

    t_eval = time.perf_counter()
    evaluate_fn = evaluate.make_evaluate(env, acts, num_seeds, config.eval.episodes)
    results = jax.device_get(evaluate_fn(params, jax.random.key(config.seed + 10_000)))
    summary = report.summarize({m: results[m] for m in methods})
    seconds = {"total": time.perf_counter() - t_start, "evaluate": time.perf_counter() - t_eval}
    title = f"walker {' + '.join(['stand', *prior])} -> {target}: return, {num_seeds} seeds x {config.eval.episodes} episodes"
    table = report.write(workdir, summary, title=title,
                         extra={"config": runs.to_jsonable(config), "seconds": seconds})
    print(table)
    print(f"took {seconds['total']:.0f} s (evaluation {seconds['evaluate']:.0f} s); results in {workdir}")
    return {"methods": summary, "seconds": seconds}
