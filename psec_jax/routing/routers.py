"""Routers: pure functions of router logits `[tokens, E]` -> `RouteOutput` with static shapes.

- `top_k(logits, k)`: the k most probable experts per token.
- `top_p(logits, p, max_k=None)`: dynamic routing of "Harder Tasks Need More Experts" (ACL 2024):
  softmax, sort descending, keep the smallest prefix whose cumulative probability is strictly
  greater than p (the top-1 expert always kept), weight kept experts by their raw probabilities.

Both return `max_k` (top-k: k) slots per token, sorted by probability, with a validity mask;
invalid slots have weight 0 and must be ignored by dispatch. Probabilities are computed in float32
whatever the logits' dtype. Ties are broken towards the lower expert index (`lax.top_k` order).

The rule is applied to the float32 cumulative sums themselves, added left to right in sorted order:
slot j is kept iff no earlier slot's sum exceeds p (never `cumsum_j - p_j <= p`, which rounds
differently near the threshold).

Edge cases, decided here:
- no prefix exceeds p (only possible for p = 1, up to float rounding of the cumulative sum):
  every expert is kept, as in the official code;
- `max_k` < the number the rule asks for: the set is cut to the `max_k` most probable experts
  (weights stay raw probabilities); `RouteOutput.truncated` marks those tokens;
- a token whose probabilities are not finite (a NaN or +inf logit, or every logit -inf), with either
  router: one slot, expert 0, weight NaN, `probs` NaN. Every back-end then returns NaN for that token
  (capacity: unless its one assignment is dropped) and the aux losses are NaN, so the fault shows
  where it happened; expert ids are always in [0, E);
- zero tokens give an empty route; integer logits, logits not of rank 2 and a concrete `p` outside
  (0, 1] are errors.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from psec_jax.routing.types import RouteOutput


def check_logits(logits: jax.Array) -> None:
    """Raises unless logits is a floating [T, E] array with E >= 1 (T may be 0)."""
    if jnp.ndim(logits) != 2:
        raise ValueError(f"router logits must be [tokens, E], got shape {jnp.shape(logits)}")
    if logits.shape[-1] < 1:
        raise ValueError("router logits have E = 0 experts")
    if not jnp.issubdtype(logits.dtype, jnp.floating):
        raise TypeError(f"router logits must be floating point, got dtype {logits.dtype}")


def check_p(p) -> None:
    """Range-checks p unless it is traced (then the caller vouches for it)."""
    if isinstance(p, bool):
        raise TypeError("top-p threshold p must be a number in (0, 1], got a bool")
    if isinstance(p, jax.core.Tracer):
        return
    value = np.asarray(p)
    if value.shape != ():
        raise ValueError(f"top-p threshold p must be a scalar, got shape {value.shape}")
    if not np.issubdtype(value.dtype, np.number) or not 0.0 < float(value) <= 1.0:
        raise ValueError(f"top-p threshold p must be in (0, 1], got {p}")


def _softmax(logits: jax.Array, probs: jax.Array | None) -> jax.Array:
    if probs is None:
        return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    if probs.shape != logits.shape or probs.dtype != jnp.float32:
        raise ValueError(f"probs must be float32 of the logits' shape {logits.shape}, got {probs.dtype}{probs.shape}")
    return probs


def _finite_rows(probs: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(bad [T] bool: the token's probabilities are not finite, probs with those rows one-hot at
    expert 0, so they sort and cross any p at slot 0 like a confident token)."""
    bad = ~jnp.all(jnp.isfinite(probs), axis=-1)
    return bad, jnp.where(bad[:, None], jax.nn.one_hot(0, probs.shape[-1], dtype=probs.dtype), probs)


