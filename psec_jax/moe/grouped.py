"""Dropless grouped dispatch for CPU: sort assignments by expert, run each expert on its own rows.

XLA on CPU has no grouped matmul (`jax.lax.ragged_dot` runs ~100x slower there than a dense
matmul), so this back-end loops: a `lax.scan` over experts takes each expert's stacked weights as a
scanned input (sliced once per expert), and for that expert

- a `lax.while_loop` runs its full blocks of `block` rows (trip count = its row count // block, so
  the loop follows the routing: no worst-case padding), then
- a `lax.switch` runs the remaining rows once, in the smallest static size of `tail_sizes(block)`
  that holds them (a ladder of multiples of 8 growing by ~1.25x), so a group of 170 rows costs a
  192-row matmul, not a whole block.

Each block gathers its rows of x, runs the expert function (written for one expert) and
scatter-adds the weighted result. A `custom_vjp` recomputes each block in the backward pass and
emits each expert's weight gradient as a scan output, so no step touches more than one expert's
weights. This is the block-sparse idea of MegaBlocks, expressed as loops over static shapes.
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

# Candidate tail sizes: multiples of 8 growing by 1.14-1.33x (waste <= 1/4, ~1/8 on average).
_LADDER = (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384, 448, 512)


def expert_params(params: Any, e: jax.Array | int) -> Any:
    """The weights of expert e from a pytree stacked on a leading expert axis."""
    return jax.tree.map(lambda w: w[e], params)


class Sorted(NamedTuple):
    """The route's (token, slot) assignments stably sorted by expert (int32 arrays).

    Assignment a = j * T + t is slot j of token t (slot-major, so sorting keeps every token's
    slot 0 ahead of any slot 1 within an expert); invalid slots sort last, in no group.
    """

    order: jax.Array  # [T*K] assignment at each sorted position
    sizes: jax.Array  # [E] valid assignments per expert
    starts: jax.Array  # [E] first sorted position of each expert's group


def sort_assignments(route: RouteOutput) -> Sorted:
    """Sort the valid (token, slot) assignments of a route by expert (see `Sorted`)."""
    e = route.num_experts
    ids = jnp.where(route.mask, route.expert_ids, e).T.reshape(-1)  # [K*T], slot-major
    order = jnp.argsort(ids, stable=True).astype(jnp.int32)
    sizes = jnp.bincount(ids, length=e + 1)[:e].astype(jnp.int32)
    return Sorted(order, sizes, (jnp.cumsum(sizes) - sizes).astype(jnp.int32))


def default_block_size(num_tokens: int, num_experts: int, slots_per_token: float = 2.0) -> int:
    """Rows per full block: a power of two covering 1.5x the mean group size, in [8, 256].

    256 rows already run a matmul at full speed here; smaller groups are served by the tail ladder.
    """
    mean_rows = max(1.0, 1.5 * num_tokens * slots_per_token / num_experts)
    return int(min(256, max(8, 2 ** math.ceil(math.log2(mean_rows)))))


def tail_sizes(block: int) -> tuple[int, ...]:
    """Static row counts the last partial block of a group may be run with (ascending, ends at block)."""
    if block < 1:
        raise ValueError(f"block_size must be >= 1, got {block}")
    return tuple(s for s in _LADDER if s < block) + (block,)


class _Plan(NamedTuple):
    token: jax.Array  # [T*K + block] token of each sorted assignment (padded)
    assignment: jax.Array  # [T*K + block] slot-major assignment id of each sorted position (padded)
    starts: jax.Array  # [E]
    sizes: jax.Array  # [E]


def _plan(route: RouteOutput, block: int) -> _Plan:
    s = sort_assignments(route)
    pad = jnp.zeros((block,), jnp.int32)  # dynamic_slice clamps at the end: pad so it never has to
    t = route.expert_ids.shape[0]
    return _Plan(jnp.concatenate([s.order % t, pad]), jnp.concatenate([s.order, pad]), s.starts, s.sizes)


# A block: (rows [n] token ids, assign [n] assignment ids, valid [n] bool or None = all valid)
#   -> (per_row: pytree of [n, ...] arrays, whole: pytree). `_over_blocks` pads per_row to the block.
BlockFn = Callable[[jax.Array, jax.Array, jax.Array | None], tuple[Any, Any]]
# (carry, rows [block], assign [block], per_row, whole) -> carry
Accumulate = Callable[[Any, jax.Array, jax.Array, Any, Any], Any]


def _over_blocks(plan: _Plan, e: jax.Array, block: int, block_fn: BlockFn, accumulate: Accumulate,
                 carry: Any) -> Any:
    """Run `block_fn` on every block of expert e's rows (full blocks, then one ladder-sized tail)
    and fold the results into `carry` with `accumulate`.

    The tail's `lax.switch` branches only compute; the carry is updated outside them, because XLA
    copies a buffer that a conditional branch updates in place.
    """
    start, n = plan.starts[e], plan.sizes[e]
    full = n // block

    def rows_at(offset, size):
        at = (start + offset,)
        return (jax.lax.dynamic_slice(plan.token, at, (size,)),
                jax.lax.dynamic_slice(plan.assignment, at, (size,)))

    def body(c):
        j, carry = c
        rows, assign = rows_at(j * block, block)
        return j + 1, accumulate(carry, rows, assign, *block_fn(rows, assign, None))

    _, carry = jax.lax.while_loop(lambda c: c[0] < full, body, (jnp.int32(0), carry))
    rem = n - full * block
    shapes = jax.eval_shape(block_fn, *rows_at(0, block), None)
    pad_to_block = lambda a: jnp.pad(a, [(0, block - a.shape[0])] + [(0, 0)] * (a.ndim - 1))

    def tail(size):
        def run():
            rows, assign = rows_at(full * block, size)
            per_row, whole = block_fn(rows, assign, jnp.arange(size) < rem)
            return jax.tree.map(pad_to_block, per_row), whole
        return run

    nothing = lambda: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    sizes = tail_sizes(block)
    index = jnp.where(rem == 0, 0, 1 + jnp.searchsorted(jnp.asarray(sizes), rem))
    per_row, whole = jax.lax.switch(index, [nothing] + [tail(s) for s in sizes])
    rows, assign = rows_at(full * block, block)  # beyond the tail: per_row is zero there
    return accumulate(carry, rows, assign, per_row, whole)


def _masked(valid: jax.Array | None, values: jax.Array) -> jax.Array:
    if valid is None:
        return values
    return jnp.where(valid.reshape(valid.shape + (1,) * (values.ndim - 1)), values, 0)


def _num_experts(params: Any) -> int:
    return jax.tree.leaves(params)[0].shape[0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _grouped(expert_fn: ExpertFn, block: int, params: Any, x: jax.Array, w_flat: jax.Array,
             plan: _Plan) -> jax.Array:
    return _grouped_fwd(expert_fn, block, params, x, w_flat, plan)[0]


def _grouped_fwd(expert_fn, block, params, x, w_flat, plan):
    d_out = jax.eval_shape(expert_fn, expert_params(params, 0), x[:1]).shape[-1]

    def per_expert(out, inputs):
        p_e, e = inputs

        def block_fn(rows, assign, valid):
            y = expert_fn(p_e, x[rows]) * w_flat[assign][:, None].astype(x.dtype)
            return _masked(valid, y), None

        add = lambda out, rows, assign, y, _: out.at[rows].add(y)
        return _over_blocks(plan, e, block, block_fn, add, out), None

    out0 = jnp.zeros((x.shape[0], d_out), x.dtype)
    out, _ = jax.lax.scan(per_expert, out0, (params, jnp.arange(_num_experts(params))))
    return out, (params, x, w_flat, plan)


def _grouped_bwd(expert_fn, block, res, g):
    params, x, w_flat, plan = res

    def per_expert(carry, inputs):
        p_e, e = inputs

        def block_fn(rows, assign, valid):
            y, vjp = jax.vjp(expert_fn, p_e, x[rows])  # recompute this block's forward
            g_rows = _masked(valid, g[rows])
            dpe, dxb = vjp(g_rows * w_flat[assign][:, None].astype(y.dtype))
            return (_masked(valid, dxb), jnp.sum(g_rows * y, -1).astype(w_flat.dtype)), dpe

        def add(c, rows, assign, per_row, dpe):
            dp, dx, dw = c
            dxb, dwb = per_row
            return jax.tree.map(jnp.add, dp, dpe), dx.at[rows].add(dxb), dw.at[assign].add(dwb)

        init = (jax.tree.map(jnp.zeros_like, p_e), *carry)
        dp, dx, dw = _over_blocks(plan, e, block, block_fn, add, init)
        return (dx, dw), dp

    (dx, dw), dparams = jax.lax.scan(per_expert, (jnp.zeros_like(x), jnp.zeros_like(w_flat)),
                                     (params, jnp.arange(_num_experts(params))))
    zero_ints = jax.tree.map(lambda a: np.zeros(a.shape, jax.dtypes.float0), plan)
    return dparams, dx, dw, zero_ints


_grouped.defvjp(_grouped_fwd, _grouped_bwd)


def dropless(x: jax.Array, route: RouteOutput, expert_fn: ExpertFn, params: Any, *,
             block_size: int | None = None) -> jax.Array:
    """y [T, d_out] = sum over valid slots of weight * expert(x); nothing dropped (module docstring).

    block_size: rows per full block (default `default_block_size`); partial blocks use `tail_sizes`.
    """
    block = block_size or default_block_size(x.shape[0], route.num_experts)
    tail_sizes(block)
    w_flat = route.weights.T.reshape(-1)  # slot-major, matches the assignment numbering
    return _grouped(expert_fn, block, params, x, w_flat, _plan(route, block))
