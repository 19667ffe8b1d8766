"""Routing, the bottom layer of the MoE stack: routers, their table and the types they return.

    from psec_jax import routing
    r = routing.top_p(logits, 0.4)                 # RouteOutput, static [T, E] slots
    r = routing.ROUTERS["top_k"].route(logits, k=2, p=None, max_k=None, renormalize=False)
    order, sizes, starts = routing.sort_assignments(r)

Why a package of its own: both `psec_jax.moe` (the layer and its dispatch back-ends) and
`psec_jax.kernels` (the fused routing kernel, whose reference is these routers and this sort, and
whose rule check reads this table) build on it, and the kernels must not import the layer above them.
It imports neither, so the layering is one-way: routing <- kernels <- moe <- models.

Modules: types (`RouteOutput`, `sort_assignments`), routers (`top_k`, `top_p` and their checks),
table (`ROUTERS`: name -> `Router`).
"""

from psec_jax.routing.routers import top_k, top_p, with_counts
from psec_jax.routing.table import ROUTERS, Router, get_router
from psec_jax.routing.types import RouteOutput, Sorted, invert_permutation, sort_assignments

__all__ = [
    "with_counts",
    "top_k",
    "top_p",
    "ROUTERS",
    "Router",
    "get_router",
    "RouteOutput",
    "Sorted",
    "invert_permutation",
    "sort_assignments",
]
