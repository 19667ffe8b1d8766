"""Roll out behaviour policies into D4RL-style transition datasets.

Episodes are collected in rounds of `num_envs` parallel environments; each environment plays
exactly one episode per round (until termination or `episode_length` steps) inside one jitted
`lax.scan`, so a dataset of N trajectories holds N complete episodes, stored contiguously with
D4RL's flags (`terminals` on true termination, `timeouts` on the time limit).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from psec_jax import envs as envs_lib
from psec_jax import prng, runs
from psec_jax.data import behavior, sac

ActFn = Callable[[Any, jax.Array, jax.Array], jax.Array]  # (params, obs [obs_dim], key) -> action


def policy_act_fn(actor: sac.Actor, mode: str = "sample", noise: float = 0.0) -> ActFn:
    """An ActFn playing a behavior.BehaviorPolicy passed as params (see behavior.policy_action)."""
    return lambda policy, obs, key: behavior.policy_action(actor, policy, obs, key, mode, noise)


def make_round(env: envs_lib.Env, act: ActFn, num_envs: int, chunk: int = 50
               ) -> Callable[[Any, jax.Array], Any]:
    """A jitted function (params, key) -> (transitions [T, num_envs, ...], valid [T, num_envs]).

    One round plays one episode in each of num_envs environments (T = env.episode_length).
    valid[t, i] is True while environment i's episode has not ended before step t. Steps run in
    scanned chunks of `chunk` inside a while_loop that stops once every episode has ended, so
    short (terminated) episodes do not pay for the full time limit. The policy params are an
    argument: one compilation serves every policy of the same shapes.
    """
    horizon = env.episode_length
    num_chunks = -(-horizon // chunk)

    def one_round(params: Any, key: jax.Array):
        state = jax.vmap(env.reset)(jax.random.split(prng.stream(key, "reset"), num_envs))

        def step(carry, t):
            state, alive = carry
            keys = jax.random.split(jax.random.fold_in(prng.stream(key, "act"), t), num_envs)
            action = jax.vmap(act, in_axes=(None, 0, 0))(params, state.obs, keys)
            nxt = jax.vmap(env.step)(state, action)
            tr = envs_lib.Transition(state.obs, action, nxt.reward, nxt.cost, nxt.terminal > 0,
                                     nxt.truncation > 0, nxt.obs)
            return (nxt, alive & (nxt.done == 0)), (tr, alive & (t < horizon))

        def run_chunk(carry):
            c, state, alive, buffers = carry
            (state, alive), out = jax.lax.scan(step, (state, alive), c * chunk + jnp.arange(chunk))
            buffers = jax.tree.map(lambda buf, o: jax.lax.dynamic_update_slice_in_dim(buf, o, c * chunk, 0),
                                   buffers, out)
            return c + 1, state, alive, buffers

        shapes = jax.eval_shape(lambda s: jax.lax.scan(step, (s, jnp.ones((num_envs,), bool)),
                                                       jnp.arange(chunk))[1], state)
        buffers = jax.tree.map(lambda a: jnp.zeros((num_chunks * chunk, *a.shape[1:]), a.dtype), shapes)
        init = (jnp.int32(0), state, jnp.ones((num_envs,), bool), buffers)
        _, _, _, (trs, valid) = jax.lax.while_loop(lambda c: (c[0] < num_chunks) & c[2].any(), run_chunk, init)
        return jax.tree.map(lambda a: a[:horizon], trs), valid[:horizon]

    return jax.jit(one_round)


def collect(round_fn: Callable[[Any, jax.Array], Any], params: Any, key: jax.Array,
            num_episodes: int, *, desc: str = "collect") -> dict[str, np.ndarray]:
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
