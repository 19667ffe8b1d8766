"""The types the routers, the routing kernel and the dispatch back-ends share: `RouteOutput` (one
routing decision with static shapes) and `sort_assignments` (its assignments grouped by expert).

    s = sort_assignments(route)       # Sorted(order [T*K], sizes [E], starts [E])
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class RouteOutput:
    """Routing decision for T tokens over E experts with K slots per token."""

    expert_ids: jax.Array  # [T, K] int32, experts by descending probability (invalid slots: unspecified)
    weights: jax.Array  # [T, K] float32, combine weights (0 where mask is False)
    mask: jax.Array  # [T, K] bool, slot in use
    experts_per_token: jax.Array  # [T] int32, number of valid slots
    probs: jax.Array  # [T, E] float32, softmax of the logits
    logits: jax.Array  # [T, E], as given
    truncated: jax.Array  # [T] bool, top-p wanted more than max_k experts (always False for top-k)
    # Set by the fused routing kernel (`psec_jax.kernels`), else None (dispatch argsorts instead):
    positions: jax.Array | None = None  # [T, K] int32, each slot's row in expert-grouped order
    counts: jax.Array | None = None  # [E] int32, valid assignments per expert

    @property
    def num_experts(self) -> int:
        return self.probs.shape[-1]

    @property
    def num_slots(self) -> int:
        return self.expert_ids.shape[-1]

    def combine_weights(self) -> jax.Array:
        """[T, E] dense combine weights (0 for experts a token does not use)."""
        onehot = jax.nn.one_hot(self.expert_ids, self.num_experts, dtype=self.weights.dtype)
        return jnp.einsum("tk,tke->te", self.weights, onehot)


class Sorted(NamedTuple):
    """The route's (token, slot) assignments stably sorted by expert (int32 arrays).

    Assignment a = j * T + t is slot j of token t (slot-major, so sorting keeps every token's
    slot 0 ahead of any slot 1 within an expert); invalid slots sort last, in no group.
    """

    order: jax.Array  # [T*K] assignment at each sorted position
    sizes: jax.Array  # [E] valid assignments per expert
    starts: jax.Array  # [E] first sorted position of each expert's group


def invert_permutation(perm: jax.Array) -> jax.Array:
    """[n] int permutation -> [n] int32 inverse (inverse[perm[i]] = i), one scatter."""
    n = perm.shape[0]
    return jnp.zeros((n,), jnp.int32).at[perm].set(jnp.arange(n, dtype=jnp.int32), unique_indices=True)


def sort_assignments(route: RouteOutput) -> Sorted:
    """Sort the valid (token, slot) assignments of a route by expert (see `Sorted`).

    A route from the fused routing kernel carries each slot's position and the per-expert counts:
    then the order is one scatter (the inverse permutation), no argsort.
    """
    e = route.num_experts
    if route.positions is not None and route.counts is not None:
        order = invert_permutation(route.positions.T.reshape(-1))
        sizes = route.counts.astype(jnp.int32)
        return Sorted(order, sizes, (jnp.cumsum(sizes) - sizes).astype(jnp.int32))
    ids = jnp.where(route.mask, route.expert_ids, e).T.reshape(-1)  # [K*T], slot-major
    order = jnp.argsort(ids, stable=True).astype(jnp.int32)
    sizes = jnp.bincount(ids, length=e + 1)[:e].astype(jnp.int32)
    return Sorted(order, sizes, (jnp.cumsum(sizes) - sizes).astype(jnp.int32))
