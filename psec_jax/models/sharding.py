"""How the language model's arrays map to mesh axes: logical axis names for every parameter, and
sharded train states (`psec_jax.parallel` turns the names into PartitionSpecs).

    specs = param_specs(params)                           # PartitionSpec per leaf (FSDP + experts + model)
    init = sharded_init(trainer, mesh)                    # key -> TrainState placed on the mesh
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from psec_jax.parallel import mesh as pmesh

# Logical names of each leaf's trailing dimensions, by its key; leading dimensions beyond them are the
# stacked layer groups (`layers`, never sharded; a group's stacked dense layers are a second, unnamed one).
_TRAILING: dict[str, tuple[str | None, ...]] = {
    "embed": ("vocab", "embed"),
    "unembed": ("embed", "vocab"),
    "final_norm": ("norm",), "attn_norm": ("norm",), "ffn_norm": ("norm",),
    "wq": ("embed", "heads", "head_dim"), "wk": ("embed", "heads", "head_dim"), "wv": ("embed", "heads", "head_dim"),
    "wo": ("heads", "head_dim", "embed"),
    "router": ("embed", None),  # [d, E]: small, replicated over the expert axis (every device routes its tokens)
    "gate": ("embed", "mlp"), "up": ("embed", "mlp"), "down": ("mlp", "embed"),
}


def logical_axes(params: Any) -> Any:
    """A tree like params (arrays or ShapeDtypeStructs) of logical axis-name tuples, one per dimension.

    Expert weights ([..., E, d, f] under "experts") get `expert` on their expert dimension."""
    def names(path, leaf):
        keys = [getattr(k, "key", None) for k in path]
        if keys[-1] not in _TRAILING:
            raise ValueError(f"no sharding rule for parameter {jax.tree_util.keystr(path)} of shape {leaf.shape}")
        tail = _TRAILING[keys[-1]]
        if "experts" in keys:
            tail = ("expert",) + tail
        if len(tail) > leaf.ndim:
            raise ValueError(f"parameter {jax.tree_util.keystr(path)} has shape {leaf.shape}, fewer dimensions "
                             f"than its axes {tail}")
        extra = leaf.ndim - len(tail)  # [G] or [G, moe_every - 1] stacked layers: only the first is named
        return (("layers",) + (None,) * (extra - 1) if extra else ()) + tail

    return jax.tree_util.tree_map_with_path(names, params)


def param_specs(params: Any, rules=pmesh.RULES) -> Any:
    """PartitionSpec of every parameter leaf (from `logical_axes` and the mesh rules)."""
    return jax.tree.map(lambda axes: pmesh.logical_spec(axes, rules), logical_axes(params),
                        is_leaf=lambda x: isinstance(x, tuple))


def state_shardings(trainer: Any, mesh: Mesh) -> Any:
    """NamedShardings of the trainer's TrainState: parameters and the optimizer's parameter-shaped
    moments by `param_specs` (fitted to each shape), counters replicated."""
    abstract = jax.eval_shape(trainer.init, jax.random.key(0))
    pspecs = param_specs(abstract.params)
    opt_specs = optax.tree_map_params(trainer.tx, lambda _, spec: spec, abstract.opt_state, pspecs,
                                      transform_non_params=lambda _: P(), is_leaf=lambda x: isinstance(x, P))
    specs = abstract.replace(params=pspecs, opt_state=opt_specs, step=P())
    return pmesh.shardings(abstract, specs, mesh)


def sharded_init(trainer: Any, mesh: Mesh) -> Callable[[jax.Array], Any]:
    """A jitted key -> TrainState whose arrays are created already sharded on `mesh` (no full copy on
    one device first)."""
    return jax.jit(trainer.init, out_shardings=state_shardings(trainer, mesh))


def batch_sharding(mesh: Mesh, ndim: int = 2, batch_dim: int = 0) -> NamedSharding:
    """Sharding of a batch array of rank `ndim` (e.g. [B, T], or [S, B, T] chunks with batch_dim=1):
    its batch dimension over every data-like axis (the `batch` rule), the rest replicated."""
    axes = [None] * ndim
    axes[batch_dim] = "batch"
    return NamedSharding(mesh, pmesh.logical_spec(axes))


# FSDP: a layer's weights are gathered whole (over fsdp) where they are used, so its matmuls keep the
# activations split by batch, and the weight gradients are reduce-scattered back to their shards
GATHERED_RULES = tuple((name, None if name == "embed" else axes) for name, axes in pmesh.RULES)


def gather_weights(params: Any) -> Any:
    """params (any subtree of the LM's, e.g. one layer group's slice) constrained to their shardings
    without the fsdp split (`parallel.constrain`; a no-op without a mesh)."""
    return jax.tree.map(lambda w, axes: pmesh.constrain(w, axes, GATHERED_RULES), params, logical_axes(params),
                        is_leaf=lambda x: isinstance(x, tuple))
