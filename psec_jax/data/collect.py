"""Roll out behaviour policies into D4RL-style transition datasets.

Episodes are collected in rounds of `num_envs` parallel environments; each environment plays
exactly one episode per round (until termination or `episode_length` steps) inside one jitted
`lax.scan`, so a dataset of N trajectories holds N complete episodes, stored contiguously with
D4RL's flags (`terminals` on true termination, `timeouts` on the time limit).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from psec_jax import envs as envs_lib
from psec_jax import prng, runs
from psec_jax.data import behavior, sac
from psec_jax.envs import rollout

ActFn = Callable[[Any, jax.Array, jax.Array], jax.Array]  # (params, obs [obs_dim], key) -> action


def policy_act_fn(actor: sac.Actor, mode: str = "sample", noise: float = 0.0) -> ActFn:
    """An ActFn playing a behavior.BehaviorPolicy passed as params (see behavior.policy_action)."""
    return lambda policy, obs, key: behavior.policy_action(actor, policy, obs, key, mode, noise)


def make_round(env: envs_lib.Env, act: ActFn, num_envs: int, chunk: int = 50) -> Callable[[Any, jax.Array], Any]:
    """A jitted function (params, key) -> (transitions [T, num_envs, ...], valid [T, num_envs]).

    One round plays one episode in each of num_envs environments (T = env.episode_length) with
    ``envs.rollout.rollout``; valid[t, i] is True while environment i's episode has not ended before
    step t. The policy params are an argument: one compilation serves every policy of the same shapes.
    """

    def batch_act(params: Any, obs: jax.Array, key: jax.Array) -> jax.Array:
        keys = jax.random.split(key, num_envs)
        return jax.vmap(act, in_axes=(None, 0, 0))(params, obs, keys)

    def one_round(params: Any, key: jax.Array):
        reset_keys = jax.random.split(prng.stream(key, "reset"), num_envs)
        episodes = rollout.rollout(
            env, batch_act, params, reset_keys, prng.stream(key, "act"), record=True, chunk=chunk
        )
        return episodes.transitions, episodes.valid

    return jax.jit(one_round)


def collect(
    round_fn: Callable[[Any, jax.Array], Any], params: Any, key: jax.Array, num_episodes: int, *, desc: str = "collect"
) -> dict[str, np.ndarray]:
    """Collect `num_episodes` complete episodes with a `make_round` function and policy params.

    Returns the D4RL transition dict (observations, actions, rewards, costs, terminals, timeouts,
    next_observations), episodes contiguous, in order.
    """
    if num_episodes < 1:
        raise ValueError(f"num_episodes must be >= 1, got {num_episodes}")
    parts: list[dict[str, np.ndarray]] = []
    bar = runs.progress(num_episodes, desc=desc, unit="episode")
    r = 0
    while len(parts) < num_episodes:
        trs, valid = jax.device_get(round_fn(params, jax.random.fold_in(key, r)))
        for i in range(min(valid.shape[1], num_episodes - len(parts))):
            mask = valid[:, i]
            parts.append({k: np.asarray(v[:, i][mask]) for k, v in trs._asdict().items()})
            bar.update(1)
        r += 1
    bar.close()
    data = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return data
