"""Evaluate many policies at once: every method, seed and episode in one jitted rollout.

The environment step is compiled once for the whole batch ``[methods x seeds x episodes]``
(``envs.rollout.rollout``); each method's acting function runs on its slice, vmapped over its seeds.
Episode e of seed s starts from the same state for every method. Returns undiscounted returns and
summed costs per episode.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from psec_jax import prng
from psec_jax.envs import rollout
from psec_jax.envs.base import Env

ActFn = Callable[[Any, jax.Array, jax.Array], jax.Array]  # (params, obs [E, obs_dim], key) -> [E, act_dim]


def make_evaluate(env: Env, acts: Mapping[str, ActFn], num_seeds: int, num_episodes: int
                  ) -> Callable[[Mapping[str, Any], jax.Array], dict[str, dict[str, jax.Array]]]:
    """A jitted ``evaluate(params, key)``. params: ``{method: pytree with a leading [num_seeds] axis}``.

    Returns ``{method: {"return": [num_seeds, num_episodes], "cost": [...], "length": [...]}}``
    over full episodes (``env.episode_length`` steps, or until termination)."""
    names = list(acts)
    per_method = num_seeds * num_episodes
    total = len(names) * per_method

    def evaluate(params: Mapping[str, Any], key: jax.Array):
        missing = [n for n in names if n not in params]
        if missing:
            raise KeyError(f"evaluate: no params for method(s) {missing}")

        def act(params: Mapping[str, Any], obs: jax.Array, k: jax.Array) -> jax.Array:
            obs = obs.reshape(len(names), num_seeds, num_episodes, -1)
            actions = []
            for i, name in enumerate(names):
                keys = jax.random.split(prng.stream(k, name), num_seeds)
                actions.append(jax.vmap(acts[name])(params[name], obs[i], keys))
            return jnp.stack(actions).reshape(total, -1)

        # every method starts from the same states (common random numbers, a paired comparison), and a
        # method's keys depend on its name only: its episodes do not change with the rest of the table
        reset_keys = jnp.tile(jax.random.split(prng.stream(key, "reset"), per_method), len(names))
        # one chunk of the whole episode: the same compiled loop as a plain scan (no early exit), so the
        # simulator's arithmetic is fused as it always was and results do not move with the chunking
        episodes = rollout.rollout(env, act, params, reset_keys, prng.stream(key, "act"), chunk=env.episode_length)
        shape = (len(names), num_seeds, num_episodes)
        ret, cost, length = (x.reshape(shape) for x in (episodes.returns, episodes.costs, episodes.lengths))
        return {n: {"return": ret[i], "cost": cost[i], "length": length[i]} for i, n in enumerate(names)}

    return jax.jit(evaluate)
