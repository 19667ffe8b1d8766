"""Dispatch back-ends: run the routed experts and combine their outputs.

Every back-end computes, for tokens x [T, d] (T may be 0) and a RouteOutput with K slots,

    y[t] = sum_{slots j valid} weights[t, j] * expert_{ids[t, j]}(x[t])

with `expert_fn(params_e, x_rows [n, d]) -> [n, d_out]` written for ONE expert and
`params` holding all experts stacked on a leading axis [E, ...] (or, for any back-end, split into a
tuple of E per-expert pytrees, `psec_jax.moe.grouped.split_experts`: `dropless` uses each expert's
own arrays then, the others stack them).

- `dense`: every expert on every token, masked combine. Cost E x; a reference for small E.
- `capacity`: GShard-style buffers [E, C, d] with C = ceil(capacity_factor * T * k / E);
  assignments beyond an expert's capacity are dropped (priority: slot 0 of every token first,
  then slot 1, ...; tokens in order), the dropped fraction is reported.
- `dropless`: sort the assignments by expert and run each expert on exactly its rows, in blocks
  (`psec_jax.moe.grouped`: loops over static shapes, since XLA on CPU has no grouped matmul).
  Nothing is dropped.
- `ragged`: the same sort, then grouped matmuls (`psec_jax.kernels.gmm`: megablox, tokamax, MKL
  ("blas", the fast CPU path) or `lax.ragged_dot`; only for the layer's matmul experts), in passes
  of at most ~T * saved_slots sorted rows.
- `expert_parallel`: experts sharded over the mesh's `expert` axis, tokens exchanged by `all_to_all`
  in fixed-capacity buffers, as `capacity` per device (`psec_jax.moe.expert_parallel`).
- `loop_reference`: the official code's Python loop over experts (eager, concrete routing);
  the test reference.

`BACKENDS` is the table of them by name (`MoEConfig.backend`); `dispatch` runs the configured one.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from psec_jax.kernels import gmm
from psec_jax.moe.expert_parallel import expert_parallel
from psec_jax.moe.grouped import ExpertFn, capacity_of, expert_params, stack_experts
from psec_jax.moe.grouped import check_dispatch_inputs as _check
from psec_jax.moe.grouped import dropless as _dropless
from psec_jax.routing import RouteOutput, sort_assignments


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
        y = expert_fn(expert_params(params, e), x[tok]) * route.weights[tok, slot][:, None].astype(x.dtype)
        out = jnp.zeros((x.shape[0], y.shape[-1]), y.dtype) if out is None else out
        out = out.at[tok].add(y)
    if out is None:  # no valid slot at all cannot happen with the routers here
        raise ValueError("route has no valid assignment")
    return out


def dense(x: jax.Array, route: RouteOutput, expert_fn: ExpertFn, params: Any) -> jax.Array:
    """All experts on all tokens ([E, T, d_out] intermediate), combined with the route weights."""
    _check(x, route, params)
    y = jax.vmap(expert_fn, in_axes=(0, None))(stack_experts(params), x)  # [E, T, d_out]
    return jnp.einsum("te,etd->td", route.combine_weights().astype(y.dtype), y)


def capacity(
    x: jax.Array,
    route: RouteOutput,
    expert_fn: ExpertFn,
    params: Any,
    *,
    capacity_factor: float = 1.25,
    k: float | None = None,
) -> tuple[jax.Array, jax.Array]:
    """GShard-style capacity dispatch. Returns (y [T, d_out], dropped fraction [] of assignments).

    k: experts per token used to size the buffers (default: the route's slot count; pass the
    expected mean for top-p routes, whose slot count is max_k). Buffer slot (e, c) holds the c-th
    assignment of expert e in priority order; the gathers and the combine touch E*C rows, not
    T*K, so top-p's many empty slots cost nothing.
    """
    _check(x, route, params)
    params = stack_experts(params)
    if x.shape[0] == 0:  # nothing to buffer: the (empty) dense result, nothing dropped
        return dense(x, route, expert_fn, params), jnp.zeros((), jnp.float32)
    t, e = x.shape[0], route.num_experts
    cap = capacity_of(t, e, capacity_factor, route.num_slots if k is None else k)
    s = sort_assignments(route)
    c = jnp.arange(cap)
    keep = c[None, :] < s.sizes[:, None]  # [E, C]
    assign = s.order[jnp.minimum(s.starts[:, None] + c[None, :], s.order.shape[0] - 1)]  # [E, C]
    token = assign % t
    y = jax.vmap(expert_fn)(params, x[token])  # [E, C, d_out]
    w = jnp.where(keep, route.weights.T.reshape(-1)[assign], 0.0).astype(y.dtype)
    out = jnp.zeros((t, y.shape[-1]), y.dtype).at[token.reshape(-1)].add((y * w[..., None]).reshape(e * cap, -1))
    total = s.sizes.sum()
    dropped = (total - keep.sum()) / jnp.maximum(total, 1)
    return out, dropped.astype(jnp.float32)


def dropless(
    x: jax.Array,
    route: RouteOutput,
    expert_fn: ExpertFn,
    params: Any,
    *,
    block_size: int | None = None,
    saved_slots: float | None = 4.0,
) -> jax.Array:
    """Sort-by-expert grouped dispatch, nothing dropped (`psec_jax.moe.grouped.dropless`).

    params: stacked ([E, ...] leaves) or split (`psec_jax.moe.grouped.split_experts`: a tuple of E
    per-expert pytrees, the fastest layout on XLA:CPU; gradients come back in the same layout)."""
    _check(x, route, params)
    if x.shape[0] == 0:  # no blocks to plan: the (empty) dense result
        return dense(x, route, expert_fn, params)
    return _dropless(x, route, expert_fn, params, block_size=block_size, saved_slots=saved_slots)


def _window(sizes: jax.Array, lo: jax.Array, n: int) -> jax.Array:
    """[E] row counts of each group among sorted positions lo, ..., lo + n - 1 (groups in order)."""
    ends = jnp.cumsum(sizes)
    return jnp.clip(jnp.minimum(ends, lo + n) - jnp.maximum(ends - sizes, lo), 0).astype(jnp.int32)


def _ragged_pass(activation, impl, n, params, x, token, weight, sizes, lo):
    """y [T, d_out] of the assignments at sorted positions lo, ..., lo + n - 1 (token [T*K + n] and
    weight [T*K + n] in sorted order, padded so the slices never clamp)."""
    tok = jax.lax.dynamic_slice_in_dim(token, lo, n)
    w = jax.lax.dynamic_slice_in_dim(weight, lo, n)
    mm = functools.partial(gmm.grouped_matmul, group_sizes=_window(sizes, lo, n), impl=impl)
    rows = x[tok]
    up = mm(rows, params["up"])
    if activation == "swiglu":
        h = jax.nn.silu(mm(rows, params["gate"])) * up
    elif activation == "gelu":
        h = jax.nn.gelu(up)
    else:
        raise ValueError(f"ragged back-end: unknown activation {activation!r}")
    y = mm(h, params["down"])  # [n, d_out]; rows past the window's groups are zero
    return jnp.zeros((x.shape[0], y.shape[-1]), y.dtype).at[tok].add(y * w[:, None].astype(y.dtype))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _ragged_passes(activation, impl, n, params, x, token, weight, sizes):
    return _ragged_passes_fwd(activation, impl, n, params, x, token, weight, sizes)[0]


def _later_passes(n: int, token: jax.Array, sizes: jax.Array) -> tuple[bool, jax.Array]:
    """Whether a second pass can be needed (static), and the number of passes (dynamic)."""
    return token.shape[0] > 2 * n, (jnp.sum(sizes) + n - 1) // n


def _ragged_passes_fwd(activation, impl, n, params, x, token, weight, sizes):
    run = functools.partial(_ragged_pass, activation, impl, n)
    y, first_vjp = jax.vjp(lambda p, x, w: run(p, x, token, w, sizes, 0), params, x, weight)
    maybe, passes = _later_passes(n, token, sizes)
    if maybe:
        y = jax.lax.fori_loop(1, passes, lambda j, y: y + run(params, x, token, weight, sizes, j * n), y)
    return y, (first_vjp, params, x, token, weight, sizes)


def _ragged_passes_bwd(activation, impl, n, res, dy):
    first_vjp, params, x, token, weight, sizes = res
    grads = first_vjp(dy)  # the first pass's activations were kept; later passes recompute theirs
    maybe, passes = _later_passes(n, token, sizes)
    if maybe:

        def more(j, grads):
            vjp = jax.vjp(
                lambda p, x, w: _ragged_pass(activation, impl, n, p, x, token, w, sizes, j * n), params, x, weight
            )[1]
            return jax.tree.map(jnp.add, grads, vjp(dy))

        grads = jax.lax.fori_loop(1, passes, more, grads)
    d_params, d_x, d_weight = grads
    float0 = lambda a: np.zeros(a.shape, jax.dtypes.float0)
    return d_params, d_x, float0(token), d_weight, float0(sizes)


_ragged_passes.defvjp(_ragged_passes_fwd, _ragged_passes_bwd)


def ragged(
    x: jax.Array,
    route: RouteOutput,
    params: dict[str, jax.Array],
    activation: str = "swiglu",
    grouped_matmul: str = "auto",
    saved_slots: float | None = 4.0,
) -> jax.Array:
    """Dropless dispatch with grouped matmuls (`psec_jax.kernels.gmm`).

    Only for the matmul experts of `psec_jax.moe.layer` (params "up", "down" and, for SwiGLU,
    "gate"). Sorts all T*K slots by expert (invalid slots last, in no group) and runs the valid ones
    in passes of n = min(T*K, max(T, ceil(T * saved_slots))) sorted rows (None: T*K, one pass): the
    first pass keeps its activations for the backward pass, later ones (only when more than n
    assignments are valid, e.g. a top-p route with many experts per token) recompute theirs. So a
    top-p route with max_k=None costs buffers of n rows, not T*E. `grouped_matmul`: "auto" (megablox
    on TPU, tokamax on GPU, MKL's "blas" on CPU for float32, each when installed, else
    `lax.ragged_dot`, a dense masked matmul over all experts on CPU and GPU), or one by name.
    """
    _check(x, route, params)
    params = stack_experts(params)
    t = x.shape[0]
    if t == 0:
        return jnp.zeros((0, params["down"].shape[-1]), x.dtype)
    order, sizes, _ = sort_assignments(route)
    slots = order.shape[0]
    n = slots if saved_slots is None else min(slots, -(-max(t, math.ceil(t * saved_slots)) // 8) * 8)
    pad = jnp.zeros((n,), jnp.int32)
    token = jnp.concatenate([order % t, pad])
    weight = jnp.concatenate([route.weights.T.reshape(-1)[order], pad.astype(route.weights.dtype)])
    w = jax.tree.map(lambda a: a.astype(x.dtype), params)
    return _ragged_passes(activation, grouped_matmul, n, w, x, token, weight, sizes)


Dropped = jax.Array  # [] float32, the fraction of assignments a back-end dropped (0 unless it has buffers)
# (x, route, expert_fn, params, config: a `psec_jax.moe.MoEConfig`, which imports this table, so `Any` here)
RunFn = Callable[[jax.Array, RouteOutput, ExpertFn, Any, Any], tuple[jax.Array, Dropped]]


@dataclasses.dataclass(frozen=True)
class Backend:
    """A dispatch back-end and what its callers need to know about it."""

    run: RunFn  # (x [T, d], route, expert_fn, params, config) -> (y [T, d_out], dropped fraction [])
    mesh: bool = False  # needs a device mesh (`jax.set_mesh`)
    # a causal LM may use it: a token's output never depends on other tokens. Not capacity's, whose drops
    # depend on the whole batch; the LM gives expert_parallel buffers of every local token, so it drops nothing
    causal: bool = True


def _none_dropped(y: jax.Array) -> tuple[jax.Array, Dropped]:
    return y, jnp.zeros((), jnp.float32)


def _run_dense(x, route, expert_fn, params, config):
    return _none_dropped(dense(x, route, expert_fn, params))


def _run_capacity(x, route, expert_fn, params, config):
    return capacity(x, route, expert_fn, params, capacity_factor=config.capacity_factor, k=config.capacity_k)


def _run_dropless(x, route, expert_fn, params, config):
    return _none_dropped(
        dropless(x, route, expert_fn, params, block_size=config.block_size, saved_slots=config.saved_slots)
    )


def _run_ragged(x, route, expert_fn, params, config):
    return _none_dropped(ragged(x, route, params, config.activation, config.grouped_matmul, config.saved_slots))


def _run_expert_parallel(x, route, expert_fn, params, config):
    return expert_parallel(
        x,
        route,
        expert_fn,
        params,
        capacity_factor=config.capacity_factor,
        k=config.capacity_k,
        exchange=config.exchange,
    )


BACKENDS: dict[str, Backend] = {
    "dense": Backend(_run_dense),
    "capacity": Backend(_run_capacity, causal=False),
    "dropless": Backend(_run_dropless),
    "ragged": Backend(_run_ragged),  # the layer's matmul experts only
    "expert_parallel": Backend(_run_expert_parallel, mesh=True),
}


def dispatch(
    x: jax.Array, route: RouteOutput, expert_fn: ExpertFn, params: Any, config: Any
) -> tuple[jax.Array, jax.Array]:
    """Run the back-end that `config` (a `psec_jax.moe.MoEConfig`) names. Returns (y [T, d_out], dropped
    fraction [] (0 unless capacity or expert_parallel)).

    Of the config it reads the back-end options: `block_size` and `saved_slots` ("dropless"),
    `capacity_factor` and `capacity_k` ("capacity" and "expert_parallel", which needs a mesh, set by
    `jax.set_mesh`, and moves tokens by `exchange`; `psec_jax.moe.expert_parallel`), `activation`,
    `grouped_matmul` and `saved_slots` ("ragged", which needs the layer's matmul experts).
    """
    return BACKENDS[config.backend].run(x, route, expert_fn, params, config)
