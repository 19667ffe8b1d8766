"""Expert parallelism: experts sharded over a mesh axis, tokens exchanged by `all_to_all`.

    mesh = psec_jax.parallel.make_mesh({"data": 2, "expert": 4})
    with jax.set_mesh(mesh):
        y, aux, stats = moe_apply(params, x, MoEConfig(backend="expert_parallel"))   # under jit or not

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

With capacity_factor >= E / k no assignment can be dropped (C >= T_local), and the result equals the
single-device layer. The routing itself (and the aux losses) stays outside, in the global view the
SPMD partitioner shards.

`exchange="ragged"` sends each expert's rows as one slice of `jax.lax.ragged_all_to_all` instead:
no padding on the wire and nothing dropped. Each device sorts its assignments by expert (one slice
per expert, slice e to device e // (E/n)); the per-expert counts of every device (an all_gather of
E integers) give where each slice lands, so the receiver's buffer comes out grouped by its local
experts (source-major within an expert) and runs through the `dropless` grouped loop; the results
travel back by the mirror-image exchange. The receive buffer is static: n * T_local * min(K, E/n)
rows, the most a device can be sent. XLA:CPU has no `ragged_all_to_all` ("UNIMPLEMENTED" at compile
time), so `exchange="auto"` takes the ragged path only where a probe compile of the collective
succeeds and the fixed-capacity configuration could not drop anything (the two then compute the
same function); `"ragged_emulated"` runs the ragged algorithm with the collective emulated by a
padded `all_to_all` (`ragged_all_to_all_emulated`: memory K * rows, for testing on CPU).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from psec_jax.moe.grouped import ExpertFn, capacity_of, check_dispatch_inputs, dropless, masked, stack_experts
from psec_jax.routing import RouteOutput, sort_assignments

TOKEN_AXES = ("data", "fsdp", "expert")  # mesh axes the tokens are sharded over (those the mesh has)
EXCHANGES = ("auto", "capacity", "ragged", "ragged_emulated")


def ragged_all_to_all_emulated(
    operand: jax.Array,
    output: jax.Array,
    input_offsets: jax.Array,
    send_sizes: jax.Array,
    output_offsets: jax.Array,
    recv_sizes: jax.Array,
    *,
    axis_name: str,
) -> jax.Array:
    """`jax.lax.ragged_all_to_all` (same arguments and result, see its docstring) built from a padded
    `all_to_all`: every one of the K slices travels as operand.shape[0] rows. For backends without the
    collective (XLA:CPU), to run and test the ragged algorithm; memory K * operand rows."""
    k, rows = input_offsets.shape[0], operand.shape[0]
    n = jax.lax.axis_size(axis_name)
    if k % n:
        raise ValueError(f"{k} slices do not split over the {axis_name!r} axis of size {n}")
    r = jnp.arange(rows)
    src = jnp.minimum(input_offsets[:, None] + r[None], rows - 1)  # [K, rows]
    packed = masked(r[None] < send_sizes[:, None], operand[src])  # [K, rows, ...], zero past each slice
    recv = jax.lax.all_to_all(packed.reshape((n, k // n) + packed.shape[1:]), axis_name, 0, 0)
    recv = recv.reshape((k * rows,) + operand.shape[1:])
    at = jax.lax.all_to_all(output_offsets, axis_name, 0, 0, tiled=True)  # where my received slices go
    dest = jnp.where(r[None] < recv_sizes[:, None], at[:, None] + r[None], output.shape[0])  # past the end: dropped
    return output.at[dest.reshape(-1)].set(recv, mode="drop")


@functools.cache
def ragged_supported(platform: str) -> bool:
    """Whether `jax.lax.ragged_all_to_all` compiles for `platform` (a probe on up to 2 of its devices;
    cached). False on XLA:CPU."""
    devices = jax.devices(platform)[:2]
    mesh = jax.sharding.Mesh(np.array(devices), ("probe",), axis_types=(jax.sharding.AxisType.Auto,))

    def probe(x):  # row j to device j, landing there at row (this device's index)
        n = len(devices)
        ones, rows = jnp.ones((n,), jnp.int32), jnp.arange(n, dtype=jnp.int32)
        at = jnp.full((n,), jax.lax.axis_index("probe"), jnp.int32)
        return jax.lax.ragged_all_to_all(x, jnp.zeros_like(x), rows, ones, at, ones, axis_name="probe")

    fn = jax.jit(jax.shard_map(probe, mesh=mesh, in_specs=P("probe"), out_specs=P("probe")))
    try:
        fn.lower(jax.ShapeDtypeStruct((len(devices) ** 2, 1), jnp.float32)).compile()
    except Exception:  # noqa: BLE001 - any lowering or compile failure means "not supported here"
        return False
    return True


def _route(ids: jax.Array, weights: jax.Array, mask: jax.Array, e: int) -> RouteOutput:
    """A RouteOutput carrying only what dispatch reads (ids, weights, mask) for E = e experts."""
    t = ids.shape[0]
    return RouteOutput(
        ids,
        weights,
        mask,
        mask.sum(-1),
        jnp.zeros((t, e), jnp.float32),
        jnp.zeros((t, e), jnp.float32),
        jnp.zeros((t,), bool),
    )


def _local(
    x: jax.Array,
    ids: jax.Array,
    weights: jax.Array,
    mask: jax.Array,
    params: Any,
    *,
    expert_fn: ExpertFn,
    num_experts_total: int,
    capacity_factor: float,
    k: float,
    axis: str,
    n: int,
    token_axes: tuple[str, ...],
):
    """One device's share: x [t, d], ids / weights / mask [t, K], params [E/n, ...] -> (y [t, d_out],
    kept, total) with kept / total the assignment counts summed over the token axes; n = the size
    of the expert axis."""
    t, e = x.shape[0], num_experts_total
    cap = capacity_of(t, e, capacity_factor, k)
    s = sort_assignments(_route(ids, weights, mask, e))
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
    out = (
        jnp.zeros((t, back.shape[-1]), back.dtype).at[token.reshape(-1)].add((back * w[..., None]).reshape(e * cap, -1))
    )
    total = jax.lax.psum(s.sizes.sum(), token_axes)
    kept = jax.lax.psum(keep.sum(), token_axes)
    return out, kept, total


def _local_ragged(
    x: jax.Array,
    ids: jax.Array,
    weights: jax.Array,
    mask: jax.Array,
    params: Any,
    *,
    expert_fn: ExpertFn,
    num_experts_total: int,
    axis: str,
    n: int,
    token_axes: tuple[str, ...],
    emulate: bool,
):
    """One device's share with the ragged exchange (module docstring): x [t, d], ids / weights / mask
    [t, K], params [E/n, ...] -> (y [t, d_out], kept, total), kept == total (nothing dropped)."""
    t, slots = ids.shape
    e, per = num_experts_total, num_experts_total // n
    exchange = functools.partial(ragged_all_to_all_emulated if emulate else jax.lax.ragged_all_to_all, axis_name=axis)
    s = sort_assignments(_route(ids, weights, mask, e))
    valid = jnp.arange(t * slots) < s.sizes.sum()  # sorted positions holding an assignment
    rows = x[s.order % t]  # [t*K, d], grouped by expert
    counts = jax.lax.all_gather(s.sizes, axis).reshape(n, n, per)  # [source, destination, local expert]
    per_expert = counts.sum(0)  # [destination, local expert]: rows each expert receives
    # receiver buffers are expert-major, source-major within an expert
    at = (jnp.cumsum(per_expert, -1) - per_expert)[None] + jnp.cumsum(counts, 0) - counts  # [src, dst, local]
    me = jax.lax.axis_index(axis)
    buffer_rows = n * t * min(slots, per)  # the most one device can be sent (a token picks an expert once)
    recv_sizes = counts[:, me].reshape(e)  # slice i = (source i // per, local expert i % per)
    buf = exchange(
        rows, jnp.zeros((buffer_rows, x.shape[-1]), x.dtype), s.starts, s.sizes, at[me].reshape(e), recv_sizes
    )
    sizes = per_expert[me]  # [E/n]
    local = jnp.searchsorted(jnp.cumsum(sizes), jnp.arange(buffer_rows), side="right")  # [rows] in [0, E/n]
    inside = (local < per)[:, None]
    y = dropless(
        buf, _route(jnp.minimum(local, per - 1)[:, None], inside.astype(jnp.float32), inside, per), expert_fn, params
    )  # [rows, d_out], zero past the received rows
    back = exchange(
        y,
        jnp.zeros((t * slots, y.shape[-1]), y.dtype),
        at[:, me].reshape(e),
        recv_sizes,
        jax.lax.all_to_all(s.starts, axis, 0, 0, tiled=True),
        s.sizes,
    )  # [t*K, d_out], sorted order
    w = jnp.where(valid, weights.T.reshape(-1)[s.order], 0.0).astype(back.dtype)
    out = jnp.zeros((t, back.shape[-1]), back.dtype).at[s.order % t].add(back * w[:, None])
    total = jax.lax.psum(s.sizes.sum(), token_axes)
    return out, total, total


def expert_parallel(
    x: jax.Array,
    route: RouteOutput,
    expert_fn: ExpertFn,
    params: Any,
    *,
    capacity_factor: float = 1.25,
    k: float | None = None,
    axis: str = "expert",
    token_axes: Sequence[str] = TOKEN_AXES,
    mesh: jax.sharding.Mesh | None = None,
    exchange: str = "auto",
) -> tuple[jax.Array, jax.Array]:
    """Expert-parallel dispatch (module docstring). Returns (y [T, d_out], dropped fraction []).

    x [T, d] and the route's [T, K] arrays are split over `token_axes` (those the mesh has: T must
    divide by the product of their sizes); the expert params (stacked [E, ...] or split) over `axis`
    (E must divide by its size). k sizes the buffers as in `capacity` (default the route's slot count).
    mesh: default the one set by `jax.set_mesh` (an error names the problem when there is none).
    exchange: "capacity" (fixed buffers, may drop), "ragged" (`ragged_all_to_all`, drops nothing; an
      error where the backend lacks it), "ragged_emulated" (the same with an emulated collective), or
      "auto": ragged where supported and the capacity buffers could not drop anything, else capacity.
    """
    check_dispatch_inputs(x, route, params)
    if exchange not in EXCHANGES:
        raise ValueError(f"unknown exchange {exchange!r}; choose from {EXCHANGES}")
    e = route.num_experts
    mesh = mesh if mesh is not None else jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty:
        raise ValueError(
            "expert_parallel dispatch needs a device mesh: pass mesh=... or call it under "
            "jax.set_mesh(mesh) (see psec_jax.parallel.make_mesh)"
        )
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
    k = route.num_slots if k is None else k
    platform = (
        jax.devices()[0].platform if isinstance(mesh, jax.sharding.AbstractMesh) else mesh.devices.flat[0].platform
    )
    if exchange == "ragged" and not ragged_supported(platform):
        raise ValueError(
            f"exchange='ragged' needs jax.lax.ragged_all_to_all, which {platform!r} does not compile; "
            "use 'capacity' (or 'ragged_emulated' to test the algorithm)"
        )
    if exchange == "auto":
        no_drop = capacity_of(x.shape[0] // shards, e, capacity_factor, k) >= x.shape[0] // shards
        exchange = "ragged" if no_drop and ragged_supported(platform) else "capacity"
    if exchange == "capacity":
        local = functools.partial(
            _local,
            expert_fn=expert_fn,
            num_experts_total=e,
            capacity_factor=capacity_factor,
            k=k,
            axis=axis,
            n=n,
            token_axes=tok,
        )
    else:
        local = functools.partial(
            _local_ragged,
            expert_fn=expert_fn,
            num_experts_total=e,
            axis=axis,
            n=n,
            token_axes=tok,
            emulate=exchange == "ragged_emulated",
        )
    rows = P(tok)
    # check_vma off: dropless's lax.switch mixes device-varying and constant branches inside
    fn = jax.shard_map(
        local, mesh=mesh, in_specs=(rows, rows, rows, rows, P(axis)), out_specs=(rows, P(), P()), check_vma=False
    )
    y, kept, total = fn(x, route.expert_ids, route.weights, route.mask, params)
    return y, ((total - kept) / jnp.maximum(total, 1)).astype(jnp.float32)
