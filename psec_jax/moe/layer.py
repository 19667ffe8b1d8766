"""The Mixture-of-Experts layer: pure `init_moe` / `moe_apply`, and `MoE`, a thin Flax shell.

    y, aux, stats = moe_apply(params, x, router="top_p", p=0.4, backend="dropless")

params = {"router": [d, E] (no bias), "experts": {...: [E, ...]}}; the experts are one function
written for a single expert (`swiglu_expert` / `gelu_expert`) applied to the stacked weights by the
dispatch back-end (vmapped for dense/capacity, per block for dropless). Activations may be bf16
with fp32 parameters: expert weights are cast to the activation dtype inside the expert, the
router runs in fp32.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from psec_jax.moe import losses, routing
from psec_jax.moe.backends import dispatch as run_dispatch
from psec_jax.moe.grouped import SplitExpert


def _swiglu_in(p: Any, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    return x @ p["gate"].astype(x.dtype), x @ p["up"].astype(x.dtype)


def _swiglu_out(p: Any, z: tuple[jax.Array, jax.Array]) -> jax.Array:
    gate, up = z
    return (jax.nn.silu(gate) * up) @ p["down"].astype(gate.dtype)


def _gelu_in(p: Any, x: jax.Array) -> jax.Array:
    return x @ p["up"].astype(x.dtype)


def _gelu_out(p: Any, h: jax.Array) -> jax.Array:
    return jax.nn.gelu(h) @ p["down"].astype(h.dtype)


# x [n, d] -> [n, d] for one expert's weights; split so that `dropless` can keep the activations.
swiglu_expert = SplitExpert(_swiglu_in, _swiglu_out)  # (silu(x W_gate) * (x W_up)) W_down
gelu_expert = SplitExpert(_gelu_in, _gelu_out)  # gelu(x W_up) W_down
EXPERTS = {"swiglu": swiglu_expert, "gelu": gelu_expert}


def init_moe(key: jax.Array, d_model: int, d_ff: int, num_experts: int, *, activation: str = "swiglu",
             dtype: Any = jnp.float32) -> dict[str, Any]:
    """Parameters: router [d, E] and experts stacked [E, ...] (lecun-normal fan-in scaling)."""
    if activation not in EXPERTS:
        raise ValueError(f"unknown expert activation {activation!r}; choose from {sorted(EXPERTS)}")
    ks = jax.random.split(key, 4)
    init = lambda k, shape, fan_in: (jax.random.normal(k, shape, jnp.float32) / jnp.sqrt(fan_in)).astype(dtype)
    experts = {"up": init(ks[1], (num_experts, d_model, d_ff), d_model),
               "down": init(ks[2], (num_experts, d_ff, d_model), d_ff)}
    if activation == "swiglu":
        experts["gate"] = init(ks[3], (num_experts, d_model, d_ff), d_model)
    return {"router": init(ks[0], (d_model, num_experts), d_model), "experts": experts}


ROUTING_IMPLS = ("argsort", "fused")


def route(logits: jax.Array, router: str, *, k: int = 2, p: float = 0.4, max_k: int | None = None,
          renormalize: bool = False, dispatch: str = "argsort") -> routing.RouteOutput:
    """Apply the named router ("top_k" or "top_p") to logits [T, E].

    dispatch: "argsort" (the jnp routers; back-ends argsort the assignments by expert) or "fused"
    (the Pallas routing kernel, `psec_jax.kernels.fused_route`, which also returns each slot's
    expert-grouped position, so back-ends skip the argsort; interpret mode on CPU).
    """
    if router not in ("top_k", "top_p"):
        raise ValueError(f"unknown router {router!r}; choose from ('top_k', 'top_p')")
    if dispatch not in ROUTING_IMPLS:
        raise ValueError(f"unknown routing dispatch {dispatch!r}; choose from {ROUTING_IMPLS}")
    if dispatch == "fused":
        from psec_jax.kernels import fused_routing as fused  # kernels build on moe.routing: import late

        return fused.fused_route(logits, router, k=k if router == "top_k" else None,
                                 p=p if router == "top_p" else None, max_k=max_k, renormalize=renormalize)
    if router == "top_k":
        return routing.top_k(logits, k, renormalize=renormalize)
    return routing.top_p(logits, p, max_k, renormalize=renormalize)


def routing_stats(r: routing.RouteOutput, dropped: jax.Array) -> dict[str, jax.Array]:
    """mean/max experts per token, per-expert load [E] (share of assignments), dropped and
    truncated fractions, and experts_per_token [T] (int32, for per-token analyses); 0 for zero tokens."""
    n = r.experts_per_token.astype(jnp.float32)
    return {"experts_per_token_mean": losses.token_mean(n), "experts_per_token_max": jnp.max(n, initial=0.0),
            "expert_load": losses.expert_fractions(r), "dropped_fraction": dropped,
            "truncated_fraction": losses.token_mean(r.truncated.astype(jnp.float32)),
            "experts_per_token": r.experts_per_token}


def moe_apply(params: dict[str, Any], x: jax.Array, *, router: str = "top_p", k: int = 2, p: float = 0.4,
              max_k: int | None = None, renormalize: bool = False, backend: str = "dropless",
              activation: str = "swiglu", capacity_factor: float = 1.25, capacity_k: float | None = None,
              block_size: int | None = None, saved_slots: float | None = 4.0,
              aux_weights: dict[str, float] | None = None, dispatch: str = "argsort",
              grouped_matmul: str = "auto", exchange: str = "auto"
              ) -> tuple[jax.Array, dict[str, jax.Array], dict[str, jax.Array]]:
    """Route the tokens of x [..., d] (any number of leading axes, of any size including 0) and run
    the experts.

    Returns (y [..., d] in x's dtype, aux losses {"load_balance", "dynamic", "z", "total"},
    stats from `routing_stats`, with experts_per_token shaped [...] like x's tokens).
    `dispatch` chooses how the route is computed and grouped by expert (see `route`);
    `grouped_matmul` the "ragged" back-end's kernel (`psec_jax.moe.gmm`); `exchange` how
    "expert_parallel" moves tokens between devices (`psec_jax.moe.expert_parallel`).
    """
    if jnp.ndim(x) < 1:
        raise ValueError(f"MoE input must be tokens [..., d], got a rank-0 array of shape {jnp.shape(x)}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"MoE input must be floating point, got dtype {x.dtype}")
    if x.shape[-1] != params["router"].shape[0]:
        raise ValueError(f"x has d={x.shape[-1]} but the router expects d={params['router'].shape[0]}")
    tokens = x.reshape(-1, x.shape[-1])
    logits = tokens.astype(jnp.float32) @ params["router"].astype(jnp.float32)
    r = route(logits, router, k=k, p=p, max_k=max_k, renormalize=renormalize, dispatch=dispatch)
    y, dropped = run_dispatch(backend, tokens, r, EXPERTS[activation], params["experts"],
                             capacity_factor=capacity_factor, capacity_k=capacity_k, block_size=block_size,
                             saved_slots=saved_slots, activation=activation, grouped_matmul=grouped_matmul,
                             exchange=exchange)
    stats = routing_stats(r, dropped)
    stats["experts_per_token"] = stats["experts_per_token"].reshape(x.shape[:-1])
    return y.reshape(x.shape).astype(x.dtype), losses.aux_losses(r, aux_weights), stats


class MoE(nn.Module):
    """Flax shell over `init_moe` / `moe_apply` (see there for the arguments)."""

    num_experts: int
    d_ff: int
    router: str = "top_p"
    k: int = 2
    p: float = 0.4
    max_k: int | None = None
    backend: str = "dropless"
    activation: str = "swiglu"
    capacity_factor: float = 1.25
    capacity_k: float | None = None
    block_size: int | None = None
    saved_slots: float | None = 4.0
    aux_weights: dict[str, float] | None = None
    param_dtype: Any = jnp.float32
    dispatch: str = "argsort"
    grouped_matmul: str = "auto"
    exchange: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, dict[str, jax.Array], dict[str, jax.Array]]:
        d = x.shape[-1]
        params = self.param("moe", lambda key: init_moe(key, d, self.d_ff, self.num_experts,
                                                         activation=self.activation, dtype=self.param_dtype))
        return moe_apply(params, x, router=self.router, k=self.k, p=self.p, max_k=self.max_k,
                         backend=self.backend, activation=self.activation,
                         capacity_factor=self.capacity_factor, capacity_k=self.capacity_k,
                         block_size=self.block_size, saved_slots=self.saved_slots,
                         aux_weights=self.aux_weights, dispatch=self.dispatch,
                         grouped_matmul=self.grouped_matmul, exchange=self.exchange)
