"""Mixture-of-Experts with dynamic top-p routing ("Harder Tasks Need More Experts", ACL 2024).

    from psec_jax import moe
    r = moe.top_p(logits, p=0.4)                           # RouteOutput, static [T, max_k] slots
    config = moe.MoEConfig(router="top_p", p=0.4, backend="dropless")
    y, aux, stats = moe.moe_apply(params, x, config)       # params = moe.init_moe(key, d, d_ff, E)
    layer = moe.MoE(num_experts=16, d_ff=2816, config=config)   # Flax shell

Modules: config (`MoEConfig`, every choice of a layer), experts (expert functions, `init_moe`), losses
(aux losses), backends (dense / capacity / dropless / ragged / expert_parallel by name, and the loop
reference), expert_parallel (experts sharded over a mesh axis, all_to_all), grouped (the dropless
machinery), layer (route, moe_apply, MoE). Routers and their table live one layer down, in
`psec_jax.routing`; the fused routing kernel and the grouped matmuls in `psec_jax.kernels`.
"""

from psec_jax.moe.backends import BACKENDS, Backend, capacity, dense, dispatch, dropless, loop_reference, ragged
from psec_jax.moe.config import MoEConfig
from psec_jax.moe.expert_parallel import EXCHANGES, expert_parallel, ragged_all_to_all_emulated, ragged_supported
from psec_jax.moe.experts import EXPERTS, gelu_expert, init_moe, swiglu_expert
from psec_jax.moe.grouped import SplitExpert, capacity_of, default_block_size, split_experts, stack_experts, tail_sizes
from psec_jax.moe.layer import MoE, moe_apply, route, routing_stats
from psec_jax.moe.losses import (
    DEFAULT_WEIGHTS,
    LOAD_BALANCE_NORMS,
    aux_losses,
    dynamic_loss,
    expert_fractions,
    load_balance,
    z_loss,
)
from psec_jax.routing import RouteOutput, top_k, top_p

__all__ = [
    "BACKENDS",
    "Backend",
    "capacity",
    "dense",
    "dispatch",
    "dropless",
    "loop_reference",
    "ragged",
    "MoEConfig",
    "EXCHANGES",
    "expert_parallel",
    "ragged_all_to_all_emulated",
    "ragged_supported",
    "EXPERTS",
    "gelu_expert",
    "init_moe",
    "swiglu_expert",
    "SplitExpert",
    "capacity_of",
    "default_block_size",
    "split_experts",
    "stack_experts",
    "tail_sizes",
    "MoE",
    "moe_apply",
    "route",
    "routing_stats",
    "DEFAULT_WEIGHTS",
    "aux_losses",
    "dynamic_loss",
    "expert_fractions",
    "LOAD_BALANCE_NORMS",
    "load_balance",
    "z_loss",
    "RouteOutput",
    "top_k",
    "top_p",
]
