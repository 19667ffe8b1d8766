"""Behaviour policies: train SAC on a task, keep snapshots at D4RL-style levels, save, load, act.

Levels kept from one SAC run (evaluated every `eval_every` env steps with the stochastic policy that
collects the datasets, `eval_mode` "sample"; every policy committed so far was chosen with tanh of its
mean, "mean", before the field existed):
- `random`: the actor at initialisation;
- `medium`: the snapshot whose return is closest to 1/3 of the expert return (earliest on ties);
- `expert`: the snapshot with the highest return;
- `replay_0..replay_{n-1}`: up to `num_replay_snapshots` snapshots spread between random and medium,
  from which the "medium-replay" datasets are rolled out (D4RL's medium-replay is the replay buffer
  of the run up to the medium level; replaying its policies keeps the committed files small).

A policy directory (`psec_jax/data/policies/<env>/`) holds every level's actor and observation
normaliser and a manifest with the SAC config, the returns of each level and the training curve.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from psec_jax import artifacts, prng, progress, runs
from psec_jax import config_check as cc
from psec_jax import envs as envs_lib
from psec_jax.data import sac
from psec_jax.data.normalize import Normalizer

POLICY_DIR = Path(__file__).parent / "policies"
MANIFEST = "policy.json"
FORMAT = "psec_jax.behavior_policy.v1"


class PolicyError(artifacts.ArtifactError):
    """A missing or corrupt behaviour-policy directory."""


class BehaviorPolicy(NamedTuple):
    """One tanh-Gaussian actor with its observation normaliser."""

    params: Any  # flax params of sac.Actor
    obs_mean: jax.Array  # [obs_dim]
    obs_std: jax.Array  # [obs_dim]


def policy_action(
    actor: sac.Actor, policy: BehaviorPolicy, obs: jax.Array, key: jax.Array, mode: str = "sample", noise: float = 0.0
) -> jax.Array:
    """Action [act] for one raw obs [obs_dim].

    mode: "sample" (the SAC policy's own stochastic action), "mean" (tanh of the mean), or
    "uniform" (uniform random in [-1, 1], ignoring the policy). `noise` adds N(0, noise^2) to the
    action before clipping to [-1, 1].
    """
    x = Normalizer(policy.obs_mean, policy.obs_std, clip=10.0)(obs)
    k_act, k_noise = jax.random.split(key)
    if mode == "uniform":
        a = jax.random.uniform(k_act, (actor.action_size,), minval=-1.0, maxval=1.0)
    elif mode == "mean":
        a = jnp.tanh(actor.apply(policy.params, x)[0])
    elif mode == "sample":
        a, _ = sac.sample_action(actor, policy.params, x, k_act)
    else:
        raise ValueError(f"unknown policy mode {mode!r} (sample, mean, uniform)")
    a = a + noise * jax.random.normal(k_noise, a.shape)
    return jnp.clip(a, -1.0, 1.0)


# How each task's behaviour policies are trained: config overrides of `default_config()` (the
# `behavior:<task>` presets; a policy directory's manifest records the config that made it). The walker
# tasks keep Playground's DMC settings (128 envs, 8 updates per iteration: one update per 16 env steps, ~1k
# env steps/s here), which made their committed policies. On the Brax bodies that ratio leaves SAC far from
# what it reaches (hopper 438, walker2d 328 after 300k steps), so their recipe takes one update per env step
# (16 envs, 16 updates, batch 256; hopper: 3,168 after 105k steps) and trains two cost-penalised runs beside
# the task's own (the safe setting's mixed-cost data).
BRAX_RECIPE: dict[str, Any] = {
    "total_steps": 200_000,
    "eval_every": 20_000,
    "eval_episodes": 16,  # hopper's sampled episodes either fall early or run all 1,000 steps: 8 was noisy
    "sac.num_envs": 16,
    "sac.updates_per_step": 16,
    "sac.batch_size": 256,
    "sac.min_replay": 5_000,
    "sac.replay_size": 200_000,  # every transition of the run (a smaller checkpoint than the default 1M)
    "cost_penalties": (0.0, 1.0, 10.0),
}
RECIPES: dict[str, dict[str, Any]] = {
    "walker-stand": {"total_steps": 300_000, "eval_mode": "mean"},
    "walker-walk": {"total_steps": 600_000, "eval_mode": "mean"},
    "walker-run": {"total_steps": 600_000, "eval_mode": "mean"},
    **{name: {"total_steps": 600_000} for name in envs_lib.WALKER_SPEEDS},
    **{body: BRAX_RECIPE for body in envs_lib.BRAX_BODIES},
}


def recipe_config(env: str) -> ml_collections.ConfigDict:
    """``default_config()`` with ``env`` and the overrides its committed policies were trained with."""
    if env not in RECIPES:
        raise ValueError(f"no behaviour recipe for {env!r}; known: {sorted(RECIPES)}")
    c = default_config()
    c.env = env
    for field, value in RECIPES[env].items():
        cc.set_field(c, field, value)
    return c


def default_config() -> ml_collections.ConfigDict:
    """How a behaviour policy is trained (the SAC settings live in `sac`)."""
    c = ml_collections.ConfigDict()
    c.env = "walker-walk"  # environment name (psec_jax.envs.names())
    c.seed = 0  # root PRNG seed
    c.total_steps = 600_000  # environment steps of SAC training
    c.eval_every = 40_000  # env steps between evaluations / snapshots
    c.eval_episodes = 16  # full episodes per evaluation
    # the policy each snapshot is evaluated (and its levels chosen) with: "sample", the stochastic policy
    # that collects the datasets, or "mean", tanh of its mean (which chose every committed policy so far)
    c.eval_mode = "sample"
    c.num_replay_snapshots = 2  # snapshots kept between random and medium for medium-replay data
    # lambda of each SAC run's reward r - lambda * cost, trained side by side (vmapped): the first must be 0
    # (the task's own policies, every level); the others add penalised medium / expert levels whose costs
    # span the range the safe datasets mix (``psec_jax.data.datasets`` kind mixed-cost)
    c.cost_penalties = (0.0,)
    c.sac = sac.default_config()  # SAC hyperparameters
    return c


def check_config(config: ml_collections.ConfigDict) -> None:
    """ValueError (one line) for a config that cannot train; nothing is built or compiled."""
    cc.one_of(config, "env", envs_lib.names())
    cc.positive_int(
        config,
        "total_steps",
        "eval_every",
        "eval_episodes",
        "sac.num_envs",
        "sac.batch_size",
        "sac.updates_per_step",
        "sac.hidden",
        "sac.replay_size",
        "sac.min_replay",
    )
    cc.non_negative(config, "num_replay_snapshots")
    cc.one_of(config, "eval_mode", ("sample", "mean"))
    penalties = tuple(config.cost_penalties)
    numbers = all(isinstance(x, (int, float)) and not isinstance(x, bool) and x >= 0 for x in penalties)
    if not penalties or not numbers or penalties[0] != 0:
        raise cc.ConfigError(
            f"config field cost_penalties must be numbers >= 0 starting with 0 (the task's own reward), got {penalties}"
        )
    if len(penalties) > 1 and config.env not in envs_lib.VELOCITY_THRESHOLDS:
        raise cc.ConfigError(f"config field cost_penalties: {config.env} has no cost to penalise; use (0.0,)")
    cc.positive(config, "sac.learning_rate", "sac.reward_scale", "sac.init_alpha")
    cc.in_range(config, "sac.discount", 0.0, 1.0)
    cc.in_range(config, "sac.tau", 0.0, 1.0, low_open=True)
    for small, large in (("sac.num_envs", "sac.replay_size"), ("sac.batch_size", "sac.min_replay")):
        if cc.get(config, small) > cc.get(config, large):  # (sac.make_train's rules, before the env is built)
            raise cc.ConfigError(
                f"config field {small} ({cc.get(config, small)}) must not exceed {large} ({cc.get(config, large)})"
            )


def _run_keys(key: jax.Array, n: int) -> jax.Array:
    """[n] keys of a stack of runs: run 0 takes ``key`` itself (a single run keeps the keys of one plain SAC
    run), run r >= 1 ``fold_in(key, r)``."""
    return jnp.stack([key, *(jax.random.fold_in(key, r) for r in range(1, n))])


def _stacked(agent: sac.SAC, n: int) -> tuple[Callable, Callable, Callable]:
    """(init, run, evaluate) over a stack of n runs (a leading [n] axis everywhere). One run goes through the
    unbatched programs, which made the committed single-run policies (a vmapped program of one run need not
    give the same bits)."""
    if n > 1:
        return agent.init_many, agent.run_many, agent.evaluate_many
    one, add = (lambda tree: jax.tree.map(lambda x: x[0], tree)), (lambda tree: jax.tree.map(lambda x: x[None], tree))
    return (
        lambda keys, penalties: add(agent.init(keys[0], penalties[0])),
        lambda state, iters: add(agent.run(one(state), iters)),
        lambda params, moments, keys, episodes, sample: add(
            agent.evaluate(one(params), one(moments), keys[0], episodes, sample)
        ),
    )


def level_name(run: int, level: str) -> str:
    """A level's name in the saved tree: run 0's (the task's own reward) as it is, the penalised runs'
    as ``penalty{run}_{level}``."""
    return level if run == 0 else f"penalty{run}_{level}"


def select_levels(returns: list[float], num_replay: int) -> dict[str, int]:
    """Indices into the snapshot list (index 0 = random init) for each level.

    returns: evaluation return of each snapshot, returns[0] the random policy's.
    """
    r = np.asarray(returns, np.float64)
    expert = int(np.nanargmax(r))
    target = r[expert] / 3.0
    medium = int(np.nanargmin(np.abs(r[: expert + 1] - target)))
    levels = {"random": 0, "medium": medium, "expert": expert}
    between = [i for i in np.unique(np.linspace(0, medium, num_replay + 2).round().astype(int)[1:-1]) if 0 < i < medium]
    for i, idx in enumerate(between):
        levels[f"replay_{i}"] = int(idx)
    return levels


class Progress(NamedTuple):
    """A behaviour run between chunks (a pytree: checkpointed whole, so a run resumes where it stopped).
    C chunks of training, R runs side by side."""

    sac: sac.SACState  # [R, ...] the SAC runs
    policies: BehaviorPolicy  # [C + 1, R, ...] each run's actor after each chunk (0: at initialisation)
    scores: jax.Array  # [C + 1, R, 2] float32, (return, cost) of each snapshot's evaluation (eval_mode)
    env_steps: jax.Array  # [C + 1] int32, env steps (per environment stack) of each snapshot
    chunk: jax.Array  # [] int32, chunks done


def _snapshot(state: sac.SACState) -> BehaviorPolicy:
    """Each run's actor and observation statistics, state [R, ...] -> [R, ...]."""
    std = jax.vmap(lambda moments: moments.std)(state.normalizer)  # per run: its count divides its m2
    return BehaviorPolicy(state.actor_params, state.normalizer.mean, std)


def train(
    config: ml_collections.ConfigDict,
    *,
    workdir: str | os.PathLike | None = None,
    desc: str | None = None,
    log: Callable[[dict[str, Any]], Any] | None = None,
) -> tuple[dict[str, BehaviorPolicy], dict[str, Any]]:
    """Train one SAC run per ``config.cost_penalties`` (run 0 on the task's own reward; the others on
    r - lambda * cost), all in one program, and return ({level: policy}, info with returns, costs and
    the curves). Run 0 keeps every level (``select_levels``), a penalised run its ``medium`` and ``expert``
    (``level_name``), each chosen on the return it was trained for (return - lambda * cost).

    Training goes in chunks of ``config.eval_every`` env steps, each ending with every run's evaluation
    and snapshot. With ``workdir`` the chunks run under ``psec_jax.loop.run_chunks`` in ``workdir``:
    metrics.jsonl (the evaluation's return / cost / penalized_return and SAC's last losses under ``train/``
    for run 0, suffixed ``/run{r}`` for the others), a checkpoint of the whole ``Progress`` after every
    chunk, and a rerun resumes from it.
    Without, they run here and ``log``, if given, receives each chunk's record.
    """
    env = envs_lib.make(config.env)
    agent = sac.make_train(env, config.sac)
    penalties = np.asarray(config.cost_penalties, np.float32)
    num_runs = len(penalties)
    init, run, evaluate_runs = _stacked(agent, num_runs)
    key = jax.random.PRNGKey(config.seed)
    t0 = time.time()
    eval_key = prng.stream(key, "eval")
    iters = max(1, config.eval_every // config.sac.num_envs)
    prefill = -(-config.sac.min_replay // config.sac.num_envs) * config.sac.num_envs  # init's random steps
    num_chunks = max(1, -(-(config.total_steps - prefill) // (iters * config.sac.num_envs)))

    def scores_of(state: sac.SACState, i: jax.Array) -> jax.Array:
        keys = _run_keys(jax.random.fold_in(eval_key, i), num_runs)
        sample = config.eval_mode == "sample"
        e = evaluate_runs(state.actor_params, state.normalizer, keys, config.eval_episodes, sample)
        return jnp.stack([e.returns.mean(1), e.costs.mean(1)], -1)  # [R, 2]

    def start() -> Progress:
        state = init(_run_keys(prng.stream(key, "sac"), num_runs), jnp.asarray(penalties))
        first = _snapshot(state)
        policies = jax.tree.map(lambda x: jnp.zeros((num_chunks + 1, *x.shape), x.dtype).at[0].set(x), first)
        scores = jnp.zeros((num_chunks + 1, num_runs, 2), jnp.float32).at[0].set(scores_of(state, 0))
        steps = jnp.zeros((num_chunks + 1,), jnp.int32).at[0].set(state.env_steps[0])
        return Progress(state, policies, scores, steps, jnp.zeros((), jnp.int32))

    @jax.jit
    def chunk(p: Progress) -> tuple[Progress, dict[str, jax.Array]]:
        state, metrics = run(p.sac, iters)
        i = p.chunk + 1
        scores = scores_of(state, i)
        p = Progress(
            state,
            jax.tree.map(lambda buf, x: buf.at[i].set(x), p.policies, _snapshot(state)),
            p.scores.at[i].set(scores),
            p.env_steps.at[i].set(state.env_steps[0]),
            i,
        )
        record = {}
        for r in range(num_runs):
            suffix = "" if r == 0 else f"/run{r}"
            ret, cost = scores[r, 0], scores[r, 1]
            record |= {
                f"return{suffix}": ret,
                f"cost{suffix}": cost,
                f"penalized_return{suffix}": ret - penalties[r] * cost,
            }
            # SAC's own metrics (losses; "reward" and "cost": the last step's, of the stochastic policy)
            # under train/, so that they never overwrite the evaluation's return and cost
            record |= {f"train/{k}{suffix}": v[r, -1] for k, v in metrics.items()}
        return p, record

    steps_per_chunk = iters * config.sac.num_envs
    if workdir is not None:
        from psec_jax import loop

        p, _ = loop.run_chunks(
            chunk,
            start(),
            num_chunks=num_chunks,
            steps_per_chunk=steps_per_chunk,
            workdir=workdir,
            config=config,
            desc=desc or f"SAC {config.env}",
        )
    else:
        p = start()
        bar = runs.progress(num_chunks, desc=desc or f"SAC {config.env}", unit="chunk")
        for _ in range(num_chunks):
            p, record = chunk(p)
            record = {"env_steps": int(p.env_steps[p.chunk]), **{k: float(v) for k, v in record.items()}}
            if log is not None:
                log(record)
            bar.update(1, {"return": record["return"], "cost": record["cost"], "env_steps": record["env_steps"]})
        bar.close()
    policies_all, scores, env_steps = jax.device_get((p.policies, p.scores, p.env_steps))
    policies, levels, members = {}, {}, []
    for r, lam in enumerate(penalties):
        curve = [
            {
                "env_steps": int(env_steps[c]),
                "return": float(scores[c, r, 0]),
                "cost": float(scores[c, r, 1]),
                "penalized_return": float(scores[c, r, 0] - lam * scores[c, r, 1]),
            }
            for c in range(num_chunks + 1)
        ]
        chosen = select_levels([c["penalized_return"] for c in curve], config.num_replay_snapshots)
        if r:
            chosen = {k: chosen[k] for k in ("medium", "expert")}
            if chosen["expert"] == 0:
                progress.say(
                    f"warning: {config.env}: the run with cost penalty {lam:g} never beat its initial policy on "
                    f"return - {lam:g} x cost; its expert level is the untrained actor"
                )
        run_levels = {
            name: {
                "snapshot": idx,
                "env_steps": curve[idx]["env_steps"],
                "return": curve[idx]["return"],
                "cost": curve[idx]["cost"],
                "cost_penalty": float(lam),
            }
            for name, idx in chosen.items()
        }
        for name, idx in chosen.items():
            policies[level_name(r, name)] = jax.tree.map(lambda x: x[idx, r], policies_all)
            levels[level_name(r, name)] = run_levels[name]
        members.append({"cost_penalty": float(lam), "levels": run_levels, "curve": curve})
    info = {
        "env": config.env,
        "levels": levels,
        "curve": members[0]["curve"],
        "runs": members,
        "train_seconds": time.time() - t0,
        "config": config.to_dict(),
        "observation_size": env.observation_size,
        "action_size": env.action_size,
    }
    return policies, info


def save(directory: str | os.PathLike, policies: dict[str, BehaviorPolicy], info: dict[str, Any]) -> Path:
    """Write the levels and their info to `directory` (atomic, checksummed)."""
    tree = {name: {"params": p.params, "obs_mean": p.obs_mean, "obs_std": p.obs_std} for name, p in policies.items()}
    meta = {"format": FORMAT, **runs.to_jsonable(info)}
    return artifacts.save_tree(directory, tree, meta, manifest=MANIFEST, error=PolicyError)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """`psec-jax behavior`: trains SAC on ``config.env`` and saves its behaviour policies (random / replay /
    medium / expert snapshots, and the penalised runs' medium / expert) to ``<workdir>/policy``. Training
    logs every chunk's evaluation to ``<workdir>/train/metrics.jsonl`` and checkpoints there after each, so a
    rerun in the same workdir resumes; the level returns go to ``summary.json``. Installing a new policy
    into the package is deliberately manual: review the returns, then copy ``<workdir>/policy`` to
    ``psec_jax/data/policies/<env>/`` and commit it. Returns the summary."""
    policies, info = train(config, workdir=Path(workdir) / "train")
    path = save(Path(workdir) / "policy", policies, info)
    summary = {f"return/{name}": lvl["return"] for name, lvl in info["levels"].items()}
    summary["train_seconds"] = info["train_seconds"]
    summary["env_steps"] = info["curve"][-1]["env_steps"]
    runs.write_summary(workdir, summary)
    print(runs.format_table([{"level": n, **l} for n, l in info["levels"].items()]))
    print(f"saved {path}")
    return summary


def policy_dir(env_name: str) -> Path:
    """Where the committed behaviour policies of `env_name` live."""
    return POLICY_DIR / env_name


def load(env_name_or_dir: str | os.PathLike) -> tuple[sac.Actor, dict[str, BehaviorPolicy], dict[str, Any]]:
    """Load the behaviour policies of an env name (committed ones) or a directory.

    Returns (actor module, {level: policy}, info).
    """
    path = Path(env_name_or_dir)
    if not path.exists() and str(env_name_or_dir) in envs_lib.names():
        path = policy_dir(str(env_name_or_dir))
    tree, meta = artifacts.load_tree(path, manifest=MANIFEST, error=PolicyError)
    if meta.get("format") != FORMAT:
        raise PolicyError(f"{path / MANIFEST}: unknown format {meta.get('format')!r} (expected {FORMAT})")
    actor = sac.Actor(tuple(meta["config"]["sac"]["hidden"]), int(meta["action_size"]))
    policies = {
        name: BehaviorPolicy(t["params"], jnp.asarray(t["obs_mean"]), jnp.asarray(t["obs_std"]))
        for name, t in tree.items()
    }
    return actor, policies, meta
