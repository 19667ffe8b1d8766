"""The factored forward pass: base layer plus weighted skills, never materialising merged weights.

    y = x W0 + b + sum_i w_i (x A_i) B_i

computed in rank space: the K adapters' ``A`` are joined into one ``[d_in, K*r]`` matmul, the rank
blocks are scaled by their skill weights, and one ``[K*r, d_out]`` matmul finishes it. Per example the
base layer costs ``2 d_in d_out`` FLOPs and the skills ``2 K r (d_in + d_out)``: a relative overhead of
``K r (1/d_in + 1/d_out)``, i.e. ``2Kr/d`` for a square layer (measured in benchmarks/lora_compose.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from psec_jax.lora.core import LoRAPair, concat_skills

LORA_COLLECTION = "lora"


def _broadcast_weights(weights: jax.Array | None, lead: tuple[int, ...], k: int, dtype: Any) -> jax.Array:
    """Skill weights ``[K]``, ``[b, K]``, ``[b, t, K]`` ... as ``lead + (K,)``-broadcastable."""
    if weights is None:
        return jnp.ones((k,), dtype)
    weights = jnp.asarray(weights, dtype)
    if weights.ndim == 0 or weights.shape[-1] != k:
        raise ValueError(f"skill weights must end in the skill axis K={k}, got shape {weights.shape}")
    batch = weights.shape[:-1]
    if batch != lead[: len(batch)]:
        raise ValueError(
            f"skill weights of shape {weights.shape} do not match the leading dims {lead} of the input: "
            f"use [K], or [*lead[:j], K] for per-example / per-token weights"
        )
    return weights.reshape(batch + (1,) * (len(lead) - len(batch)) + (k,))


def lora_dense(
    x: jax.Array,
    kernel: jax.Array,
    bias: jax.Array | None,
    adapters: LoRAPair | None,
    weights: jax.Array | None = None,
    *,
    dtype: Any = None,
    precision: Any = None,
) -> jax.Array:
    """``x W0 + b + sum_k w_k (x A_k) B_k`` for a stack of K adapters.

    x: ``[*lead, *in]``. kernel: ``[*in, *out]`` (a Dense kernel or an N-D DenseGeneral kernel; the
    number of input axes is read off ``adapters.a``). bias: ``[*out]`` or None.
    adapters: ``LoRAPair(a: [K, *in, r], b: [K, r, *out])``, or None for the plain layer.
    weights: ``[K]`` (global), ``[*lead[:j], K]`` (per example ``[batch, K]``, per token
    ``[batch, tokens, K]``), or None for all ones. Fold each skill's LoRA scale into its weight
    (``SkillLibrary.coefficients``). Or a route over the ``prod(lead)`` examples (an object with
    ``lora_delta(x [n, d_in], a [K, d_in, r], b [K, r, d_out]) -> [n, d_out]``, e.g.
    ``psec_jax.routed.SkillRoute``): then only the skills each example selects run.
    ``dtype``: computation dtype (default: promote x and kernel).
    Returns ``[*lead, *out]``.
    """
    n_in = kernel.ndim - 1 if adapters is None else adapters.a.ndim - 2
    in_shape, out_shape = kernel.shape[:n_in], kernel.shape[n_in:]
    if x.ndim < n_in or x.shape[x.ndim - n_in :] != in_shape:
        raise ValueError(f"input of shape {x.shape} does not end in the kernel's input dims {in_shape}")
    dtype = dtype or jnp.result_type(x.dtype, kernel.dtype)
    lead = x.shape[: x.ndim - n_in]
    x = x.astype(dtype)
    axes = (tuple(range(len(lead), x.ndim)), tuple(range(n_in)))
    y = jax.lax.dot_general(x, kernel.astype(dtype), (axes, ((), ())), precision=precision)
    if bias is not None:
        y = y + bias.astype(dtype)
    if adapters is None:
        return y
    a, b = adapters
    k, r = a.shape[0], a.shape[-1]
    if a.shape[1:-1] != in_shape or b.shape[0] != k or b.shape[1] != r or b.shape[2:] != out_shape:
        raise ValueError(
            f"adapters a {a.shape}, b {b.shape} do not fit kernel {kernel.shape} (need a [K, *in, r], b [K, r, *out])"
        )
    d_in, d_out = math.prod(in_shape), math.prod(out_shape)
    if hasattr(weights, "lora_delta"):  # a route (psec_jax.routed.SkillRoute): only each state's selected skills run
        n = math.prod(lead)
        a2, b2 = a.astype(dtype).reshape(k, d_in, r), b.astype(dtype).reshape(k, r, d_out)
        return y + weights.lora_delta(x.reshape(n, d_in), a2, b2).reshape(*lead, *out_shape)
    joined = concat_skills(LoRAPair(a.astype(dtype), b.astype(dtype)))
    a_cat, b_cat = joined.a.reshape(d_in, k * r), joined.b.reshape(k * r, d_out)
    h = jnp.dot(x.reshape(*lead, d_in), a_cat, precision=precision)  # [*lead, K*r]
    # Weights repeated to [..., K*r] rather than h reshaped to [..., K, r]: on CPU the reshape of a
    # large h costs a copy (measured 2x slower at K*r=1024, benchmarks/lora_compose.py).
    h = h * jnp.repeat(_broadcast_weights(weights, lead, k, dtype), r, axis=-1)
    delta = jnp.dot(h, b_cat, precision=precision)
    return y + delta.reshape(*lead, *out_shape)


class LoRADense(nn.Module):
    """Drop-in for ``nn.Dense`` whose kernel is adapted by the skill stack in the ``"lora"`` collection.

    Parameters are named like ``nn.Dense`` (``kernel``, ``bias``), so base parameters of a model built
    from ``nn.Dense`` load as they are. Adapters come from the variable collection ``"lora"`` at the
    same module path, as ``{"kernel": LoRAPair(a [K, d_in, r], b [K, r, features])}`` (the
    ``"params"`` subtree of a stacked adapter tree, e.g. ``library.adapters["params"]``); without one
    the layer is the plain dense layer. ``skill_weights``: as in ``lora_dense``.
    """

    features: int
    use_bias: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32
    precision: Any = None
    kernel_init: Callable = nn.initializers.lecun_normal()
    bias_init: Callable = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, x: jax.Array, skill_weights: jax.Array | None = None) -> jax.Array:
        kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features), self.param_dtype)
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
        adapters = None
        if self.has_variable(LORA_COLLECTION, "kernel"):
            adapters = LoRAPair(*self.get_variable(LORA_COLLECTION, "kernel"))
        dtype = self.dtype or jnp.result_type(x.dtype, self.param_dtype)
        return lora_dense(x, kernel, bias, adapters, skill_weights, dtype=dtype, precision=self.precision)
