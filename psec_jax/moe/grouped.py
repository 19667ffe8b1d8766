"""Dropless grouped dispatch for CPU: sort assignments by expert, run each expert on its own rows.

XLA on CPU has no grouped matmul (`jax.lax.ragged_dot` runs ~100x slower there than a dense
matmul), so this back-end loops: a `lax.scan` over experts takes each expert's stacked weights as a
scanned input (sliced, i.e. copied, once per expert; with the split layout of `split_experts` the
loop is unrolled over the experts' own arrays instead, which is faster on CPU), and for that expert

- a `lax.switch` runs the rows past its last full block once, in the smallest static size of
  `tail_sizes(block)` that holds them (a ladder of multiples of 8 growing by ~1.25x), so a group of
  170 rows costs a 192-row matmul, not a whole block; then
- a `lax.while_loop` runs its full blocks of `block` rows (trip count = its row count // block, so
  the loop follows the routing: no worst-case padding).

Each block gathers its rows of x, runs the expert function (written for one expert) and
scatter-adds the weighted result. A `custom_vjp` runs the same loops backwards and emits each
expert's weight gradient as a scan output, so no step touches more than one expert's weights. For
a `SplitExpert` (the layer's SwiGLU and GELU experts) the forward pass keeps each sorted row's
activations, up to `saved_slots` rows per token, so the backward pass needs no recomputation (9
matmuls per SwiGLU row in all, as autodiff of the loop would do, instead of 12); other experts and
rows past that budget are recomputed block by block. This is the block-sparse idea of MegaBlocks,
expressed as loops over static shapes.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from psec_jax.routing import RouteOutput, sort_assignments

ExpertFn = Callable[[Any, jax.Array], jax.Array]  # (params of one expert, x [n, d]) -> [n, d_out]

# Candidate tail sizes: multiples of 8 growing by 1.14-1.33x (waste <= 1/4, ~1/8 on average).
_LADDER = (
    8,
    16,
    24,
    32,
    40,
    48,
    56,
    64,
    80,
    96,
    112,
    128,
    160,
    192,
    224,
    256,
    320,
    384,
    448,
    512,
    640,
    768,
    896,
    1024,
    1280,
    1536,
    1792,
    2048,
)


@dataclasses.dataclass(frozen=True)
class SplitExpert:
    """An expert written as outer(p, inner(p, x)), e.g. inner = the input projections of an MLP.

    Called like any expert. `dropless` keeps inner's output (and the expert's output) for the
    sorted rows, so its backward pass does not recompute the expert; a plain function is
    recomputed block by block instead.
    """

    inner: Callable[[Any, jax.Array], Any]  # (params of one expert, x [n, d]) -> z: pytree of [n, ...]
    outer: Callable[[Any, Any], jax.Array]  # (params of one expert, z) -> y [n, d_out]

    def __call__(self, p: Any, x: jax.Array) -> jax.Array:
        return self.outer(p, self.inner(p, x))


def is_split(params: Any) -> bool:
    """Whether expert params are in the split layout: a tuple (or list) of E per-expert pytrees.

    So stacked expert params must not be a tuple or list at the top (the layer's are a dict)."""
    return isinstance(params, (tuple, list))


def expert_params(params: Any, e: jax.Array | int) -> Any:
    """The weights of expert e: from a pytree stacked on a leading expert axis, or the e-th entry
    of the split layout (e static there)."""
    if is_split(params):
        return params[e]
    return jax.tree.map(lambda w: w[e], params)


def split_experts(params: Any) -> tuple[Any, ...]:
    """Stacked expert params (leaves [E, ...]) -> the split layout: a tuple of E pytrees of [...].

    On XLA:CPU the split layout lets `dropless` hand each expert's own arrays to its matmuls and
    write its weight gradients in place; slicing the stacked arrays copies them (see dropless).
    """
    if is_split(params):
        return tuple(params)
    return tuple(expert_params(params, e) for e in range(num_experts(params)))


def stack_experts(params: Any) -> Any:
    """The split layout (E pytrees of [...]) -> one pytree of [E, ...] leaves (stacked unchanged)."""
    if not is_split(params):
        return params
    return jax.tree.map(lambda *ws: jnp.stack(ws), *params)


def capacity_of(num_tokens: int, num_experts: int, capacity_factor: float, k: float) -> int:
    """Static per-expert capacity ceil(capacity_factor * T * k / E) (at least 1) of a fixed-size buffer
    (the `capacity` back-end; `expert_parallel`, per device). ValueError for a capacity_factor or k that
    is not a finite number > 0 (a bool, NaN or 0 would quietly become capacity 1)."""
    for name, v in (("capacity_factor", capacity_factor), ("k", k)):
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or v <= 0:
            raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
    return max(1, math.ceil(capacity_factor * num_tokens * k / num_experts))


def default_block_size(num_tokens: int) -> int:
    """Rows per full block: 512 from T = 2048 tokens, else 256, or the power of two covering T when
    that is smaller.

    Every full block reads the expert's weights again and, in the backward pass, adds a weight-sized
    gradient; on this CPU a [512, 1024] x [1024, 2816] matmul also runs faster per row than a
    256-row one, and the layer's forward+backward at T=4096, E=16 (split layout) took 3.2-3.4 s with
    512-row blocks against 3.9-4.2 s with 256 (two probes, timed in turns). Below T = 2048 a group
    rarely fills 256 rows (at T = 1024, E = 16 the largest of the benchmark's was 189), so 512 would
    only lengthen the tail ladder (compile time) and pad each tail's outputs to twice the rows.
    Groups smaller than a block run once in a ladder-sized tail, and no group exceeds T rows (an
    expert takes a token at most once).
    """
    cap = 512 if num_tokens >= 2048 else 256
    return int(min(cap, 2 ** math.ceil(math.log2(max(8, num_tokens)))))


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


# A block: (at = sorted position of its first row, rows [n] token ids, assign [n] assignment ids,
#   valid [n] bool or None = all valid) -> (per_row: pytree of [n, ...] arrays, whole: pytree).
BlockFn = Callable[[jax.Array, jax.Array, jax.Array, jax.Array | None], tuple[Any, Any]]
# (carry, at, rows [block], assign [block], per_row padded to [block, ...], whole) -> carry
Accumulate = Callable[[Any, jax.Array, jax.Array, jax.Array, Any, Any], Any]


def _rows(buf: jax.Array, at: jax.Array, n: int) -> jax.Array:
    """Rows at, ..., at + n - 1 of buf (a sorted-order array padded so this never clamps)."""
    return jax.lax.dynamic_slice_in_dim(buf, at, n, 0)


def _over_blocks(plan: _Plan, e: jax.Array, block: int, block_fn: BlockFn, accumulate: Accumulate, carry: Any) -> Any:
    """Run `block_fn` on every block of expert e's rows (one ladder-sized tail first, then the full
    blocks) and fold the results into `carry` with `accumulate`.

    The tail goes first so that an accumulator can start from its result (the backward pass's
    weight gradient: no zero-filled expert-sized buffer, no extra add when one block suffices).
    The tail's `lax.switch` branches only compute; the carry is updated outside them, because XLA
    copies a buffer that a conditional branch updates in place.
    """
    start, n = plan.starts[e], plan.sizes[e]
    full = n // block

    def rows_at(at, size):
        return _rows(plan.token, at, size), _rows(plan.assignment, at, size)

    rem, at = n - full * block, start + full * block
    shapes = jax.eval_shape(block_fn, at, *rows_at(at, block), None)
    pad_to_block = lambda a: jnp.pad(a, [(0, block - a.shape[0])] + [(0, 0)] * (a.ndim - 1))

    def tail(size):
        def run():
            rows, assign = rows_at(at, size)
            per_row, whole = block_fn(at, rows, assign, jnp.arange(size) < rem)
            return jax.tree.map(pad_to_block, per_row), whole

        return run

    nothing = lambda: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    sizes = tail_sizes(block)
    index = jnp.where(rem == 0, 0, 1 + jnp.searchsorted(jnp.asarray(sizes), rem))
    per_row, whole = jax.lax.switch(index, [nothing] + [tail(s) for s in sizes])
    rows, assign = rows_at(at, block)  # beyond the tail: per_row is zero there
    carry = accumulate(carry, at, rows, assign, per_row, whole)

    def body(c):
        j, carry = c
        at = start + j * block
        rows, assign = rows_at(at, block)
        return j + 1, accumulate(carry, at, rows, assign, *block_fn(at, rows, assign, None))

    return jax.lax.while_loop(lambda c: c[0] < full, body, (jnp.int32(0), carry))[1]


def masked(valid: jax.Array | None, values: jax.Array) -> jax.Array:
    """values with the entries where `valid` (its leading dimensions; None = all valid) is False zeroed."""
    if valid is None:
        return values
    return jnp.where(valid.reshape(valid.shape + (1,) * (values.ndim - valid.ndim)), values, 0)


def check_dispatch_inputs(x: jax.Array, route: RouteOutput, params: Any = None) -> None:
    """ValueError naming the problem when tokens x are not [T, d], the route's token count differs
    from x's, or the expert params hold another number of experts than the route (every back-end)."""
    if x.ndim != 2:
        raise ValueError(f"dispatch expects tokens x of shape [T, d], got {x.shape}")
    if route.expert_ids.shape[0] != x.shape[0]:
        raise ValueError(f"route has {route.expert_ids.shape[0]} tokens but x has {x.shape[0]}")
    if params is not None:
        e = num_experts(params)
        if e != route.num_experts:
            raise ValueError(f"route has {route.num_experts} experts but the expert params hold {e}")


def num_experts(params: Any) -> int:
    """E of expert params, stacked ([E, ...] leaves) or split (a tuple of E pytrees)."""
    return len(params) if is_split(params) else jax.tree.leaves(params)[0].shape[0]


def _over_experts(
    per_expert: Callable[[Any, tuple[Any, jax.Array]], tuple[Any, Any]], carry: Any, params: Any
) -> tuple[Any, Any]:
    """`lax.scan` of per_expert((carry, (params of expert e, e))) over the experts; for the split
    layout, a loop unrolled at trace time over each expert's own arrays (outputs in that layout)."""
    if not is_split(params):
        return jax.lax.scan(per_expert, carry, (params, jnp.arange(num_experts(params))))
    outs = []
    for e, p_e in enumerate(params):
        carry, out = per_expert(carry, (p_e, jnp.int32(e)))
        outs.append(out)
    return carry, type(params)(outs)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _grouped(
    expert_fn: ExpertFn, block: int, saved_rows: int, params: Any, x: jax.Array, w_flat: jax.Array, plan: _Plan
) -> jax.Array:
    return _forward(expert_fn, block, 0, params, x, w_flat, plan)[0]  # no gradient: save nothing


def _forward(expert_fn, block, saved_rows, params, x, w_flat, plan):
    """y [T, d_out] and, when saved_rows > 0, the buffers the backward pass reads: for sorted
    positions < saved_rows, the expert's inner output z and its unweighted output y
    (`[saved_rows + block, ...]`; blocks starting past saved_rows write into the last `block`
    rows, which are never read)."""
    xr0 = x[:block]
    d_out = jax.eval_shape(expert_fn, expert_params(params, 0), xr0).shape[-1]
    saved = None
    if saved_rows:
        z_shapes = jax.eval_shape(expert_fn.inner, expert_params(params, 0), xr0)
        buf = lambda tail, dtype: jnp.zeros((saved_rows + block, *tail), dtype)
        saved = jax.tree.map(lambda s: buf(s.shape[1:], s.dtype), z_shapes), buf((d_out,), x.dtype)

    def per_expert(carry, inputs):
        p_e, e = inputs

        def block_fn(at, rows, assign, valid):
            w = w_flat[assign][:, None].astype(x.dtype)
            if not saved_rows:
                return (masked(valid, expert_fn(p_e, x[rows]) * w),), None
            z = expert_fn.inner(p_e, x[rows])
            y = expert_fn.outer(p_e, z)
            return (masked(valid, y * w), z, y), None

        def add(carry, at, rows, assign, per_row, _):
            out, saved = carry
            out = out.at[rows].add(per_row[0])
            if saved_rows:
                pos = jnp.minimum(at, saved_rows)
                write = lambda b, v: jax.lax.dynamic_update_slice_in_dim(b, v.astype(b.dtype), pos, 0)
                saved = jax.tree.map(write, saved, per_row[1:])
            return out, saved

        return _over_blocks(plan, e, block, block_fn, add, carry), None

    out0 = jnp.zeros((x.shape[0], d_out), x.dtype)
    (out, saved), _ = _over_experts(per_expert, (out0, saved), params)
    return out, saved


def _grouped_fwd(expert_fn, block, saved_rows, params, x, w_flat, plan):
    out, saved = _forward(expert_fn, block, saved_rows, params, x, w_flat, plan)
    return out, (params, x, w_flat, plan, saved)


def _grouped_bwd(expert_fn, block, saved_rows, res, g):
    params, x, w_flat, plan, saved = res
    num_rows = plan.token.shape[0] - block  # T*K sorted positions

    def per_expert(carry, inputs):
        p_e, e = inputs

        def recompute(at, rows, assign, valid):
            y, vjp = jax.vjp(expert_fn, p_e, x[rows])
            g_rows = masked(valid, g[rows])
            dpe, dxb = vjp(g_rows * w_flat[assign][:, None].astype(y.dtype))
            return (masked(valid, dxb), jnp.sum(g_rows * y, -1).astype(w_flat.dtype)), dpe

        def from_saved(at, rows, assign, valid):
            n = rows.shape[0]
            z, y = jax.tree.map(lambda b: _rows(b, at, n), saved)
            g_rows = masked(valid, g[rows])
            # the primal outputs of these vjps are unused, so XLA drops their matmuls
            dp_out, dz = jax.vjp(expert_fn.outer, p_e, z)[1](g_rows * w_flat[assign][:, None].astype(g.dtype))
            dp_in, dxb = jax.vjp(expert_fn.inner, p_e, x[rows])[1](dz)
            dwb = jnp.sum(g_rows * y.astype(g.dtype), -1).astype(w_flat.dtype)
            return (masked(valid, dxb), dwb), jax.tree.map(jnp.add, dp_out, dp_in)

        if not saved_rows:
            block_fn = recompute
        elif saved_rows >= num_rows:
            block_fn = from_saved
        else:
            block_fn = lambda at, rows, assign, valid: jax.lax.cond(
                at + rows.shape[0] <= saved_rows, from_saved, recompute, at, rows, assign, valid
            )

        def add(c, at, rows, assign, per_row, dpe):
            dp, dx, dw = c
            dxb, dwb = per_row
            dp = dpe if dp is None else jax.tree.map(jnp.add, dp, dpe)  # the tail's gradient starts it
            return dp, dx.at[rows].add(dxb), dw.at[assign].add(dwb)

        dp, dx, dw = _over_blocks(plan, e, block, block_fn, add, (None, *carry))
        return (dx, dw), dp

    (dx, dw), dparams = _over_experts(per_expert, (jnp.zeros_like(x), jnp.zeros_like(w_flat)), params)
    zero_ints = jax.tree.map(lambda a: np.zeros(a.shape, jax.dtypes.float0), plan)
    return dparams, dx, dw, zero_ints


_grouped.defvjp(_grouped_fwd, _grouped_bwd)


def dropless(
    x: jax.Array,
    route: RouteOutput,
    expert_fn: ExpertFn,
    params: Any,
    *,
    block_size: int | None = None,
    saved_slots: float | None = 4.0,
) -> jax.Array:
    """y [T, d_out] = sum over valid slots of weight * expert(x); nothing dropped (module docstring).

    block_size: rows per full block (default `default_block_size`); partial blocks use `tail_sizes`.
    saved_slots: for a `SplitExpert`, how many sorted rows per token (T * saved_slots in all, at most
      T*K) keep their activations for the backward pass; rows past them are recomputed there. None
      keeps all T*K, 0 recomputes everything (least memory). Memory: T * saved_slots rows of the
      inner output plus the expert output (for SwiGLU, 2 d_ff + d floats a row).
    """
    block = block_size or default_block_size(x.shape[0])
    tail_sizes(block)
    num_rows = route.expert_ids.size
    if saved_slots is not None and saved_slots < 0:
        raise ValueError(f"saved_slots must be >= 0 or None, got {saved_slots}")
    saved_rows = 0
    if isinstance(expert_fn, SplitExpert):
        saved_rows = num_rows if saved_slots is None else min(num_rows, math.ceil(x.shape[0] * saved_slots))
    w_flat = route.weights.T.reshape(-1)  # slot-major, matches the assignment numbering
    return _grouped(expert_fn, block, saved_rows, params, x, w_flat, _plan(route, block))
