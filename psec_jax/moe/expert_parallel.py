"""Expert parallelism: experts sharded over a mesh axis, tokens exchanged by `all_to_all`.

    mesh = psec_jax.parallel.make_mesh({"data": 2, "expert": 4})
    with jax.set_mesh(mesh):
        y, aux, stats = moe_apply(params, x, backend="expert_parallel")   # under jit or not

Inside `jax.shard_map`, each device holds its tokens (sharded over every token axis of the mesh:
data, fsdp, expert) and E / n experts (n = the expert axis's size). Per device, as the `capacity`
back-end does for one device:

1. sort its (token, slot) assignments by expert and fill a buffer [E, C, d] (slot (e, c) = the c-th
   assignment of expert e, in priority order; assignments past C are dropped), C = ceil(capacity_factor
   * T_local * k / E);
2. `all_to_all` over the expert axis: device j receives, from every device, the rows for its experts
   ([n sources, E/n, C, d]);
3. run its experts (vmapped over its E/n experts, rows of all sources together);
4. `all_to_all` back and combine each row into its token with its routing weight.

Fixed-capacity buffers, because XLA:CPU has no `ragged_all_to_all`; with capacity_factor >= E / k no
assignment can be dropped (C >= T_local), and the result equals the single-device layer. The routing
itself (and the aux losses) stays outside, in the global view the SPMD partitioner shards.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from psec_jax.moe.grouped import ExpertFn, capacity_of, check_dispatch_inputs, sort_assignments, stack_experts
from psec_jax.moe.routing import RouteOutput

TOKEN_AXES = ("data", "fsdp", "expert")  # mesh axes the tokens are sharded over (those the mesh has)


def _local(x: jax.Array, ids: jax.Array, weights: jax.Array, mask: jax.Array, params: Any, *, expert_fn: ExpertFn,
           num_experts_total: int, capacity_factor: float, k: float, axis: str, n: int, token_axes: tuple[str, ...]):
    """One device's share: x [t, d], ids / weights / mask [t, K], params [E/n, ...] -> (y [t, d_out],
    kept, total) with kept / total the assignment counts summed over the token axes; n = the size
    of the expert axis."""
    t, e = x.shape[0], num_experts_total
    cap = capacity_of(t, e, capacity_factor, k)
    route = RouteOutput(ids, weights, mask, mask.sum(-1), jnp.zeros((t, e), jnp.float32),
                        jnp.zeros((t, e), jnp.float32), jnp.zeros((t,), bool))
    s = sort_assignments(route)
    c = jnp.arange(cap)
    keep = c[None, :] < s.sizes[:, None]  # [E, C]
    assign = s.order[jnp.minimum(s.starts[:, None] + c[None, :], s.order.shape[0] - 1)]  # [E, C]
    token = assign % t
    send = jnp.where(keep[..., None], x[token], 0).reshape(n, e // n, cap, x.shape[-1])
    recv = jax.lax.all_to_all(send, axis, 0, 0)  # [n sources, E/n, C, d]
    rows = jnp.swapaxes(recv, 0, 1).reshape(e // n, n * cap, x.shape[-1])
    y = jax.vmap(expert_fn)(params, rows)  # [E/n, n*C, d_out]
    y = jnp.swapaxes(y.reshape(e // n, n, cap, -1), 0, 1)  # [n, E/n, C, d_out]
    back = jax.lax.all_to_all(y, axis, 0, 0).reshape(e, cap, -1)  # [E, C, d_out]: this device's rows
    w = jnp.where(keep, weights.T.reshape(-1)[assign], 0.0).astype(back.dtype)
    out = jnp.zeros((t, back.shape[-1]), back.dtype).at[token.reshape(-1)].add((back * w[..., None]).reshape(e * cap, -1))
    total = jax.lax.psum(s.sizes.sum(), token_axes)
    kept = jax.lax.psum(keep.sum(), token_axes)
    return out, kept, total


def expert_parallel(x: jax.Array, route: RouteOutput, expert_fn: ExpertFn, params: Any, *,
                    capacity_factor: float = 1.25, k: float | None = None, axis: str = "expert",
                    token_axes: Sequence[str] = TOKEN_AXES, mesh: jax.sharding.Mesh | None = None
                    ) -> tuple[jax.Array, jax.Array]:
    """Expert-parallel dispatch (module docstring). Returns (y [T, d_out], dropped fraction []).

    x [T, d] and the route's [T, K] arrays are split over `token_axes` (those the mesh has: T must
    divide by the product of their sizes); the expert params (stacked [E, ...] or split) over `axis`
    (E must divide by its size). k sizes the buffers as in `capacity` (default the route's slot count).
    mesh: default the one set by `jax.set_mesh` (an error names the problem when there is none).
    """
    check_dispatch_inputs(x, route, params)
    e = route.num_experts
    mesh = mesh if mesh is not None else jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty:
        raise ValueError("expert_parallel dispatch needs a device mesh: pass mesh=... or call it under "
                         "jax.set_mesh(mesh) (see psec_jax.parallel.make_mesh)")
    if axis not in mesh.axis_names:
        raise ValueError(f"the mesh has no expert axis {axis!r}; its axes are {mesh.axis_names}")
    n = mesh.shape[axis]
    if e % n:
        raise ValueError(f"{e} experts do not split over the {axis!r} axis of size {n}")
    tok = tuple(a for a in token_axes if a in mesh.axis_names)
    shards = math.prod(mesh.shape[a] for a in tok)
    if x.shape[0] % shards:
        raise ValueError(f"{x.shape[0]} tokens do not split over the token axes {tok} ({shards} shards)")
    params = stack_experts(params)
    local = functools.partial(_local, expert_fn=expert_fn, num_experts_total=e, capacity_factor=capacity_factor,
                              k=route.num_slots if k is None else k, axis=axis, n=n, token_axes=tok)
    rows = P(tok)
    fn = jax.shard_map(local, mesh=mesh, in_specs=(rows, rows, rows, rows, P(axis)), out_specs=(rows, P(), P()))
    y, kept, total = fn(x, route.expert_ids, route.weights, route.mask, params)
    return y, ((total - kept) / jnp.maximum(total, 1)).astype(jnp.float32)
