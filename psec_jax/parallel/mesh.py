"""Device meshes from a config, logical-axis rules, and sharding of pytrees.

    mesh = make_mesh(get_config())                       # axes (data, fsdp, expert, model); data = the rest
    spec = logical_spec(("batch", "embed"))              # PartitionSpec(("data", "fsdp"), None) ...
    params = shard(params, specs, mesh)                  # every leaf placed by its PartitionSpec (e.g. the
                                                         # LM's psec_jax.models.sharding.param_specs)

Mesh axes (all four always exist, size 1 when unused, so one set of rules serves every mesh):
- `data`: replicas that see different data: the batch, or the members of a vmapped sweep;
- `fsdp`: the batch too, and parameters' largest dimension sharded (ZeRO-3 / FSDP style: gathered
  where used, gradients reduce-scattered, which XLA's SPMD partitioner inserts from the shardings);
- `expert`: MoE experts, dispatched by `all_to_all` (`psec_jax.moe.expert_parallel`); tokens are
  sharded over it as well outside the MoE layers;
- `model`: tensor parallelism of the hidden (MLP / heads / vocab) dimensions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import linen as nn
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXES = ("data", "fsdp", "expert", "model")

# logical axis -> mesh axes. Flax's `logical_to_mesh_axes` reads them in order and never uses one mesh
# axis twice in one array, so e.g. an expert weight [expert, embed, mlp] gets (expert, fsdp, model).
RULES: tuple[tuple[str, Any], ...] = (
    ("member", "data"),  # the vmapped seed / hyperparameter axis of a sweep
    ("batch", ("data", "fsdp", "expert")),  # tokens' batch: every axis that is not a model axis
    ("expert", "expert"),
    ("embed", "fsdp"),  # d_model of weights: FSDP shards it
    ("mlp", "model"),
    ("heads", "model"),
    ("vocab", "model"),
    ("layers", None),  # stacked layer groups: scanned, never sharded
    ("head_dim", None),
    ("seq", None),
    ("norm", None),
)


def get_config() -> ml_collections.ConfigDict:
    """Mesh axis sizes; -1 (at most one axis) takes the devices the others leave."""
    c = ml_collections.ConfigDict()
    c.data = -1  # data-parallel replicas / sweep members sharded over them
    c.fsdp = 1  # parameter (and batch) sharding, FSDP style
    c.expert = 1  # expert parallelism: experts split over this axis, tokens exchanged by all_to_all
    c.model = 1  # tensor parallelism of hidden dimensions
    return c


def mesh_shape(config: ml_collections.ConfigDict | dict, num_devices: int) -> dict[str, int]:
    """Resolve the axis sizes of `config` for `num_devices` devices ({axis: size} in AXES order).

    Raises ValueError naming the problem: an unknown axis, a size that is not a positive int or -1,
    more than one -1, or sizes whose product is not the device count.
    """
    sizes = dict(config)
    unknown = set(sizes) - set(AXES)
    if unknown:
        raise ValueError(f"unknown mesh axes {sorted(unknown)}; the axes are {AXES}")
    sizes = {a: sizes.get(a, 1) for a in AXES}
    for a, s in sizes.items():
        if not isinstance(s, (int, np.integer)) or isinstance(s, bool) or (s < 1 and s != -1):
            raise ValueError(f"mesh axis {a!r} must be a positive int or -1 (the rest), got {s!r}")
    free = [a for a, s in sizes.items() if s == -1]
    if len(free) > 1:
        raise ValueError(f"only one mesh axis may be -1, got {free}")
    fixed = math.prod(s for s in sizes.values() if s != -1)
    if free:
        if num_devices % fixed:
            raise ValueError(
                f"mesh {_describe(sizes)}: the fixed axes take {fixed} devices, which does not "
                f"divide the {num_devices} devices available"
            )
        sizes[free[0]] = num_devices // fixed
    elif fixed != num_devices:
        raise ValueError(f"mesh {_describe(sizes)} needs {fixed} devices, but {num_devices} are available")
    return {a: int(s) for a, s in sizes.items()}


def _describe(sizes: dict[str, int]) -> str:
    return " x ".join(f"{a}={s}" for a, s in sizes.items())


def make_mesh(
    config: ml_collections.ConfigDict | dict | None = None, devices: Sequence[jax.Device] | None = None
) -> Mesh:
    """A Mesh over `devices` (default: every device of every process) with the four AXES.

    The axes are `Auto` (jit's SPMD partitioner propagates shardings; `shard_map` goes manual where
    asked). Device order follows `jax.make_mesh` (topology-aware on TPU).
    """
    devices = list(jax.devices() if devices is None else devices)
    sizes = mesh_shape(get_config() if config is None else config, len(devices))
    return jax.make_mesh(
        tuple(sizes.values()), AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(AXES), devices=devices
    )


def logical_spec(axes: Sequence[str | None], rules: Sequence[tuple[str, Any]] = RULES) -> PartitionSpec:
    """PartitionSpec of an array whose dimensions have the given logical names (None: replicated).

    Raises ValueError for a logical name that has no rule."""
    known = {name for name, _ in rules}
    missing = [a for a in axes if a is not None and a not in known]
    if missing:
        raise ValueError(f"no sharding rule for logical axes {missing}; rules cover {sorted(known)}")
    return nn.logical_to_mesh_axes(tuple(axes), rules)


def fit_spec(spec: PartitionSpec, shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
    """`spec` with every dimension that its mesh axes do not divide left replicated (e.g. 4 heads on a
    model axis of 8, or a vocabulary of 2049): a valid sharding for any shape."""
    out = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        names = () if axes is None else (axes if isinstance(axes, tuple) else (axes,))
        size = math.prod(mesh.shape[n] for n in names)
        out.append(axes if size > 1 and dim % size == 0 else None)
    return PartitionSpec(*out)


def shardings(tree: Any, specs: Any, mesh: Mesh) -> Any:
    """NamedShardings for `tree` (arrays or ShapeDtypeStructs) from a matching tree of PartitionSpecs,
    each fitted to its leaf's shape (`fit_spec`)."""
    return jax.tree.map(
        lambda s, a: NamedSharding(mesh, fit_spec(s, a.shape, mesh)),
        specs,
        tree,
        is_leaf=lambda x: isinstance(x, PartitionSpec),
    )


def shard(tree: Any, specs: Any, mesh: Mesh) -> Any:
    """Place every leaf of `tree` on `mesh` by its PartitionSpec in `specs` (a matching tree)."""
    return jax.device_put(tree, shardings(tree, specs, mesh))


def constrain(x: jax.Array, axes: Sequence[str | None], rules: Sequence[tuple[str, Any]] = RULES) -> jax.Array:
    """`jax.lax.with_sharding_constraint` of x to the logical `axes`, on the mesh set by `jax.set_mesh`:
    only its Auto axes (inside `shard_map` the manual ones are split already), only where they divide
    the dimension (`fit_spec`); dimensions left unnamed are replicated (gathered). A no-op without a
    mesh or when no Auto axis has more than one device."""
    mesh = jax.sharding.get_abstract_mesh()
    auto = (
        {n for n, t in zip(mesh.axis_names, mesh.axis_types) if t == jax.sharding.AxisType.Auto and mesh.shape[n] > 1}
        if not mesh.empty
        else set()
    )
    if not auto:
        return x
    keep = lambda names: tuple(n for n in (names if isinstance(names, tuple) else (names,)) if n in auto)
    spec = PartitionSpec(*(keep(a) or None if a is not None else None for a in logical_spec(axes, rules)))
    return jax.lax.with_sharding_constraint(x, fit_spec(spec, x.shape, mesh))
