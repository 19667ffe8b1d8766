"""Static composition: merging K weighted skills into one update per kernel.

Every method takes a stacked adapter tree (``[K, ...]`` pairs) and coefficients ``c: [K]`` (skill
weights times each skill's scale: ``library.coefficients(w)``), and returns an adapter tree to pass to
``lora.merge(base, result)`` (weight 1):

- ``exact``: dense ``sum_k c_k A_k B_k``.
- ``cat``: a LoRA pair of rank ``sum r_k``: ``A = [c_1 A_1, ..., c_K A_K]``, ``B = [B_1; ...; B_K]``. Exact,
  including negative and unequal weights: the weight multiplies A only, so there are no ``A_i B_j``
  cross terms (the pitfall of merging A and B separately with sqrt-weights).
- ``svd``: the exact delta truncated to rank ``rank`` (``A = U sqrt(S)``, ``B = sqrt(S) V^T``), the best
  rank-``rank`` approximation in Frobenius norm; capped per kernel at its smaller dimension (exact there).
- ``ties``: TIES-merging of the weighted task deltas ``c_k A_k B_k``: keep each delta's top ``density``
  fraction by magnitude, elect each entry's sign by the sum of the kept values, average the kept values
  that agree with it.
- ``dare``: drop each entry of each delta with probability ``1 - density``, rescale survivors by
  ``1/density``, then the weighted sum ``sum_k c_k (m_k * A_k B_k) / density``.

A non-finite coefficient is an error when the coefficients are concrete, and makes every entry of the
result NaN when they are traced: left alone, ``ties`` would drop that skill's delta (a NaN never agrees
with the elected sign) and return finite weights without the skill.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from psec_jax.lora import core
from psec_jax.lora.core import LoRAPair

METHODS = ("exact", "cat", "svd", "ties", "dare")


def _per_skill_deltas(pair: LoRAPair) -> jax.Array:
    """``[K, *in, *out]``: each skill's unscaled ``A_k B_k``."""
    return jax.vmap(lambda a, b: jnp.tensordot(a, b, axes=1))(pair.a, pair.b)


def _svd(pair: LoRAPair, c: jax.Array, rank: int) -> LoRAPair:
    delta = core.pair_delta(pair, c)
    n_in = pair.a.ndim - 2
    in_shape, out_shape = delta.shape[:n_in], delta.shape[n_in:]
    mat = delta.reshape(-1, math.prod(out_shape))
    rank = min(rank, *mat.shape)  # beyond the smaller dimension the decomposition is already exact
    u, s, vt = jnp.linalg.svd(mat.astype(jnp.float32), full_matrices=False)
    root = jnp.sqrt(s[:rank])
    a = (u[:, :rank] * root).astype(delta.dtype).reshape(*in_shape, rank)
    b = (root[:, None] * vt[:rank]).astype(delta.dtype).reshape(rank, *out_shape)
    return LoRAPair(a, b)


def _keep_top(x: jax.Array, density: float) -> jax.Array:
    """Mask keeping the ``round(density * x.size)`` largest-magnitude entries of ``x`` (exactly)."""
    flat = jnp.abs(x).reshape(-1)
    k = int(round(density * flat.size))
    if k <= 0:
        return jnp.zeros(x.shape, bool)
    _, idx = jax.lax.top_k(flat, k)
    return jnp.zeros(flat.shape, bool).at[idx].set(True).reshape(x.shape)


def _ties(pair: LoRAPair, c: jax.Array, density: float) -> jax.Array:
    tasks = _per_skill_deltas(pair)
    tasks = tasks * c.astype(tasks.dtype).reshape((-1,) + (1,) * (tasks.ndim - 1))
    kept = jnp.where(jax.vmap(lambda t: _keep_top(t, density))(tasks), tasks, 0)
    sign = jnp.where(kept.sum(0) >= 0, 1.0, -1.0).astype(tasks.dtype)
    agree = (jnp.sign(kept) == sign) & (kept != 0)
    count = agree.sum(0)
    return jnp.where(agree, kept, 0).sum(0) / jnp.maximum(count, 1).astype(tasks.dtype)


def _dare(pair: LoRAPair, c: jax.Array, density: float, key: jax.Array) -> jax.Array:
    tasks = _per_skill_deltas(pair)
    keep = jax.random.bernoulli(key, density, tasks.shape)
    dropped = jnp.where(keep, tasks, 0) / density
    return jnp.tensordot(c.astype(tasks.dtype), dropped, axes=1)


def combine(
    stacked: Any,
    coefficients: jax.Array,
    method: str = "exact",
    *,
    rank: int | None = None,
    density: float = 0.5,
    key: jax.Array | None = None,
) -> Any:
    """Merges a stacked adapter tree into one adapter tree (see the module docstring for methods).

    coefficients: ``[K]`` (weights times scales). rank: target rank for ``svd``. density: fraction of
    entries kept by ``ties``/``dare``, in (0, 1]. key: PRNG key for ``dare`` (one stream per kernel is
    folded in by path). Returns a tree of dense deltas (exact/ties/dare) or rank-reduced ``LoRAPair``s
    (cat/svd); either goes into ``lora.merge(base, result)``.
    """
    try:
        concrete = np.asarray(coefficients)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        concrete = None  # traced: checked below by turning the result into NaN
    coefficients = jnp.asarray(coefficients)
    if method not in METHODS:
        raise ValueError(f"unknown composition method {method!r}; choose from {METHODS}")
    flat = core.flatten(stacked)
    k = next(iter(flat.values())).a.shape[0]
    if coefficients.shape != (k,):
        raise ValueError(f"coefficients must have shape ({k},) for {k} skills, got {coefficients.shape}")
    if concrete is not None and not np.isfinite(concrete).all():
        bad = [i for i, c in enumerate(concrete) if not np.isfinite(c)]
        raise ValueError(
            f"non-finite coefficient(s) {concrete[bad].tolist()} of skill {', '.join(map(str, bad))}: "
            f"a skill weight or scale is NaN or infinite"
        )
    if method in ("ties", "dare") and (isinstance(density, bool) or not 0.0 < density <= 1.0):
        raise ValueError(f"density must be a number in (0, 1], got {density!r}")
    if method == "svd" and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        raise ValueError(f"method 'svd' needs a target rank, an integer >= 1, got {rank!r}")
    if method == "dare" and key is None:
        raise ValueError("method 'dare' needs a PRNG key")
    out = {}
    for i, (path, pair) in enumerate(flat.items()):
        if method == "exact":
            out[path] = core.pair_delta(pair, coefficients)
        elif method == "cat":
            out[path] = core.concat_skills(pair, coefficients)
        elif method == "svd":
            out[path] = _svd(pair, coefficients, rank)
        elif method == "ties":
            out[path] = _ties(pair, coefficients, density)
        else:
            out[path] = _dare(pair, coefficients, density, jax.random.fold_in(key, i))
    if concrete is None:
        nan_if_bad = jnp.where(jnp.all(jnp.isfinite(coefficients)), 1.0, jnp.nan)
        out = {
            p: (
                LoRAPair(x.a * nan_if_bad.astype(x.a.dtype), x.b)
                if isinstance(x, LoRAPair)
                else x * nan_if_bad.astype(x.dtype)
            )
            for p, x in out.items()
        }
    return core.unflatten(out)
