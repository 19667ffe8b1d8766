"""Routed skill composition: a skill library as a layer of LoRA experts under top-k / top-p routing.

    route = routed.route_skills(logits, config, scales)       # logits [T, K] from the state (context) net
    y = lora.lora_dense(x, kernel, bias, adapters, route)     # x W0 + b + sum_{i in S(s)} w_i(s) (x A_i) B_i
    aux = routed.aux_losses(route)                            # load balance, dynamic (entropy), z

PSEC's context-aware composer gives every skill a weight in every state. Here a router picks, per state,
the smallest set of skills whose routing mass exceeds p (the MoE paper's top-p; or the k most probable),
and only those skills run: the selected (state, skill) pairs are grouped by skill and each skill's A and
B multiply exactly its rows (`psec_jax.moe`'s dispatch back-ends, the same grouping as tokens by expert),
so the adapters cost the mean number of selected skills per state, not K.

Why a package of its own: it joins `psec_jax.lora` (the factored LoRA forward, which takes a
`SkillRoute` where it takes dense weights) and `psec_jax.moe` (routers, back-ends, aux losses), and
neither of those names the other. Modules: skills (`SkillRoute`, `route_skills`, `lora_expert`,
`aux_losses`, `routing_stats`).
"""

from psec_jax.routed.skills import (
    BACKENDS,
    SkillRoute,
    aux_losses,
    check_routing,
    lora_expert,
    route_skills,
    routing_stats,
)

__all__ = ["BACKENDS", "SkillRoute", "aux_losses", "check_routing", "lora_expert", "route_skills", "routing_stats"]
