"""The one rollout: a batch of environments plays one episode each, inside one jitted loop.

It serves evaluation (PSEC's methods, SAC's deterministic policy: returns, costs, lengths) and dataset
collection (``record=True`` also returns every transition and which are real). Steps run in scanned
chunks of ``chunk`` inside a ``while_loop`` that stops once every episode has ended, so short
(terminated) episodes do not pay for the full time limit. Rewards and costs count only while an
episode is running (``where``, not a product: a terminated simulator may produce NaN afterwards).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from psec_jax.envs.base import Env, Transition

# (params, obs [N, obs_dim], key of this step) -> actions [N, act_dim]; the key is fold_in(act_key, t)
BatchActFn = Callable[[Any, jax.Array, jax.Array], jax.Array]


class Episodes(NamedTuple):
    returns: jax.Array  # [N] undiscounted return of each episode
    costs: jax.Array  # [N] summed cost
    lengths: jax.Array  # [N] float32 steps played (until termination or the time limit)
    transitions: Transition | None  # record=True: every field [T, N, ...] (T = env.episode_length)
    valid: jax.Array | None  # record=True: [T, N] bool, True where the step belongs to the episode


def rollout(
    env: Env,
    act: BatchActFn,
    params: Any,
    reset_keys: jax.Array,
    act_key: jax.Array,
    *,
    record: bool = False,
    chunk: int = 50,
) -> Episodes:
    """Plays one episode (``env.episode_length`` steps at most) in each of ``N = len(reset_keys)``
    environments, acting with ``act(params, obs, fold_in(act_key, t))``. Jittable; ``record`` and
    ``chunk`` are static."""
    typed = jax.dtypes.issubdtype(reset_keys.dtype, jax.dtypes.prng_key)
    if reset_keys.ndim != (1 if typed else 2):
        raise ValueError(f"rollout: reset_keys must be N keys (typed [N] or raw [N, 2]), got shape {reset_keys.shape}")
    n, horizon = reset_keys.shape[0], env.episode_length
    num_chunks = -(-horizon // chunk)
    state = jax.vmap(env.reset)(reset_keys)
    zeros = jnp.zeros((n,))

    def step(carry, t):
        state, alive, ret, cost, length = carry
        action = act(params, state.obs, jax.random.fold_in(act_key, t))
        nxt = jax.vmap(env.step)(state, action)
        valid = alive & (t < horizon)
        ret = ret + jnp.where(valid, nxt.reward, 0.0)
        cost = cost + jnp.where(valid, nxt.cost, 0.0)
        length = length + valid.astype(jnp.float32)
        carry = (nxt, alive & (nxt.done == 0), ret, cost, length)
        if not record:
            return carry, None
        tr = Transition(state.obs, action, nxt.reward, nxt.cost, nxt.terminal > 0, nxt.truncation > 0, nxt.obs)
        return carry, (tr, valid)

    init_carry = (state, jnp.ones((n,), bool), zeros, zeros, zeros)
    if record:
        shapes = jax.eval_shape(lambda c: jax.lax.scan(step, c, jnp.arange(chunk))[1], init_carry)
        buffers = jax.tree.map(lambda a: jnp.zeros((num_chunks * chunk, *a.shape[1:]), a.dtype), shapes)
    else:
        buffers = None

    def run_chunk(loop):
        c, carry, buffers = loop
        carry, out = jax.lax.scan(step, carry, c * chunk + jnp.arange(chunk))
        if record:
            buffers = jax.tree.map(
                lambda buf, o: jax.lax.dynamic_update_slice_in_dim(buf, o, c * chunk, 0), buffers, out
            )
        return c + 1, carry, buffers

    if num_chunks == 1:  # one chunk: a plain scan (no while_loop around it, so XLA compiles it as such)
        _, (_, _, ret, cost, length), buffers = run_chunk((jnp.int32(0), init_carry, buffers))
    else:
        _, (_, _, ret, cost, length), buffers = jax.lax.while_loop(
            lambda loop: (loop[0] < num_chunks) & loop[1][1].any(), run_chunk, (jnp.int32(0), init_carry, buffers)
        )
    if not record:
        return Episodes(ret, cost, length, None, None)
    trs, valid = jax.tree.map(lambda a: a[:horizon], buffers)
    return Episodes(ret, cost, length, trs, valid)
