"""The Mixture-of-Experts layer: pure `moe_apply`, and `MoE`, a thin Flax shell.

    config = MoEConfig(router="top_p", p=0.4, backend="dropless")
    y, aux, stats = moe_apply(params, x, config)            # params from `init_moe`

params = {"router": [d, E] (no bias), "experts": {...: [E, ...]}}; the experts are one function
written for a single expert (`psec_jax.moe.experts`) applied to the stacked weights by the dispatch
back-end (vmapped for dense/capacity, per block for dropless). Activations may be bf16 with fp32
parameters: expert weights are cast to the activation dtype inside the expert, the router runs in fp32.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from psec_jax import routing
from psec_jax.kernels import fused_routing
from psec_jax.moe import losses
from psec_jax.moe.backends import dispatch as run_dispatch
from psec_jax.moe.config import MoEConfig
from psec_jax.moe.experts import EXPERTS, init_moe
from psec_jax.routing import ROUTERS, RouteOutput


def route(logits: jax.Array, config: MoEConfig, p: jax.Array | float | None = None) -> RouteOutput:
    """Apply `config.router` (a name in `psec_jax.routing.ROUTERS`) to logits [T, E].

    p: the threshold, a Python float or a traced scalar; default config.p.
    config.dispatch: "argsort" (the table's router; back-ends argsort the assignments by expert) or
    "fused" (the Pallas routing kernel, `psec_jax.kernels.fused_route`, which also returns each slot's
    expert-grouped position, so back-ends skip the argsort; interpret mode on CPU).
    """
    p = config.p if p is None else p
    router = ROUTERS[config.router]
    if config.dispatch == "fused":
        return fused_routing.fused_route(
            logits,
            config.router,
            k=config.k if router.uses_k else None,
            p=p if router.uses_p else None,
            max_k=config.max_k,
            renormalize=config.renormalize,
        )
    return router.route(logits, k=config.k, p=p, max_k=config.max_k, renormalize=config.renormalize)


def routing_stats(r: RouteOutput, dropped: jax.Array, mask: jax.Array | None = None) -> dict[str, jax.Array]:
    """mean/max experts per token, per-expert load [E] (share of assignments), dropped and
    truncated fractions, and experts_per_token [T] (int32, for per-token analyses, every token); the
    means, max and load over the tokens where mask [T] is True (all when None), 0 for zero tokens."""
    n = r.experts_per_token.astype(jnp.float32)
    counted = n if mask is None else jnp.where(mask, n, 0.0)
    return {
        "experts_per_token_mean": losses.token_mean(n, mask),
        "experts_per_token_max": jnp.max(counted, initial=0.0),
        "expert_load": losses.expert_fractions(r, mask),
        "dropped_fraction": dropped,
        "truncated_fraction": losses.token_mean(r.truncated.astype(jnp.float32), mask),
        "experts_per_token": r.experts_per_token,
    }


def moe_apply(
    params: dict[str, Any],
    x: jax.Array,
    config: MoEConfig | None = None,
    *,
    p: jax.Array | float | None = None,
    mask: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array], dict[str, jax.Array]]:
    """Route the tokens of x [..., d] (any number of leading axes, of any size including 0) and run
    the experts, as `config` (default `MoEConfig()`) says.

    p: the top-p threshold, a Python float or a traced scalar (so a sweep over p can be vmapped);
    default config.p.
    mask: [...] bool, like x's tokens: the tokens the aux losses and routing statistics count (e.g.
    False at padding); None counts every token. Every token is routed and computed either way.
    Returns (y [..., d] in x's dtype, aux losses {"load_balance", "dynamic", "z", "total"} weighted by
    the config's weights, stats from `routing_stats`, with experts_per_token shaped [...] like x's tokens).
    """
    config = MoEConfig() if config is None else config
    if jnp.ndim(x) < 1:
        raise ValueError(f"MoE input must be tokens [..., d], got a rank-0 array of shape {jnp.shape(x)}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"MoE input must be floating point, got dtype {x.dtype}")
    if x.shape[-1] != params["router"].shape[0]:
        raise ValueError(f"x has d={x.shape[-1]} but the router expects d={params['router'].shape[0]}")
    if mask is not None and jnp.shape(mask) != x.shape[:-1]:
        raise ValueError(f"mask has shape {jnp.shape(mask)}, x's tokens {x.shape[:-1]}")
    tokens = x.reshape(-1, x.shape[-1])
    flat_mask = None if mask is None else jnp.reshape(mask, (-1,))
    logits = tokens.astype(jnp.float32) @ params["router"].astype(jnp.float32)
    r = route(logits, config, p)
    if config.count_roll:  # the control of `MoEConfig.count_roll`: another token's count, own experts
        r = routing.with_counts(r, jnp.roll(r.experts_per_token, config.count_roll))
    y, dropped = run_dispatch(tokens, r, EXPERTS[config.activation], params["experts"], config)
    stats = routing_stats(r, dropped, flat_mask)
    stats["experts_per_token"] = stats["experts_per_token"].reshape(x.shape[:-1])
    aux = losses.aux_losses(r, config.aux_weights, flat_mask, config.load_balance_norm)
    return y.reshape(x.shape).astype(x.dtype), aux, stats


class MoE(nn.Module):
    """Flax shell over `init_moe` / `moe_apply`: the sizes, and the config for everything else."""

    num_experts: int
    d_ff: int  # hidden width of each expert
    config: MoEConfig = MoEConfig()
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self, x: jax.Array, p: jax.Array | float | None = None, mask: jax.Array | None = None
    ) -> tuple[jax.Array, dict[str, jax.Array], dict[str, jax.Array]]:
        d = x.shape[-1]
        params = self.param(
            "moe",
            lambda key: init_moe(
                key, d, self.d_ff, self.num_experts, activation=self.config.activation, dtype=self.param_dtype
            ),
        )
        return moe_apply(params, x, self.config, p=p, mask=mask)
