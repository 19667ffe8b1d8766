"""Evaluate many policies at once: every method, seed and episode in one jitted rollout.

The environment step is compiled once for the whole batch ``[methods x seeds x episodes]``; each
method's acting function runs on its slice, vmapped over its seeds. Returns undiscounted returns and
summed costs per episode.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from psec_jax import envs as envs_lib
from psec_jax import prng

ActFn = Callable[[Any, jax.Array, jax.Array], jax.Array]  # (params, obs [E, obs_dim], key) -> [E, act_dim]


def make_evaluate(env: envs_lib.Env, acts: Mapping[str, ActFn], num_seeds: int, num_episodes: int
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
        state = jax.vmap(env.reset)(jax.random.split(prng.stream(key, "reset"), total))

        def step(carry, t):
            state, ret, cost, length, alive = carry
            k = jax.random.fold_in(prng.stream(key, "act"), t)
            obs = state.obs.reshape(len(names), num_seeds, num_episodes, -1)
            actions = []
            for i, name in enumerate(names):
                keys = jax.random.split(jax.random.fold_in(k, i), num_seeds)
                actions.append(jax.vmap(acts[name])(params[name], obs[i], keys))
            action = jnp.stack(actions).reshape(total, -1)
            state = jax.vmap(env.step)(state, action)
            # where, not a product: a terminated simulator may produce NaN rewards afterwards
            ret = ret + jnp.where(alive > 0, state.reward, 0.0)
            cost = cost + jnp.where(alive > 0, state.cost, 0.0)
            length = length + alive
            alive = alive * (1.0 - (state.terminal > 0))
            return (state, ret, cost, length, alive), None

        zeros = jnp.zeros((total,))
        carry = (state, zeros, zeros, zeros, jnp.ones((total,)))
        (_, ret, cost, length, _), _ = jax.lax.scan(step, carry, jnp.arange(env.episode_length))
        shape = (len(names), num_seeds, num_episodes)
        ret, cost, length = ret.reshape(shape), cost.reshape(shape), length.reshape(shape)
        return {n: {"return": ret[i], "cost": cost[i], "length": length[i]} for i, n in enumerate(names)}

    return jax.jit(evaluate)
