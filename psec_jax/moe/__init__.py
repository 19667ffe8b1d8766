"""Mixture-of-Experts with dynamic top-p routing ("Harder Tasks Need More Experts", ACL 2024).

    from psec_jax import moe
    r = moe.top_p(logits, p=0.4)                           # RouteOutput, static [T, max_k] slots
    y, aux, stats = moe.moe_apply(params, x, router="top_p", backend="dropless")
    layer = moe.MoE(num_experts=16, d_ff=2816)             # Flax shell

Modules: routing (routers), losses (aux losses), backends (dense / capacity / dropless / ragged and
the loop reference), expert_parallel (experts sharded over a mesh axis, all_to_all), grouped (the dropless machinery), gmm (grouped matmuls for ragged: megablox,
tokamax, lax.ragged_dot), layer (experts, moe_apply, MoE; `dispatch="fused"` routes with the Pallas
kernel of `psec_jax.kernels`).
"""

from psec_jax.moe.backends import (BACKENDS, MESH_BACKENDS, capacity, capacity_of, dense, dispatch, dropless,
                                   loop_reference, ragged)
from psec_jax.moe.expert_parallel import EXCHANGES, expert_parallel, ragged_all_to_all_emulated, ragged_supported
from psec_jax.moe.grouped import (SplitExpert, default_block_size, sort_assignments, split_experts, stack_experts,
                                  tail_sizes)
from psec_jax.moe.layer import (EXPERTS, MoE, gelu_expert, init_moe, moe_apply, route, routing_stats,
                                swiglu_expert)
from psec_jax.moe.losses import (DEFAULT_WEIGHTS, aux_losses, dynamic_loss, expert_fractions,
                                 load_balance, z_loss)
from psec_jax.moe.routing import RouteOutput, top_k, top_p

__all__ = ["BACKENDS", "MESH_BACKENDS", "EXCHANGES", "expert_parallel", "ragged_all_to_all_emulated", "ragged_supported", "capacity", "capacity_of", "SplitExpert", "default_block_size", "sort_assignments", "split_experts", "stack_experts", "tail_sizes", "dense", "dispatch", "dropless",
           "loop_reference", "ragged", "EXPERTS", "MoE", "gelu_expert", "init_moe", "moe_apply", "route",
           "routing_stats", "swiglu_expert", "DEFAULT_WEIGHTS", "aux_losses", "dynamic_loss",
           "expert_fractions", "load_balance", "z_loss", "RouteOutput", "top_k", "top_p"]
