"""Routing a skill library: `route_skills` turns router logits into a `SkillRoute`, which
`psec_jax.lora.lora_dense` (and every `LoRADense`) accepts in place of dense skill weights.

Per state s with selected skills S(s) (slots of the route) and combine weights w_i(s) (the routing
probabilities, raw as the top-p paper's, or renormalised):

    y(s) = x W0 + b + sum_{i in S(s)} w_i(s) c_i (x A_i) B_i          (c_i: skill i's LoRA scale)

`SkillRoute.lora_delta` computes the sum with a `psec_jax.moe` dispatch back-end over the K skills as
experts (`lora_expert`, written for one skill): "dropless" groups the selected (state, skill) pairs by
skill and runs each skill on exactly its rows, "dense" runs every skill on every state (the K-way
reference), "capacity" uses fixed buffers. With p -> 1 (every skill kept) it equals dense composition
with weights w(s) c; with top-1 it is the one selected skill at its routing probability.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from psec_jax.moe import MoEConfig, dispatch, route
from psec_jax.moe import aux_losses as moe_aux_losses
from psec_jax.moe import routing_stats as moe_routing_stats
from psec_jax.routing import RouteOutput

# the back-ends a route may use: the others drop assignments (capacity, expert_parallel: a skill a state
# selected would silently not run) or take only the MoE layer's own experts (ragged)
BACKENDS = ("dropless", "dense")


def check_routing(config: MoEConfig, num_skills: int | None = None) -> None:
    """ValueError unless ``config`` routes skills: a back-end in ``BACKENDS``, and top-k's k and top-p's
    max_k at most ``num_skills`` (when given)."""
    if config.backend not in BACKENDS:
        raise ValueError(f"a skill route runs on back-end {BACKENDS}, not {config.backend!r}")
    if num_skills is not None:
        for name, value in (("k", config.k if config.router == "top_k" else None), ("max_k", config.max_k)):
            if value is not None and value > num_skills:
                raise ValueError(f"{name}={value} exceeds the library's {num_skills} skills")


def lora_expert(params: dict[str, jax.Array], x: jax.Array) -> jax.Array:
    """One skill on its rows: ``c (x A) B`` for x [n, d_in], params ``{"a": [d_in, r], "b": [r, d_out],
    "scale": []}``. Returns [n, d_out]."""
    return (x @ params["a"]) @ params["b"] * params["scale"]


@struct.dataclass
class SkillRoute:
    """A routing decision over a library of K skills for T states, with each skill's scale."""

    route: RouteOutput  # [T, slots] expert_ids / weights / mask over the K skills
    # [K] float32, each skill's LoRA scale, folded into its combine weight (a PSEC composer's route has unit
    # scales: the policy multiplies in the skills' own, `scaled`)
    scales: jax.Array
    config: MoEConfig = struct.field(pytree_node=False)  # the router and dispatch back-end

    @property
    def num_states(self) -> int:
        return self.route.probs.shape[0]

    @property
    def num_skills(self) -> int:
        return self.route.num_experts

    def dense_weights(self) -> jax.Array:
        """[T, K] the same composition as dense weights (0 for the skills a state does not select): what
        ``lora_dense`` computes with them is what it computes with this route."""
        return self.route.combine_weights() * self.scales

    def scaled(self, scales: jax.Array) -> SkillRoute:
        """The route with each skill's scale multiplied by ``scales`` [K]."""
        return self.replace(scales=self.scales * jnp.asarray(scales, jnp.float32))

    def lora_delta(self, x: jax.Array, a: jax.Array, b: jax.Array) -> jax.Array:
        """``sum_{i in S(s)} w_i(s) c_i (x A_i) B_i`` for x [T, d_in], a [K, d_in, r], b [K, r, d_out]:
        [T, d_out], by ``config.backend`` (only the selected skills run, except with "dense")."""
        t, k = self.num_states, self.num_skills
        if x.ndim != 2 or x.shape[0] != t:
            raise ValueError(f"a route of {t} states composes inputs [{t}, d_in], got shape {x.shape}")
        if a.shape[0] != k or b.shape[0] != k:
            raise ValueError(f"a route over {k} skills composes adapters of {k} skills, got a {a.shape}, b {b.shape}")
        params = {"a": a, "b": b, "scale": self.scales.astype(x.dtype)}
        y, _ = dispatch(x, self.route, lora_expert, params, self.config)
        return y


def route_skills(
    logits: jax.Array, config: MoEConfig, scales: jax.Array | None = None, p: jax.Array | float | None = None
) -> SkillRoute:
    """Route T states over K skills: logits [T, K] (e.g. a context network of the state) through
    ``config.router`` (top_k with ``config.k``, top_p with ``p`` or ``config.p`` and ``config.max_k``; the
    fused kernel with ``config.dispatch="fused"``). scales: [K] the skills' LoRA scales (default 1)."""
    if logits.ndim != 2:
        raise ValueError(f"skill router logits must be [states, K], got shape {logits.shape}")
    k = logits.shape[-1]
    scales = jnp.ones((k,), jnp.float32) if scales is None else jnp.asarray(scales, jnp.float32)
    if scales.shape != (k,):
        raise ValueError(f"scales must be [K={k}], got shape {scales.shape}")
    check_routing(config, k)
    return SkillRoute(route(logits, config, p), scales, config)


def aux_losses(r: SkillRoute, mask: jax.Array | None = None) -> dict[str, jax.Array]:
    """The MoE aux losses of the route with its config's weights: {"load_balance", "dynamic", "z",
    "total"} (``psec_jax.moe.losses``), over the states where mask [T] is True (all when None)."""
    c = r.config
    return moe_aux_losses(r.route, c.aux_weights, mask, c.load_balance_norm)


def routing_stats(r: SkillRoute) -> dict[str, Any]:
    """Mean / max selected skills per state, each skill's share of the selections [K], the truncated
    fraction and the count of every state [T] (``psec_jax.moe.routing_stats``)."""
    stats = moe_routing_stats(r.route, jnp.zeros((), jnp.float32))
    return {k: v for k, v in stats.items() if k != "dropped_fraction"}
