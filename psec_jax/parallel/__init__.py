"""Scale-out on JAX's own SPMD machinery: meshes, logical-axis sharding, sharded sweeps, multi-host.

    from psec_jax import parallel
    mesh = parallel.make_mesh({"data": -1, "expert": 2})   # axes data, fsdp, expert, model
    with jax.set_mesh(mesh): ...            # e.g. moe_apply(params, x, MoEConfig(backend="expert_parallel"))

Modules: mesh (mesh from a config, logical-axis rules, sharding pytrees), sweep (vmapped members
split over the data axis), distributed (multi-process runs: `jax.distributed`, process-0 logging,
gathering to the host), memory (per-device memory of a compiled program from abstract inputs).
"""

from psec_jax.parallel.mesh import (
    AXES,
    RULES,
    constrain,
    fit_spec,
    get_config,
    logical_spec,
    make_mesh,
    mesh_shape,
    shard,
    shardings,
)
from psec_jax.parallel.sweep import map_members, member_sharding, members_mesh, sweep

__all__ = [
    "AXES",
    "RULES",
    "constrain",
    "fit_spec",
    "get_config",
    "logical_spec",
    "make_mesh",
    "mesh_shape",
    "shard",
    "shardings",
    "map_members",
    "member_sharding",
    "members_mesh",
    "sweep",
]
