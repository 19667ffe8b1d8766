"""How the language model's arrays map to mesh axes: the logical axis names every parameter declares
where it is created, and sharded train states (`psec_jax.parallel` turns the names into PartitionSpecs).

    specs = param_specs(jax.eval_shape(lambda: tf.init_boxed(key, spec)))   # PartitionSpec per leaf
    init = sharded_init(trainer, mesh)                    # key -> TrainState placed on the mesh

The names come from the parameters themselves: `psec_jax.models.transformer.init_boxed` (and
`psec_jax.moe.init_moe(..., boxed=True)`) create each one in a `flax.linen.LogicallyPartitioned` box with
its axis names, and `transformer.param_axes(spec)` / `Trainer.param_axes` hold them as a tree like the
plain parameters. Nothing here matches parameter names.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from psec_jax.parallel import mesh as pmesh


def _is_axes(x: Any) -> bool:
    return isinstance(x, tuple)


def logical_axes(params: Any) -> Any:
    """A tree like params of logical axis-name tuples, one name (str or None) per dimension.

    params: declared parameters, each leaf a `nn.Partitioned` box (e.g. `transformer.init_boxed`, or its
    `jax.eval_shape`) whose names are read; a plain leaf declares nothing and is a ValueError."""

    def names(path, leaf):
        if not isinstance(leaf, nn.Partitioned):
            raise ValueError(
                f"parameter {jax.tree_util.keystr(path)} of shape {getattr(leaf, 'shape', None)} declares "
                "no logical axes (create it in a flax.linen.LogicallyPartitioned box)"
            )
        axes = tuple(leaf.names)
        if len(axes) != leaf.value.ndim:
            raise ValueError(
                f"parameter {jax.tree_util.keystr(path)} has shape {leaf.value.shape} but declares the axes {axes}"
            )
        return axes

    return jax.tree_util.tree_map_with_path(names, params, is_leaf=lambda x: isinstance(x, nn.Partitioned))


def _specs(axes: Any, rules) -> Any:
    return jax.tree.map(lambda a: pmesh.logical_spec(a, rules), axes, is_leaf=_is_axes)


def param_specs(params: Any, rules=pmesh.RULES) -> Any:
    """PartitionSpec of every parameter leaf of declared params (from `logical_axes` and the mesh rules)."""
    return _specs(logical_axes(params), rules)


def state_shardings(trainer: Any, mesh: Mesh) -> Any:
    """NamedShardings of the trainer's TrainState: parameters and the optimizer's parameter-shaped
    moments by their declared axes (`trainer.param_axes`; fitted to each shape), counters replicated."""
    abstract = jax.eval_shape(trainer.init, jax.random.key(0))
    pspecs = _specs(trainer.param_axes, pmesh.RULES)
    opt_specs = optax.tree_map_params(
        trainer.tx,
        lambda _, spec: spec,
        abstract.opt_state,
        pspecs,
        transform_non_params=lambda _: P(),
        is_leaf=lambda x: isinstance(x, P),
    )
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


def gather_weights(params: Any, axes: Any = None) -> Any:
    """params (any subtree of the LM's, e.g. one layer group's slice) constrained to their shardings
    without the fsdp split (`parallel.constrain`; a no-op without a mesh).

    axes: their logical axis names, a tree like params (`transformer.param_axes`, cut to the subtree);
    default: read from params, which must then be declared (boxed, see `logical_axes`) and are unboxed."""
    if axes is None:
        axes = logical_axes(params)
        params = jax.tree.map(lambda b: b.value, params, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    return jax.tree.map(lambda a, w: pmesh.constrain(w, a, GATHERED_RULES), axes, params, is_leaf=_is_axes)
