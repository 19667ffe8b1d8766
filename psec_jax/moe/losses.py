"""Auxiliary router losses, defined for a variable number of experts per token.

- `load_balance`: N * sum_i f_i * P_i with P_i the mean router probability of expert i and f_i the
  share of expert i in the routing, normalised one of two ways (`LOAD_BALANCE_NORMS`):
  "assignments": f_i = the fraction of all (token, expert) assignments that went to i, so sum f = 1
  (Switch's fraction of tokens for top-1; 1 for perfectly balanced routing whatever k);
  "tokens": f_i = the fraction of tokens that chose i, so sum f = k (the mean experts per token for
  top-p), as GShard, HF Mixtral and MaxText compute it (k for perfectly balanced top-k routing).
  The top-p paper writes "N * sum_i f_i Q_i" without saying which; its released code has no training.
- `dynamic_loss`: mean over tokens of the routing entropy -sum_i P_i log P_i (the top-p paper's
  dynamic loss; pushes the router to be confident so fewer experts pass the threshold).
- `z_loss`: mean over tokens of logsumexp(logits)^2 (ST-MoE), keeping logits small.

Every loss takes an optional token mask [T] (True: the token counts): masked-out tokens (padding)
change no loss. `aux_losses` returns all three and their weighted sum under "total". Default weights
are the top-p paper's reported a = 1e-2 (balance), b = 1e-4 (dynamic) and ST-MoE's 1e-3 (z): treat
them as starting points for a sweep. Means over zero tokens are 0 (an empty batch adds no loss).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from psec_jax.routing import RouteOutput

DEFAULT_WEIGHTS = {"load_balance": 1e-2, "dynamic": 1e-4, "z": 1e-3}
LOAD_BALANCE_NORMS = ("assignments", "tokens")  # sum f = 1 / sum f = experts per token


def _weights(mask: jax.Array | None, num_tokens: int) -> jax.Array:
    """[T] float32 token weights: the mask as 0/1, or all ones."""
    if mask is None:
        return jnp.ones((num_tokens,), jnp.float32)
    if mask.shape != (num_tokens,):
        raise ValueError(f"token mask must have shape ({num_tokens},), got {mask.shape}")
    return mask.astype(jnp.float32)


def token_mean(values: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Mean over the leading (token) axis of values [T, ...], over the tokens where mask [T] is True
    (all when None); 0 for zero tokens instead of NaN."""
    w = _weights(mask, values.shape[0]).reshape((-1,) + (1,) * (values.ndim - 1))
    return (values * w).sum(0) / jnp.maximum(w.sum(), 1.0)


def expert_fractions(route: RouteOutput, mask: jax.Array | None = None, norm: str = "assignments") -> jax.Array:
    """[E] each expert's share of the routing over the tokens where mask [T] is True: of all valid
    assignments (norm "assignments", sums to 1) or of the tokens (norm "tokens", sums to the mean
    experts per token)."""
    if norm not in LOAD_BALANCE_NORMS:
        raise ValueError(f"unknown load-balance normalisation {norm!r}; choose from {LOAD_BALANCE_NORMS}")
    w = _weights(mask, route.expert_ids.shape[0])
    onehot = jax.nn.one_hot(route.expert_ids, route.num_experts, dtype=jnp.float32)
    counts = jnp.einsum("tk,tke->e", route.mask.astype(jnp.float32) * w[:, None], onehot)
    total = counts.sum() if norm == "assignments" else w.sum()
    return counts / jnp.maximum(total, 1.0)


def load_balance(route: RouteOutput, mask: jax.Array | None = None, norm: str = "assignments") -> jax.Array:
    """[] N * sum_i f_i P_i over the tokens where mask [T] is True (f_i has no gradient; P_i carries
    the router gradient); `norm` as in `expert_fractions`."""
    f = jax.lax.stop_gradient(expert_fractions(route, mask, norm))
    p = token_mean(route.probs, mask)
    return route.num_experts * jnp.sum(f * p)


def dynamic_loss(route: RouteOutput, mask: jax.Array | None = None) -> jax.Array:
    """[] mean routing entropy -sum_i P_i log P_i over the tokens where mask [T] is True."""
    logp = jax.nn.log_softmax(route.logits.astype(jnp.float32), -1)
    return -token_mean(jnp.sum(route.probs * logp, -1), mask)


def z_loss(route: RouteOutput, mask: jax.Array | None = None) -> jax.Array:
    """[] mean over the tokens where mask [T] is True of logsumexp(logits)^2."""
    return token_mean(jax.nn.logsumexp(route.logits.astype(jnp.float32), -1) ** 2, mask)


def aux_losses(
    route: RouteOutput,
    weights: dict[str, float] | None = None,
    mask: jax.Array | None = None,
    load_balance_norm: str = "assignments",
) -> dict[str, jax.Array]:
    """{"load_balance", "dynamic", "z", "total"} over the tokens where mask [T] is True (all when None);
    `weights` overrides entries of DEFAULT_WEIGHTS."""
    w = {**DEFAULT_WEIGHTS, **(weights or {})}
    unknown = set(w) - set(DEFAULT_WEIGHTS)
    if unknown:
        raise ValueError(f"unknown aux loss weights {sorted(unknown)}; known: {sorted(DEFAULT_WEIGHTS)}")
    out = {
        "load_balance": load_balance(route, mask, load_balance_norm),
        "dynamic": dynamic_loss(route, mask),
        "z": z_loss(route, mask),
    }
    out["total"] = sum(w[k] * out[k] for k in DEFAULT_WEIGHTS)
    return out
