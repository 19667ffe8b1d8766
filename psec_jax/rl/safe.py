"""Multi-objective composition for safe offline RL (PSEC section 5, DSRL-style velocity tasks).

pi_0 is pretrained by diffusion behaviour cloning on the whole offline dataset (which carries per-step
costs). Two LoRA skills are expanded from it on the same data: a *reward* skill (advantage-weighted
with an IQL critic) and a *cost* skill (weighted by the reachability critic, which favours feasible,
i.e. never-unsafe, actions). The two are composed by the context-aware AlphaNet in parameter space
(PSEC), noise space (NSEC) or action space (ASEC), each composer trained on the *safe subset* of the
data (``safe_subset``: the episodes whose total cost is within ``config.cost_limit``).

Methods (``METHODS``): ``bc`` (pi_0 alone), ``reward`` / ``cost`` (one skill alone, weight 1),
``asec`` / ``nsec`` / ``psec`` (the two skills composed). Every method acts the same way
(``select_safe``): it samples candidates and keeps, among those the cost critic deems feasible, the one
the reward critic scores highest; if none is feasible, the safest. Scores are the normalised reward
``(R - R_random) / (R_expert - R_random)`` (our behaviour policies' returns,
``scores.policy_references()``) and the normalised cost ``cost / cost_limit`` (<= 1 is safe).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from psec_jax import envs as envs_lib
from psec_jax import runs
from psec_jax.data import datasets, scores
from psec_jax.data.offline import OfflineData
from psec_jax.envs import registry
from psec_jax.rl import critics, evaluate, pipeline, policy, report, train
from psec_jax.rl.continual import load_data
from psec_jax.rl.policy import Actor

METHODS = ("bc", "reward", "cost", "asec", "nsec", "psec")
SKILLS = ("reward", "cost")  # order of the skills in the composed stack
_MODES = {"asec": "action", "nsec": "noise", "psec": "param"}
LABELS = {"return": "normalized reward", "cost": "normalized cost"}


# ---------------------------------------------------------------------------------------- data


def episode_costs(data: OfflineData) -> np.ndarray:
    """[num_episodes] total cost of each episode (episodes as in ``OfflineData.episode_ids``)."""
    ids = data.episode_ids()
    return np.bincount(ids, weights=np.asarray(data.costs, np.float64))


def safe_subset(data: OfflineData, cost_limit: float) -> tuple[OfflineData, dict[str, Any]]:
    """The episodes of ``data`` whose total cost is <= ``cost_limit`` (the composers' training data).

    If no episode qualifies, falls back to the lowest-cost quarter of the episodes (at least one) and
    says so in the returned info (``fallback``: True). Returns ``(subset, info)`` with info
    ``{"episodes", "kept", "fallback", "cost_limit", "kept_cost_mean", "kept_cost_max"}``."""
    costs = episode_costs(data)
    kept = np.flatnonzero(costs <= cost_limit)
    fallback = kept.size == 0
    if fallback:
        kept = np.sort(np.argsort(costs, kind="stable")[:max(1, costs.size // 4)])
    info = {"episodes": int(costs.size), "kept": int(kept.size), "fallback": bool(fallback),
            "cost_limit": float(cost_limit), "kept_cost_mean": float(costs[kept].mean()),
            "kept_cost_max": float(costs[kept].max())}
    return data.take_episodes(kept), info


# ---------------------------------------------------------------------------------------- acting


def safe_choice(reward: jax.Array, safety: jax.Array) -> jax.Array:
    """Index [B] of the chosen candidate per state. reward, safety: [B, N] (higher is better for
    both; ``safety`` = cost critic score = -Qc, so a candidate is feasible where safety >= 0).

    Among feasible candidates, the argmax of ``reward``; where none is feasible, the argmax of
    ``safety`` (the safest, i.e. argmin Qc)."""
    feasible = safety >= 0
    best_feasible = jnp.argmax(jnp.where(feasible, reward, -jnp.inf), axis=-1)
    safest = jnp.argmax(safety, axis=-1)
    return jnp.where(jnp.any(feasible, axis=-1), best_feasible, safest)


def select_safe(sample_fn: Callable[[jax.Array, jax.Array], jax.Array],
                reward_fn: Callable[[jax.Array, jax.Array], jax.Array],
                safety_fn: Callable[[jax.Array, jax.Array], jax.Array],
                obs: jax.Array, key: jax.Array, num_candidates: int) -> jax.Array:
    """``policy.select_best`` with the safety-aware rule of ``safe_choice``.

    sample_fn: (obs [M, obs_dim], key) -> actions [M, A]; reward_fn / safety_fn: (obs [M], actions [M])
    -> [M], higher is better (safety >= 0 is feasible). obs: [B, obs_dim]. Returns actions [B, A]."""
    b = obs.shape[0]
    rep = jnp.repeat(obs, num_candidates, axis=0)  # [B * N, obs_dim], candidates of a state contiguous
    actions = sample_fn(rep, key)
    if num_candidates == 1:
        return actions
    reward = reward_fn(rep, actions).reshape(b, num_candidates)
    safety = safety_fn(rep, actions).reshape(b, num_candidates)
    best = safe_choice(reward, safety)
    return actions.reshape(b, num_candidates, -1)[jnp.arange(b), best]


def make_safe_act(actor: Actor, reward_critic: critics.Critic, cost_critic: critics.Critic,
                  num_candidates: int, mode: str | None = None, composer: policy.Composer | None = None,
                  normalizer: pipeline.Normalizer | None = None) -> evaluate.ActFn:
    """An acting function ``(params, obs [E, obs_dim], key) -> actions [E, A]`` choosing among
    ``num_candidates`` samples with ``select_safe``; observations standardised by ``normalizer``.

    params: ``{"base", "skills", "reward_critic", "cost_critic"}`` (+ ``"composer"`` when a composer
    is given; ``"skills"`` may be None). Without a composer the skills are applied with weight 1."""
    sampler = pipeline.make_sampler(actor, mode, composer)

    def act(params: Mapping[str, Any], obs: jax.Array, key: jax.Array) -> jax.Array:
        if normalizer is not None:
            obs = normalizer(obs)
        reward = lambda s, a: reward_critic.score(params["reward_critic"], s, a)
        safety = lambda s, a: cost_critic.score(params["cost_critic"], s, a)
        return select_safe(lambda s, k: sampler(params, s, k), reward, safety, obs, key, num_candidates)

    return act


# ---------------------------------------------------------------------------------------- run


def _expand_config(config: ml_collections.ConfigDict, kind: str) -> ml_collections.ConfigDict:
    """config.expand with ``critic`` = config.critics[kind] (what make_expand reads)."""
    c = ml_collections.ConfigDict(config.expand.to_dict())
    c.critic = ml_collections.ConfigDict(config.critics[kind].to_dict())
    return c


def check_config(config: ml_collections.ConfigDict) -> None:
    """ValueError (one line) for a config this setting cannot run; nothing is loaded or compiled."""
    pipeline.check_common(config, ("pretrain", "expand", "compose"), ("critics.reward", "critics.cost"))
    pipeline.check_methods(config.methods, METHODS)
    if not config.cost_limit > 0:
        raise ValueError(f"config.cost_limit must be > 0, got {config.cost_limit}")
    for kind in SKILLS:
        if config.critics[kind].kind != kind:
            raise ValueError(f"config.critics.{kind}.kind must be {kind!r}, got {config.critics[kind].kind!r}")
    if config.eval.candidates < 1:
        raise ValueError(f"config.eval.candidates must be >= 1, got {config.eval.candidates}")
    if config.num_seeds < 1:
        raise ValueError(f"config.num_seeds must be >= 1, got {config.num_seeds}")


def run(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *, data: OfflineData | None = None,
        env: envs_lib.Env | None = None, reference: tuple[float, float] | None = None) -> dict[str, Any]:
    """Runs every stage for ``config.num_seeds`` seeds, evaluates every method on ``config.env`` and
    writes results.{json,md,png}, pi_0, per-seed skill libraries and composers to ``workdir``.

    ``data``: the offline dataset to use instead of loading ``config.data``; ``env``: the evaluation
    environment (default ``config.env``, nominal dynamics); ``reference``: (random, expert) returns of
    1000-step episodes for the normalised reward (default ``scores.policy_references()[config.env]``).
    Returns ``{"methods": normalised summary, "raw": raw summary, "safe_data": safe_subset info,
    "seconds": ...}``."""
    check_config(config)
    workdir = Path(workdir)
    t_start = time.perf_counter()
    if env is None and config.env not in envs_lib.VELOCITY_THRESHOLDS:
        raise ValueError(f"config.env={config.env!r} has no cost; use one of {list(envs_lib.VELOCITY_THRESHOLDS)}")
    data_name = config.data.format(env=config.env) if data is None else "(given data)"
    if data is None:
        if datasets.parse(data_name).env != config.env:
            raise ValueError(f"config.data={data_name!r} is not data of config.env={config.env!r}")
        data = load_data(data_name)
    if env is None:
        env = envs_lib.make(config.env, episode_length=config.eval.episode_length)
    if env.cost_threshold is None:
        raise ValueError(f"config.env={config.env!r} has no cost; use a velocity body (halfcheetah, hopper, "
                         "walker2d, ant)")
    if reference is None:
        reference = scores.reference_scores(config.env, table=scores.policy_references())
    normalizer = pipeline.Normalizer.of(data)  # pi_0's data fixes the input statistics
    safe_data, safe_info = safe_subset(data, config.cost_limit)
    if safe_info["fallback"]:
        print(f"psec_safe: no episode has cost <= cost_limit={config.cost_limit:g}; composing on the "
              f"{safe_info['kept']} lowest-cost of {safe_info['episodes']} episodes instead "
              f"(their cost <= {safe_info['kept_cost_max']:.1f})")
    else:
        print(f"psec_safe: composing on {safe_info['kept']} of {safe_info['episodes']} episodes with cost "
              f"<= {config.cost_limit:g}")

    obs_dim, act_dim = env.observation_size, env.action_size
    num_seeds, methods = config.num_seeds, list(config.methods)
    actor = pipeline.make_actor(config.network, obs_dim, act_dim, "lora")
    expand_cfg = {k: _expand_config(config, k) for k in SKILLS}
    critic_fns = {k: critics.make_critic(obs_dim, act_dim, expand_cfg[k].critic) for k in SKILLS}
    stage = lambda tr, keys, frozen, d, name, **kw: pipeline.run_stage(
        tr, keys, frozen, d, workdir=workdir / "stages" / name, config=config, desc=name, **kw)[0]

    data, safe_data = normalizer.data(data), normalizer.data(safe_data)

    # 1. pretrain pi_0 on all the data
    base = pipeline.pretrain_base(actor, config, data, normalizer, workdir=workdir, data_name=data_name)

    # 2. expand a reward skill (IQL) and a cost skill (reachability critic) on all the data
    skill, critic_state = {}, {}
    for kind in SKILLS:
        st = stage(train.make_expand(actor, expand_cfg[kind], "lora"),
                   pipeline.seed_keys(config.seed, num_seeds, f"expand/{kind}"), base, data, f"expand_{kind}")
        skill[kind], critic_state[kind] = jax.vmap(actor.as_skills)(st.ema), st.critic
    both = jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=1), *(skill[k] for k in SKILLS))  # [S, 2, ...]
    for s in range(num_seeds):
        lib = pipeline.library_of(pipeline.take_seed(base, s), pipeline.take_seed(both, s), list(SKILLS),
                                  actor.lora_config, expand_cfg)
        lib.save(workdir / "policies" / f"library_seed{s}")

    # 3. compose on the safe subset, and 4. evaluate every method in one rollout
    critic_params = {"reward_critic": critic_state["reward"], "cost_critic": critic_state["cost"]}
    acts, params = {}, {}
    for m in methods:
        if m in _MODES:
            mode = _MODES[m]
            composer = policy.make_composer("context", obs_dim, policy.num_outputs(mode, len(SKILLS)),
                                            tuple(config.compose.hidden))
            cparams = stage(train.make_compose(actor, composer, mode, config.compose),
                            pipeline.seed_keys(config.seed, num_seeds, f"compose/{m}"),
                            pipeline.compose_frozen(actor, base, both, mode, safe_data.observations,
                                                    pipeline.seed_keys(config.seed, num_seeds, f"components/{m}")),
                            safe_data, f"compose_{m}").params
            for s in range(num_seeds):
                pipeline.save_composer(workdir / "policies" / f"composer_{m}_seed{s}", pipeline.take_seed(cparams, s),
                                       mode=mode, kind="context", skills=list(SKILLS), skill_kind="lora")
            acts[m] = make_safe_act(actor, critic_fns["reward"], critic_fns["cost"], config.eval.candidates,
                                    mode, composer, normalizer)
            params[m] = {"base": base, "skills": both, "composer": cparams, **critic_params}
        else:
            acts[m] = make_safe_act(actor, critic_fns["reward"], critic_fns["cost"], config.eval.candidates,
                                    normalizer=normalizer)
            params[m] = {"base": base, "skills": None if m == "bc" else skill[m], **critic_params}

    t_eval = time.perf_counter()
    evaluate_fn = evaluate.make_evaluate(env, acts, num_seeds, config.eval.episodes)
    results = jax.device_get(evaluate_fn(params, jax.random.key(config.seed + 10_000)))
    results = {m: results[m] for m in methods}
    offset, scale = report.reference_normalization(reference, config.eval.episode_length,
                                                   reference_length=registry.EPISODE_LENGTH)
    summary = report.summarize(results, normalizers={"return": scale, "cost": config.cost_limit},
                               offsets={"return": offset})
    raw = report.summarize(results)
    seconds = {"total": time.perf_counter() - t_start, "evaluate": time.perf_counter() - t_eval}
    title = (f"{env.name} safe composition (reward + cost skills): normalized reward and cost "
             f"(cost limit {config.cost_limit:g}), {num_seeds} seeds x {config.eval.episodes} episodes")
    extra = {"raw": raw, "data": data_name, "safe_data": safe_info, "seconds": seconds,
             "config": runs.to_jsonable(config),
             "normalization": {"reference_random_expert": list(map(float, reference)),
                               "reference_episode_length": registry.EPISODE_LENGTH,
                               "episode_length": config.eval.episode_length, "cost_limit": config.cost_limit}}
    table = report.write(workdir, summary, title=title, fields=("return", "cost"), extra=extra, labels=LABELS)
    note = (f"\nnormalized reward = (R - R_random) / (R_expert - R_random) with (R_random, R_expert) = "
            f"({reference[0]:.1f}, {reference[1]:.1f}) per {registry.EPISODE_LENGTH} steps; normalized cost = "
            f"episode cost / {config.cost_limit:g} (<= 1 is safe). Composers trained on {safe_info['kept']} of "
            f"{safe_info['episodes']} episodes" + (" (fallback: lowest-cost quarter)" if safe_info["fallback"]
                                                  else f" with cost <= {config.cost_limit:g}") + ".\n")
    (workdir / "results.md").write_text(table + note)
    print(table + note)
    print(f"took {seconds['total']:.0f} s (evaluation {seconds['evaluate']:.0f} s); results in {workdir}")
    return {"methods": summary, "raw": raw, "safe_data": safe_info, "seconds": seconds}
