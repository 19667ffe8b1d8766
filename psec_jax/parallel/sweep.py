"""Sweeps sharded over devices: `jit(vmap(fn))` with the member axis split over the mesh's `data` axis.

    train_many = sweep(train, in_axes=(0, None))      # like jax.jit(jax.vmap(train, (0, None)))
    states, metrics = train_many(keys, data)           # keys [N]: N / devices members per device

Each device runs its share of the members as one program (`vmap`, or `lax.map` for members one after
another) inside `jax.shard_map`, so nothing is exchanged between devices and a sweep script runs N
times the members on N devices with no change to it. Mapped arguments are split by member; unmapped
ones (datasets, batches every member sees) are replicated. On one device this is `jit(vmap(fn))`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from psec_jax.parallel import distributed
from psec_jax.parallel.mesh import make_mesh

InAxes = int | None | Sequence[int | None]
MEMBERS = ("vmap", "map")


def member_sharding(mesh: Mesh, axis: str = "data", position: int = 0) -> NamedSharding:
    """Sharding of an array whose dimension `position` is the member axis, split over `axis`."""
    return NamedSharding(mesh, P(*(None,) * position, axis))


def map_members(fn: Callable[..., Any], in_axes: Sequence[int | None]) -> Callable[..., Any]:
    """Like `jax.vmap(fn, in_axes)`, but members run one after another (`lax.map`): the same outputs
    (member axis first), one member's memory, no batching of fn's loops."""

    def run(*args):
        mapped = [i for i, ax in enumerate(in_axes) if ax is not None]
        xs = tuple(jax.tree.map(lambda leaf, ax=in_axes[i]: jnp.moveaxis(leaf, ax, 0), args[i]) for i in mapped)

        def one(x):
            full = list(args)
            for i, value in zip(mapped, x):
                full[i] = value
            return fn(*full)

        return jax.lax.map(one, xs)

    return run


def _place(leaf: Any, sharding: NamedSharding) -> Any:
    """A concrete value placed with `sharding` (a global array across processes); traced values (under
    jit, eval_shape) pass through."""
    if isinstance(leaf, (jax.core.Tracer, jax.ShapeDtypeStruct)):
        return leaf
    return distributed.global_array(leaf, sharding)


def largest_divisor_at_most(n: int, limit: int) -> int:
    """The largest d <= limit that divides n (>= 1)."""
    return max(d for d in range(1, max(1, min(n, limit)) + 1) if n % d == 0)


def members_mesh(devices: int, count: int) -> Mesh | None:
    """The mesh whose ``data`` axis ``count`` members are split over when a config asks for ``devices``
    devices (PSEC's and the LM's ``config.mesh.data``): the first gcd(devices, count) of them, so a stage of
    fewer members (a shared pi_0's one seed) still splits evenly; None (``sweep``'s default) for -1.
    ValueError when the backend has fewer than ``devices`` devices."""
    if devices == -1:
        return None
    if devices > jax.device_count():
        raise ValueError(f"config.mesh.data={devices}: only {jax.device_count()} devices are available")
    n = math.gcd(devices, count)
    return make_mesh({"data": n}, jax.devices()[:n])


def sweep(
    fn: Callable[..., Any], in_axes: InAxes = 0, *, mesh: Mesh | None = None, axis: str = "data", members: str = "vmap"
) -> Callable[..., Any]:
    """`jax.jit(jax.vmap(fn, in_axes))` with the members split over `axis` of `mesh`.

    in_axes: an int or None for all arguments, or one per positional argument (an int: the member
    axis of every leaf of that argument; None: shared, replicated). members: "vmap" (one batched
    program per device) or "map" (`lax.map`, members in turn). mesh: default every device on
    `data`, as many as divide the member count (so 3 seeds on 8 devices use 3 of them); with a mesh
    given, a member count its axis does not divide is a ValueError. Outputs have the member axis
    first, as with vmap, sharded by member. `.lower(*args)` lowers it for inspection.
    """
    if members not in MEMBERS:
        raise ValueError(f"members must be one of {MEMBERS}, got {members!r}")
    if mesh is not None and axis not in mesh.axis_names:
        raise ValueError(f"the mesh has no axis {axis!r}; its axes are {mesh.axis_names}")
    compiled: dict[Any, Callable[..., Any]] = {}

    def build(args: tuple) -> tuple[Callable[..., Any], Mesh]:
        axes = tuple(in_axes) if isinstance(in_axes, (tuple, list)) else (in_axes,) * len(args)
        if len(axes) != len(args):
            raise ValueError(f"in_axes has {len(axes)} entries for {len(args)} arguments")
        sizes = {leaf.shape[ax] for arg, ax in zip(args, axes) if ax is not None for leaf in jax.tree.leaves(arg)}
        if len(sizes) != 1:
            raise ValueError(f"mapped arguments must share one member count, got {sorted(sizes)}")
        count = sizes.pop()
        m = mesh
        if m is None:  # every process must take part in a multi-process run: all devices then
            n = jax.device_count() if jax.process_count() > 1 else largest_divisor_at_most(count, jax.device_count())
            m = make_mesh({"data": -1}, jax.devices()[:n])
        if count % m.shape[axis]:
            raise ValueError(
                f"{count} members do not split over the {m.shape[axis]} devices of mesh axis "
                f"{axis!r}; use a multiple of {m.shape[axis]}"
            )
        specs = tuple(P() if ax is None else P(*(None,) * ax, axis) for ax in axes)
        key = (axes, m, jax.tree.structure(args))
        if key not in compiled:
            local = jax.vmap(fn, in_axes=axes) if members == "vmap" else map_members(fn, axes)
            compiled[key] = jax.jit(jax.shard_map(local, mesh=m, in_specs=specs, out_specs=P(axis), check_vma=False))
        return compiled[key], m, specs

    def run(*args: Any) -> Any:
        fn_, m, specs = build(args)
        # every argument onto the sweep's devices (one committed to another device, e.g. a frozen base
        # policy made on device 0, would be refused by jit); in a multi-process run, host values every
        # process holds whole become global arrays
        args = tuple(
            jax.tree.map(lambda leaf, s=NamedSharding(m, spec): _place(leaf, s), arg)  # noqa: B008 (bound per argument)
            for arg, spec in zip(args, specs)
        )
        return fn_(*args)

    run.lower = lambda *args: build(args)[0].lower(*args)
    run.mesh = lambda *args: build(args)[1]
    return run