def _poison(
    bad: jax.Array, ids: jax.Array, weights: jax.Array, mask: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Bad tokens: one slot (expert 0) with weight NaN; the rest masked."""
    first = jnp.arange(ids.shape[-1]) == 0
    mask = jnp.where(bad[:, None], first, mask)
    weights = jnp.where(bad[:, None], jnp.where(first, jnp.nan, 0.0), weights)
    return jnp.where(bad[:, None], 0, ids), weights, mask


def check_count(name: str, value: int, num_experts: int) -> int:
    """Returns value after checking it is a Python int in [1, E] (it fixes output shapes)."""
    if not isinstance(value, (int,)) or isinstance(value, bool):
        raise TypeError(f"{name} must be a Python int (it fixes output shapes), got {type(value).__name__}")
    if not 1 <= value <= num_experts:
        raise ValueError(f"{name} must be in [1, E={num_experts}], got {value}")
    return value


def renormalize_weights(weights: jax.Array) -> jax.Array:
    """[T, K] weights scaled to sum to 1 per token (all-zero rows stay 0)."""
    return weights / jnp.maximum(weights.sum(-1, keepdims=True), jnp.finfo(weights.dtype).tiny)


def top_k(logits: jax.Array, k: int, *, renormalize: bool = False, probs: jax.Array | None = None) -> RouteOutput:
    """Route every token to its k most probable experts.

    Args:
      logits: [T, E] router logits (any float dtype).
      k: experts per token, a Python int in [1, E].
      renormalize: weights sum to 1 over the k experts (Mixtral/GShard style) instead of being
        the raw probabilities.
      probs: [T, E] float32 softmax of the logits when already computed, e.g. by a fused kernel, to
        check its selection against this one (it must be the logits' softmax: the aux losses use
        both); default: computed here.
    """
    check_logits(logits)
    k = check_count("k", k, logits.shape[-1])
    probs = _softmax(logits, probs)
    bad, safe = _finite_rows(probs)
    weights, ids = jax.lax.top_k(safe, k)
    if renormalize:
        weights = renormalize_weights(weights)
    t = logits.shape[0]
    ids, weights, mask = _poison(bad, ids.astype(jnp.int32), weights, jnp.ones((t, k), bool))
    return RouteOutput(ids, weights, mask, mask.sum(-1).astype(jnp.int32), probs, logits, jnp.zeros((t,), bool))


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


def sequential_cumsum(x: jax.Array) -> jax.Array:
    """[T, S] -> [T, S] cumulative sums along S, added strictly left to right.

    The rule is stated on these sums (numpy's and torch's CPU order); XLA's `cumsum` may
    reassociate long rows (on CPU it differs from this order past ~16 columns). On CPU a rolled scan
    over the columns is the fastest of the three (measured at T=16k, E=16 and 64); elsewhere the scan
    is unrolled, as a loop step costs a kernel launch there. Both add in the same order.
    """
    step = lambda c, col: (c + col, c + col)
    unroll = jax.default_backend() != "cpu"
    return jax.lax.scan(step, jnp.zeros(x.shape[:1], x.dtype), x.T, unroll=unroll)[1].T


def kept_prefix(sorted_probs: jax.Array, p) -> jax.Array:
    """[T, S] probabilities sorted descending -> [T, S] bool: slot j is kept iff no slot before j has
    cumulative sum > p (`sequential_cumsum`; slot 0 always): slots 0..j*, j* the first with cumsum > p.

    Decided on the float32 cumulative sums themselves (p rounded to float32), so the set is exactly
    the rule's for the sums as computed (`cumsum_j - p_j` is not `cumsum_{j-1}` in floating point).
    """
    return _kept(sequential_cumsum(sorted_probs) > jnp.asarray(p, jnp.float32))


def _kept(over: jax.Array) -> jax.Array:
    """[T, S] cumulative sum > p -> [T, S] kept: no earlier slot crossed."""
    crossed_before = jnp.cumsum(over, axis=-1, dtype=jnp.int32) - over
    return crossed_before == 0


# With many experts a full sort dominates top-p's cost; sort this many first and fall back to the
# full sort only when some token's kept prefix is not complete within them.
_PARTIAL_SORT_K = 16


def _sorted_prefix(probs: jax.Array, p, max_k: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(sorted probs [T, S], their ids [T, S], kept [T, S] bool): descending, ties to the lower id.

    S = E, or max_k + 1 when max_k < E (enough to tell that the rule wanted more than max_k).
    Above _PAIRWISE_SORT_MAX_E experts only the top _PARTIAL_SORT_K are sorted when every token's
    cumulative sum exceeds p within them; otherwise a full top-S sort replaces them (`lax.cond`;
    under vmap both run). Slots past a partial sort have probability 0, expert 0 and are never kept.
    """
    e = probs.shape[-1]
    size = e if max_k == e else max_k + 1
    if e <= _PAIRWISE_SORT_MAX_E or size <= _PARTIAL_SORT_K:
        s, i = sort_descending(probs) if e <= _PAIRWISE_SORT_MAX_E else jax.lax.top_k(probs, size)
        return s, i, kept_prefix(s, p)
    s0, i0 = jax.lax.top_k(probs, _PARTIAL_SORT_K)
    over0 = sequential_cumsum(s0) > jnp.asarray(p, jnp.float32)  # the cond and the partial result share it
    pad = lambda a: jnp.pad(a, ((0, 0), (0, size - _PARTIAL_SORT_K)))

    def full():
        s, i = jax.lax.top_k(probs, size)
        return s, i, kept_prefix(s, p)

    complete = jnp.all(jnp.any(over0, axis=-1))
    return jax.lax.cond(complete, lambda: (pad(s0), pad(i0), pad(_kept(over0))), full)


def top_p(
    logits: jax.Array, p: float, max_k: int | None = None, *, renormalize: bool = False, probs: jax.Array | None = None
) -> RouteOutput:
    """Dynamic top-p routing (see the module docstring for the exact rule and edge cases).

    Args:
      logits: [T, E] router logits (any float dtype; T may be 0).
      p: probability threshold in (0, 1] (a Python float or a scalar array; traced values are not
        range-checked).
      max_k: slots per token (static), in [1, E]; default E (never truncates).
      renormalize: weights sum to 1 over the kept experts instead of being raw probabilities.
      probs: as in `top_k`.
    """
    check_logits(logits)
    check_p(p)
    e = logits.shape[-1]
    max_k = e if max_k is None else check_count("max_k", max_k, e)
    probs = _softmax(logits, probs)
    bad, safe = _finite_rows(probs)
    sorted_all, ids_all, keep_all = _sorted_prefix(safe, p, max_k)
    wanted = keep_all.sum(-1)  # exact up to max_k + 1, all that `truncated` needs
    mask = keep_all[:, :max_k]
    weights = jnp.where(mask, sorted_all[:, :max_k], 0.0)
    if renormalize:
        weights = renormalize_weights(weights)
    ids, weights, mask = _poison(bad, ids_all[:, :max_k].astype(jnp.int32), weights, mask)
    return RouteOutput(ids, weights, mask, mask.sum(-1).astype(jnp.int32), probs, logits, (wanted > max_k) & ~bad)


def with_counts(route: RouteOutput, counts: jax.Array) -> RouteOutput:
    """The route with token t keeping its `counts[t]` most probable slots (clipped to [1, K]), weighted by
    their raw probabilities: a control that gives tokens another source's expert counts (e.g. another
    sequence's, `MoEConfig.count_roll`) while each still picks its own most probable experts.

    Args:
      route: a route whose slots are sorted by descending probability for every slot, valid or not (as
        `top_p` and `top_k` return them), K slots per token.
      counts: [T] int, experts per token to keep.
    """
    if counts.shape != route.experts_per_token.shape:
        raise ValueError(f"counts has shape {counts.shape}, the route's tokens {route.experts_per_token.shape}")
    counts = jnp.clip(counts, 1, route.num_slots)
    mask = jnp.arange(route.num_slots)[None, :] < counts[:, None]
    weights = jnp.where(mask, jnp.take_along_axis(route.probs, route.expert_ids, -1), 0.0)
    return route.replace(weights=weights, mask=mask, experts_per_token=mask.sum(-1).astype(jnp.int32))
