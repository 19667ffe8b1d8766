"""Auxiliary router losses, defined for a variable number of experts per token.

- `load_balance`: N * sum_i f_i * P_i, with f_i the fraction of (token, expert) assignments that
  went to expert i (sum_i f_i = 1; for top-1 it is Switch's fraction of tokens) and P_i the mean
  router probability of expert i. Equal to 1 for perfectly balanced routing.
- `dynamic_loss`: mean over tokens of the routing entropy -sum_i P_i log P_i (the top-p paper's
  dynamic loss; pushes the router to be confident so fewer experts pass the threshold).
- `z_loss`: mean over tokens of logsumexp(logits)^2 (ST-MoE), keeping logits small.

`aux_losses` returns all three and their weighted sum under "total". Default weights are the
top-p paper's reported a = 1e-2 (balance), b = 1e-4 (dynamic) and ST-MoE's 1e-3 (z): treat them
as starting points for a sweep. Means over zero tokens are 0 (an empty batch adds no loss).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from psec_jax.routing import RouteOutput

DEFAULT_WEIGHTS = {"load_balance": 1e-2, "dynamic": 1e-4, "z": 1e-3}


def token_mean(values: jax.Array) -> jax.Array:
    """Mean over the leading (token) axis; 0 for zero tokens instead of NaN."""
    return values.sum(0) / max(values.shape[0], 1)


def expert_fractions(route: RouteOutput) -> jax.Array:
    """[E] share of all valid (token, slot) assignments that chose each expert (sums to 1)."""
    onehot = jax.nn.one_hot(route.expert_ids, route.num_experts, dtype=jnp.float32)
    counts = jnp.einsum("tk,tke->e", route.mask.astype(jnp.float32), onehot)
    return counts / jnp.maximum(counts.sum(), 1.0)


def load_balance(route: RouteOutput) -> jax.Array:
    """[] N * sum_i f_i P_i (f_i has no gradient; P_i carries the router gradient)."""
    f = jax.lax.stop_gradient(expert_fractions(route))
    p = token_mean(route.probs)
    return route.num_experts * jnp.sum(f * p)


def dynamic_loss(route: RouteOutput) -> jax.Array:
    """[] mean routing entropy -sum_i P_i log P_i over tokens."""
    logp = jax.nn.log_softmax(route.logits.astype(jnp.float32), -1)
    return -token_mean(jnp.sum(route.probs * logp, -1))


def z_loss(route: RouteOutput) -> jax.Array:
    """[] mean over tokens of logsumexp(logits)^2."""
    return token_mean(jax.nn.logsumexp(route.logits.astype(jnp.float32), -1) ** 2)


def aux_losses(route: RouteOutput, weights: dict[str, float] | None = None) -> dict[str, jax.Array]:
    """{"load_balance", "dynamic", "z", "total"}; `weights` overrides entries of DEFAULT_WEIGHTS."""
    w = {**DEFAULT_WEIGHTS, **(weights or {})}
    unknown = set(w) - set(DEFAULT_WEIGHTS)
    if unknown:
        raise ValueError(f"unknown aux loss weights {sorted(unknown)}; known: {sorted(DEFAULT_WEIGHTS)}")
    out = {"load_balance": load_balance(route), "dynamic": dynamic_loss(route), "z": z_loss(route)}
    out["total"] = sum(w[k] * out[k] for k in DEFAULT_WEIGHTS)
    return out
