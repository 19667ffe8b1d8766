"""Kernels, the layer below `psec_jax.moe`: each beside the reference it is tested against.

Modules: fused_routing (a Pallas kernel from router logits to expert-grouped slots; interpret mode on
CPU), gmm (grouped matmuls over maintained kernels: megablox, tokamax, `lax.ragged_dot`). They build
on `psec_jax.routing` and never import `psec_jax.moe`.
"""

from psec_jax.kernels import gmm
from psec_jax.kernels.fused_routing import fused_route, fused_route_reference, fused_rules
from psec_jax.kernels.gmm import grouped_matmul

__all__ = ["gmm", "fused_route", "fused_route_reference", "fused_rules", "grouped_matmul"]
