"""Pallas kernels, each beside the pure-jnp reference it is tested against (interpret mode on CPU)."""

from psec_jax.kernels.fused_routing import fused_route, fused_route_reference

__all__ = ["fused_route", "fused_route_reference"]
