"""Dispatch back-ends: run the routed experts and combine their outputs.

Every back-end computes, for tokens x [T, d] and a RouteOutput with K slots,

    y[t] = sum_{slots j valid} weights[t, j] * expert_{ids[t, j]}(x[t])

with `expert_fn(params_e, x_rows [n, d]) -> [n, d_out]` written for ONE expert and
`params` holding all experts stacked on a leading axis [E, ...].

- `dense`: every expert on every token, masked combine. Cost E x; a reference for small E.
- `capacity`: GShard-style buffers [E, C, d] with C = ceil(capacity_factor * T * k / E);
  assignments beyond an expert's capacity are dropped (priority: slot 0 of every token first,
  then slot 1, ...; tokens in order), the dropped fraction is reported.
- `dropless`: sort the (token, slot) assignments by expert; a `lax.scan` over experts takes each
  expert's weights as a scanned input (read once), and an inner `lax.while_loop` runs only the
  blocks of `block_size` rows that expert has (a data-dependent trip count: no padding to a
  worst case), each block gathering its rows of x, running the expert and scatter-adding the
  weighted result. Nothing is dropped. A `custom_vjp` recomputes each block in the backward pass
  and emits each expert's gradient as a scan output, so no pass touches more than one expert's
  weights per step. This is MegaBlocks' block-sparse
  idea done with a loop because XLA on CPU has no grouped matmul (`jax.lax.ragged_dot` runs
  ~100x slower there than a dense matmul).
- `ragged`: the same sort, then `jax.lax.ragged_dot` grouped matmuls (fast on GPU/TPU; only for
  the layer's matmul experts).
- `loop_reference`: the official code's Python loop over experts (eager, concrete routing);
  the test reference.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from psec_jax.moe.routing import RouteOutput

ExpertFn = Callable[[Any, jax.Array], jax.Array]  # (params of one expert, x [n, d]) -> [n, d_out]


def _expert(params: Any, e: jax.Array | int) -> Any:
    return jax.tree.map(lambda w: w[e], params)


def _check(x: jax.Array, route: RouteOutput) -> None:
    if x.ndim != 2:
        raise ValueError(f"dispatch expects tokens x of shape [T, d], got {x.shape}")
    if route.expert_ids.shape[0] != x.shape[0]:
        raise ValueError(f"route has {route.expert_ids.shape[0]} tokens but x has {x.shape[0]}")


def loop_reference(x: jax.Array, route: RouteOutput, expert_fn: ExpertFn, params: Any) -> jax.Array:
    """Gather the tokens that chose each expert, run it, scatter-add weighted (eager only).

    route.expert_ids and route.mask must be concrete; route.weights, x and params may be traced
    (so gradients of this reference can be taken).
    """
    _check(x, route)
    ids, mask = np.asarray(route.expert_ids), np.asarray(route.mask)
    out = None
    for e in range(route.num_experts):
        tok, slot = np.nonzero(mask & (ids == e))
        if len(tok) == 0:
            continue
        y = expert_fn(_expert(params, e), x[tok]) * route.weights[tok, slot][:, None].astype(x.dtype)
        out = jnp.zeros((x.shape[0], y.shape[-1]), y.dtype) if out is None else out
        out = out.at[tok].add(y)
    if out is None:  # no valid slot at all cannot happen with the routers here
        raise ValueError("route has no valid assignment")
    return out


def dense(x: jax.Array, route: RouteOutput, expert_fn: ExpertFn, params: Any) -> jax.Array:
    """All experts on all tokens ([E, T, d_out] intermediate), combined with the route weights."""
    _check(x, route)
    y = jax.vmap(expert_fn, in_axes=(0, None))(params, x)  # [E, T, d_out]
    return jnp.einsum("te,etd->td", route.combine_weights().astype(y.dtype), y)


def _sorted_assignments(route: RouteOutput) -> tuple[jax.Array, ...]:
    """Assignments in priority order (slot-major), stably sorted by expert.

    Returns (order [N], sorted_expert [N] (E for invalid), group_sizes [E], group_starts [E]) with
    N = T*K; assignment a = j*T + t is slot j of token t.
    """
    e = route.num_experts
    ids = jnp.where(route.mask, route.expert_ids, e).T.reshape(-1)  # [K*T], slot-major
    order = jnp.argsort(ids, stable=True)
    sorted_e = ids[order]
    sizes = jnp.bincount(ids, length=e + 1)[:e]
    starts = jnp.cumsum(sizes) - sizes
    return order, sorted_e, sizes, starts


def capacity_of(num_tokens: int, num_experts: int, capacity_factor: float, k: float) -> int:
    """Static per-expert capacity ceil(capacity_factor * T * k / E) (at least 1)."""
    return max(1, math.ceil(capacity_factor * num_tokens * k / num_experts))


def capacity(x: jax.Array, route: RouteOutput, expert_fn: ExpertFn, params: Any, *,
             capacity_factor: float = 1.25, k: float | None = None) -> tuple[jax.Array, jax.Array]:
    """GShard-style capacity dispatch. Returns (y [T, d_out], dropped fraction [] of assignments).

    k: experts per token used to size the buffers (default: the route's slot count; pass the
    expected mean for top-p routes, whose slot count is max_k).
    """
    _check(x, route)
    t, kk, e = x.shape[0], route.num_slots, route.num_experts
    cap = capacity_of(t, e, capacity_factor, kk if k is None else k)
    order, sorted_e, sizes, starts = _sorted_assignments(route)
    pos_sorted = jnp.arange(order.shape[0]) - starts[jnp.minimum(sorted_e, e - 1)]
    pos = jnp.zeros_like(order).at[order].set(pos_sorted)  # position of each assignment in its expert
    ids = route.expert_ids.T.reshape(-1)
    valid = route.mask.T.reshape(-1)
    keep = valid & (pos < cap)
    token = jnp.tile(jnp.arange(t), kk)
    slot_index = jnp.where(keep, ids * cap + pos, e * cap)  # e*cap = out of range: dropped
    buf = jnp.zeros((e * cap, x.shape[1]), x.dtype).at[slot_index].set(x[token], mode="drop")
    y = jax.vmap(expert_fn)(params, buf.reshape(e, cap, x.shape[1]))  # [E, C, d_out]
    y = y.reshape(e * cap, -1)
    w = (route.weights.T.reshape(-1) * keep).astype(y.dtype)
    gathered = jnp.take(y, jnp.minimum(slot_index, e * cap - 1), axis=0) * w[:, None]
    out = gathered.reshape(kk, t, -1).sum(0)
    dropped = (valid & ~keep).sum() / jnp.maximum(valid.sum(), 1)
    return out, dropped.astype(jnp.float32)


def default_block_size(num_tokens: int, num_experts: int, slots_per_token: float = 2.0) -> int:
    """Rows per dropless block: a power of two covering 1.5x the mean group size, in [8, 256].

    Small groups fit one block (each expert's weights read once); large ones use 256-row blocks,
    big enough for full matmul speed and small enough that padding the last block wastes little.
    """
    mean_rows = max(1.0, 1.5 * num_tokens * slots_per_token / num_experts)
    return int(min(256, max(8, 2 ** math.ceil(math.log2(mean_rows)))))


class _Blocks(NamedTuple):
    """Where each expert's rows live in the expert-sorted assignment list (int32 arrays)."""

    token: jax.Array  # [N + block] token of each sorted assignment (padded)
    assignment: jax.Array  # [N + block] slot-major assignment index of each sorted assignment (padded)
    start: jax.Array  # [E] first sorted position of each expert's group
    size: jax.Array  # [E] rows (assignments) of each expert


def _blocks(route: RouteOutput, block: int) -> _Blocks:
    t = route.expert_ids.shape[0]
    order, _, sizes, starts = _sorted_assignments(route)
    pad = jnp.zeros((block,), jnp.int32)
    order = order.astype(jnp.int32)
    return _Blocks(jnp.concatenate([order % t, pad]), jnp.concatenate([order, pad]),
                   starts.astype(jnp.int32), sizes.astype(jnp.int32))


def _rows(b: _Blocks, e: jax.Array, j: jax.Array, block: int):
    """Rows of block j of expert e: token ids [block], assignment ids [block], valid [block]."""
    s = b.start[e] + j * block
    rows = jax.lax.dynamic_slice(b.token, (s,), (block,))
    assign = jax.lax.dynamic_slice(b.assignment, (s,), (block,))
    valid = j * block + jnp.arange(block) < b.size[e]
    return rows, assign, valid


def _num_blocks(b: _Blocks, e: jax.Array, block: int) -> jax.Array:
    return (b.size[e] + block - 1) // block


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _grouped(expert_fn: ExpertFn, block: int, params: Any, x: jax.Array, w_flat: jax.Array,
             b: _Blocks) -> jax.Array:
    return _grouped_fwd(expert_fn, block, params, x, w_flat, b)[0]


def _grouped_fwd(expert_fn, block, params, x, w_flat, b):
    # Outer scan over experts takes each expert's weights as a scanned input (read once); the inner
    # while_loop runs only the blocks that expert has, so the trip count follows the routing.
    d_out = jax.eval_shape(expert_fn, _expert(params, 0), x[:block]).shape[-1]

    def per_expert(out, inputs):
        p_e, e = inputs

        def body(carry):
            j, out = carry
            rows, assign, valid = _rows(b, e, j, block)
            y = expert_fn(p_e, x[rows])
            scale = jnp.where(valid, w_flat[assign], 0.0).astype(y.dtype)
            return j + 1, out.at[rows].add(y * scale[:, None])

        _, out = jax.lax.while_loop(lambda c: c[0] < _num_blocks(b, e, block), body, (jnp.int32(0), out))
        return out, None

    out0 = jnp.zeros((x.shape[0], d_out), x.dtype)
    num_experts = jax.tree.leaves(params)[0].shape[0]
    out, _ = jax.lax.scan(per_expert, out0, (params, jnp.arange(num_experts)))
    return out, (params, x, w_flat, b)


def _grouped_bwd(expert_fn, block, res, g):
    params, x, w_flat, b = res

    def per_expert(carry, inputs):
        dx, dw = carry
        p_e, e = inputs

        def body(c):
            j, dp, dx, dw = c
            rows, assign, valid = _rows(b, e, j, block)
            y, vjp = jax.vjp(expert_fn, p_e, x[rows])  # recompute this block's forward
            g_rows = g[rows]
            scale = jnp.where(valid, w_flat[assign], 0.0).astype(y.dtype)
            dpe, dxb = vjp(g_rows * scale[:, None])
            dp = jax.tree.map(jnp.add, dp, dpe)
            dw = dw.at[assign].add(jnp.where(valid, jnp.sum(g_rows * y, -1), 0.0).astype(dw.dtype))
            return j + 1, dp, dx.at[rows].add(dxb), dw

        init = (jnp.int32(0), jax.tree.map(jnp.zeros_like, p_e), dx, dw)
        _, dp, dx, dw = jax.lax.while_loop(lambda c: c[0] < _num_blocks(b, e, block), body, init)
        return (dx, dw), dp

    num_experts = jax.tree.leaves(params)[0].shape[0]
    (dx, dw), dparams = jax.lax.scan(per_expert, (jnp.zeros_like(x), jnp.zeros_like(w_flat)),
                                     (params, jnp.arange(num_experts)))
    zero_ints = jax.tree.map(lambda a: np.zeros(a.shape, jax.dtypes.float0), b)
    return dparams, dx, dw, zero_ints


_grouped.defvjp(_grouped_fwd, _grouped_bwd)


def dropless(x: jax.Array, route: RouteOutput, expert_fn: ExpertFn, params: Any, *,
             block_size: int | None = None) -> jax.Array:
    """Sort-by-expert block dispatch; nothing dropped (see the module docstring)."""
    _check(x, route)
    block = block_size or default_block_size(x.shape[0], route.num_experts)
    w_flat = route.weights.T.reshape(-1)  # slot-major, matches the assignment numbering
    return _grouped(expert_fn, block, params, x, w_flat, _blocks(route, block))


def ragged(x: jax.Array, route: RouteOutput, params: dict[str, jax.Array], activation: str = "swiglu"
           ) -> jax.Array:
    """Dropless dispatch with `jax.lax.ragged_dot` grouped matmuls (for GPU/TPU).

    Only for the matmul experts of `psec_jax.moe.layer` (params "up", "down" and, for SwiGLU,
    "gate"). Sorts all T*K slots by expert (invalid slots last, in no group), so the buffers are
    [T*K, d]: give top-p routes a `max_k` on accelerators. On CPU, XLA lowers ragged_dot to a slow
    loop (~100x a dense matmul); use `dropless` there.
    """
    _check(x, route)
    t = x.shape[0]
    order, _, sizes, _ = _sorted_assignments(route)
    rows = x[order % t]  # [T*K, d] sorted by expert
    w = jax.tree.map(lambda a: a.astype(x.dtype), params)
    up = jax.lax.ragged_dot(rows, w["up"], sizes)
    if activation == "swiglu":
        h = jax.nn.silu(jax.lax.ragged_dot(rows, w["gate"], sizes)) * up
    elif activation == "gelu":
        h = jax.nn.gelu(up)
    else:
        raise ValueError(f"ragged back-end: unknown activation {activation!r}")
    y = jax.lax.ragged_dot(h, w["down"], sizes)  # [T*K, d_out]; rows past sum(sizes) are zero
    weight = route.weights.T.reshape(-1)[order].astype(y.dtype)
    return jnp.zeros((t, y.shape[-1]), y.dtype).at[order % t].add(y * weight[:, None])


BACKENDS = ("dense", "capacity", "dropless", "ragged")


def dispatch(backend: str, x: jax.Array, route: RouteOutput, expert_fn: ExpertFn, params: Any, *,
             capacity_factor: float = 1.25, capacity_k: float | None = None,
             block_size: int | None = None, activation: str = "swiglu") -> tuple[jax.Array, jax.Array]:
    """Run a back-end by name. Returns (y [T, d_out], dropped fraction [] (0 unless capacity)).

    `activation` only matters for "ragged", which needs the layer's matmul experts.
    """
    if backend == "dense":
        return dense(x, route, expert_fn, params), jnp.zeros((), jnp.float32)
    if backend == "capacity":
        return capacity(x, route, expert_fn, params, capacity_factor=capacity_factor, k=capacity_k)
    if backend == "dropless":
        return dropless(x, route, expert_fn, params, block_size=block_size), jnp.zeros((), jnp.float32)
    if backend == "ragged":
        return ragged(x, route, params, activation), jnp.zeros((), jnp.float32)
    raise ValueError(f"unknown dispatch back-end {backend!r}; choose from {BACKENDS}")
