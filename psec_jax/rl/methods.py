"""The methods PSEC is compared with, as data: what policy each acts with and how it composes skills.

A setting's method table maps names to ``Method``s; the runner trains what the table's methods need
(pi_0, the skills of each kind, scratch networks, composers) and evaluates every method the same way.
"""

from __future__ import annotations

from typing import NamedTuple

from psec_jax.rl import policy

POLICIES = ("prior", "skills", "composed", "scratch")


class Method(NamedTuple):
    """One row of a method table."""

    policy: str  # "prior": pi_0 alone; "skills": pi_0 + ``skills`` at weight 1; "composed": pi_0 +
    #              all skills composed; "scratch": a full network trained on the target skill's data
    skill_kind: str = "lora"  # "lora" or "mlp": the kind of skills used ("skills" / "composed")
    skills: tuple[str, ...] = ()  # "skills": the skills applied at weight 1
    mode: str = "param"  # "composed": composition space, "param" (PSEC), "noise" (NSEC), "action" (ASEC)
    # "composed": "context" (AlphaNet, trained), "fixed" (config weights) or "routed" (the AlphaNet's outputs
    # route each state to its smallest set of skills: config.compose.routing; "param" mode only)
    composer: str = "context"
    data: str = ""  # "scratch": key of its training data in the setting's data ("" = the target skill's)
    objective: str = ""  # "scratch": its loss ("" = config.expand.objective; "bc": plain diffusion BC)
    candidates: int = 0  # actions sampled per state (0 = config.eval.candidates; 1 = the policy's own sample)
    budget: str = ""  # "scratch": the config stage whose steps, batch and optimiser it trains with ("" = expand)


PRIOR = Method("prior")
SCRATCH = Method("scratch")
PSEC = Method("composed", "lora", mode="param")
NSEC = Method("composed", "lora", mode="noise")
ASEC = Method("composed", "lora", mode="action")
PSEC_MLP = Method("composed", "mlp", mode="param")
PSEC_FIXED = Method("composed", "lora", mode="param", composer="fixed")
PSEC_ROUTED = Method("composed", "lora", mode="param", composer="routed")


def one_skill(name: str) -> Method:
    """pi_0 plus the LoRA skill ``name`` at weight 1."""
    return Method("skills", "lora", skills=(name,))


def check_table(table: dict[str, Method]) -> None:
    """ValueError for a malformed method table (a programming error, not a user's)."""
    for name, m in table.items():
        if m.policy not in POLICIES:
            raise ValueError(f"method {name!r}: unknown policy {m.policy!r}; choose from {POLICIES}")
        if m.skill_kind not in policy.SKILL_KINDS:
            raise ValueError(f"method {name!r}: unknown skill kind {m.skill_kind!r}")
        if m.objective not in ("", "advantage", "bc"):
            raise ValueError(f"method {name!r}: unknown objective {m.objective!r}")
        if m.candidates < 0 or (m.policy != "scratch" and (m.data or m.objective or m.budget)):
            raise ValueError(f"method {name!r}: data / objective / budget are for scratch methods; candidates >= 0")
        if m.budget not in ("", "expand", "pretrain"):
            raise ValueError(f"method {name!r}: unknown budget {m.budget!r} (expand, pretrain)")
        if m.policy == "composed":
            policy.num_outputs(m.mode, 1)  # validates the mode
            if m.composer not in policy.COMPOSER_KINDS:
                raise ValueError(f"method {name!r}: unknown composer {m.composer!r}")
            if m.composer == "routed" and (m.mode != "param" or m.skill_kind != "lora"):
                raise ValueError(f"method {name!r}: a routed composer composes LoRA skills in parameter space")


def check_methods(methods: tuple[str, ...], table: dict[str, Method]) -> None:
    """ValueError naming unknown entries of ``config.methods`` (or an empty or repeating list)."""
    unknown = [m for m in methods if m not in table]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown} in config.methods; choose from {tuple(table)}")
    if not methods:
        raise ValueError("config.methods is empty")
    if len(set(methods)) != len(methods):
        raise ValueError(f"config.methods={tuple(methods)} repeats a method")
