"""Routers: pure functions of router logits `[tokens, E]` -> `RouteOutput` with static shapes.

- `top_k(logits, k)`: the k most probable experts per token.
- `top_p(logits, p, max_k=None)`: dynamic routing of "Harder Tasks Need More Experts" (ACL 2024):
  softmax, sort descending, keep the smallest prefix whose cumulative probability is strictly
  greater than p (the top-1 expert always kept), weight kept experts by their raw probabilities.

Both return `max_k` (top-k: k) slots per token, sorted by probability, with a validity mask;
invalid slots have weight 0 and must be ignored by dispatch. Probabilities are computed in float32
whatever the logits' dtype. Ties are broken towards the lower expert index (`lax.top_k` order).

Edge cases of top-p, decided here:
- no prefix exceeds p (only possible for p = 1, up to float rounding of the cumulative sum):
  every expert is kept, as in the official code;
- `max_k` < the number the rule asks for: the set is cut to the `max_k` most probable experts
  (weights stay raw probabilities); `RouteOutput.truncated` marks those tokens.
"""

from __future__ import annotations

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


def _check_logits(logits: jax.Array) -> None:
    if logits.ndim != 2:
        raise ValueError(f"router logits must be [tokens, E], got shape {logits.shape}")
    if logits.shape[-1] < 1:
        raise ValueError("router logits have E = 0 experts")


def _check_count(name: str, value: int, num_experts: int) -> int:
    if not isinstance(value, (int,)) or isinstance(value, bool):
        raise TypeError(f"{name} must be a Python int (it fixes output shapes), got {type(value).__name__}")
    if not 1 <= value <= num_experts:
        raise ValueError(f"{name} must be in [1, E={num_experts}], got {value}")
    return value


def _renormalize(weights: jax.Array) -> jax.Array:
    return weights / jnp.maximum(weights.sum(-1, keepdims=True), jnp.finfo(weights.dtype).tiny)


def top_k(logits: jax.Array, k: int, *, renormalize: bool = False) -> RouteOutput:
    """Route every token to its k most probable experts.

    Args:
      logits: [T, E] router logits (any float dtype).
      k: experts per token, a Python int in [1, E].
      renormalize: weights sum to 1 over the k experts (Mixtral/GShard style) instead of being
        the raw probabilities.
    """
    _check_logits(logits)
    k = _check_count("k", k, logits.shape[-1])
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    weights, ids = jax.lax.top_k(probs, k)
    if renormalize:
        weights = _renormalize(weights)
    t = logits.shape[0]
    return RouteOutput(ids.astype(jnp.int32), weights, jnp.ones((t, k), bool), jnp.full((t,), k, jnp.int32),
                       probs, logits, jnp.zeros((t,), bool))


# Up to this many experts, sorting by pairwise comparison ([T, E, E] work, vectorised) beats
# XLA's comparator sort on CPU (measured 3-5x faster at E=16); beyond it, lax.top_k wins.
_PAIRWISE_SORT_MAX_E = 32


def sort_descending(probs: jax.Array) -> tuple[jax.Array, jax.Array]:
    """probs [T, E] -> (sorted probs [T, E], expert ids [T, E]), descending, ties to the lower id.

    Same result as `lax.top_k(probs, E)`; for small E computed from pairwise ranks instead.
    """
    e = probs.shape[-1]
    if e > _PAIRWISE_SORT_MAX_E:
        return jax.lax.top_k(probs, e)
    idx = jnp.arange(e)
    p_i, p_j = probs[:, :, None], probs[:, None, :]
    ahead = (p_j > p_i) | ((p_j == p_i) & (idx[None, :] < idx[:, None]))  # [T, i, j]: j sorts before i
    rank = ahead.sum(-1)  # [T, E] sorted position of each expert
    at = rank[:, :, None] == idx  # [T, i, r]
    ids = jnp.sum(jnp.where(at, idx[:, None], 0), axis=1)
    return jnp.sum(jnp.where(at, probs[:, :, None], 0.0), axis=1), ids


# With many experts a full sort dominates top-p's cost; sort this many first and fall back to the
# full sort only when some token's kept prefix is not complete within them.
_PARTIAL_SORT_K = 16


def _sorted_prefix(probs: jax.Array, p, max_k: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(sorted probs [T, S], their ids [T, S], real [S] bool): descending, ties to the lower id.

    S = E, or max_k + 1 when max_k < E (enough to tell that the rule wanted more than max_k).
    Above _PAIRWISE_SORT_MAX_E experts only the top _PARTIAL_SORT_K are sorted when every token's
    kept prefix ends within them; otherwise a full top-S sort replaces them (`lax.cond`; under vmap
    both run). Slots past a partial sort are not `real`: probability 0, expert 0, never kept.
    """
    e = probs.shape[-1]
    if e <= _PAIRWISE_SORT_MAX_E:
        s, i = sort_descending(probs)
        return s, i, jnp.ones((e,), bool)
    size = e if max_k == e else max_k + 1
    if size <= _PARTIAL_SORT_K:
        s, i = jax.lax.top_k(probs, size)
        return s, i, jnp.ones((size,), bool)
    s0, i0 = jax.lax.top_k(probs, _PARTIAL_SORT_K)
    pad = lambda a: jnp.pad(a, ((0, 0), (0, size - _PARTIAL_SORT_K)))
    partial = lambda: (pad(s0), pad(i0), jnp.arange(size) < _PARTIAL_SORT_K)
    full = lambda: (*jax.lax.top_k(probs, size), jnp.ones((size,), bool))
    return jax.lax.cond(jnp.all(jnp.sum(s0, -1) > p), partial, full)


def top_p(logits: jax.Array, p: float, max_k: int | None = None, *, renormalize: bool = False) -> RouteOutput:
    """Dynamic top-p routing (see the module docstring for the exact rule and edge cases).

    Args:
      logits: [T, E] router logits (any float dtype).
      p: probability threshold in (0, 1] (a Python float or a scalar array; arrays are not
        range-checked under tracing).
      max_k: slots per token (static), in [1, E]; default E (never truncates).
      renormalize: weights sum to 1 over the kept experts instead of being raw probabilities.
    """
    _check_logits(logits)
    e = logits.shape[-1]
    max_k = e if max_k is None else _check_count("max_k", max_k, e)
    if isinstance(p, (int, float)) and not 0.0 < p <= 1.0:
        raise ValueError(f"top-p threshold p must be in (0, 1], got {p}")
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    sorted_all, ids_all, real = _sorted_prefix(probs, p, max_k)
    before = jnp.cumsum(sorted_all, axis=-1) - sorted_all  # mass of the more probable experts
    # slot j is kept iff no earlier prefix already exceeded p: cumsum_{j-1} <= p (slot 0 always)
    keep_all = (before <= p) & real
    keep_all = keep_all.at[:, 0].set(True)
    wanted = keep_all.sum(-1)  # exact up to max_k + 1, all that `truncated` needs
    mask = keep_all[:, :max_k]
    weights = jnp.where(mask, sorted_all[:, :max_k], 0.0)
    if renormalize:
        weights = _renormalize(weights)
    return RouteOutput(ids_all[:, :max_k].astype(jnp.int32), weights, mask, mask.sum(-1).astype(jnp.int32),
                       probs, logits, wanted > max_k)
