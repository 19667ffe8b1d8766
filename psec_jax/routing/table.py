"""The router table: every router by name, with what the layer, the routing kernel and the LM read.

    router = ROUTERS["top_p"]
    r = router.route(logits, k=2, p=0.4, max_k=None, renormalize=False)     # RouteOutput

Adding a router: write its function (the `RouteFn` signature below, returning a `RouteOutput`), add
one entry here, and a test. `psec_jax.moe.MoEConfig` accepts any name in the table, the layer calls
`route`, the LM's `Spec` checks `k` against the expert count when `uses_k`; only routers marked
`fused` can run with the Pallas kernel (`psec_jax.kernels.fused_routing`, which implements top-k and
top-p selection).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax

from psec_jax.routing import routers
from psec_jax.routing.types import RouteOutput

# (logits [T, E], *, k: int, p: float or traced [], max_k: int | None, renormalize: bool,
#  probs: [T, E] float32 or None) -> RouteOutput. Every router receives every option and reads the
# ones it uses; `probs` (the logits' softmax, already computed) lets the kernel's reference reuse it.
RouteFn = Callable[..., RouteOutput]


@dataclasses.dataclass(frozen=True)
class Router:
    """One routing rule and what its callers need to know about it."""

    route: RouteFn  # the routing function (`RouteFn`)
    uses_k: bool  # reads `k` (a fixed expert count, checked against E by the LM's Spec)
    uses_p: bool  # reads the threshold `p` (a variable expert count, up to max_k slots)
    # the Pallas routing kernel implements it (routing dispatch "fused"): only for the kernel's own rules,
    # psec_jax.kernels.fused_routing.KERNEL_RULES (top_k, top_p), which refuses any other name
    fused: bool = False


def _top_k(
    logits: jax.Array,
    *,
    k: int,
    p=None,
    max_k: int | None = None,
    renormalize: bool = False,
    probs: jax.Array | None = None,
) -> RouteOutput:
    return routers.top_k(logits, k, renormalize=renormalize, probs=probs)


def _top_p(
    logits: jax.Array,
    *,
    k: int | None = None,
    p=0.4,
    max_k: int | None = None,
    renormalize: bool = False,
    probs: jax.Array | None = None,
) -> RouteOutput:
    return routers.top_p(logits, p, max_k, renormalize=renormalize, probs=probs)


ROUTERS: dict[str, Router] = {
    "top_k": Router(_top_k, uses_k=True, uses_p=False, fused=True),  # the k most probable experts
    "top_p": Router(_top_p, uses_k=False, uses_p=True, fused=True),  # the paper's dynamic top-p
}


def get_router(name: str) -> Router:
    """The table's entry for `name`; ValueError listing the known routers otherwise."""
    if name not in ROUTERS:
        raise ValueError(f"unknown router {name!r}; choose from {tuple(ROUTERS)}")
    return ROUTERS[name]
