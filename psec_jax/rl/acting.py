"""Acting: sample candidate actions from a policy and keep one by a choice rule over critic scores.

Every PSEC setting acts through ``select`` with one of ``RULES`` (each written for one state and
vmapped over the batch):

- ``"argmax_q"``: the candidate the reward critic scores highest;
- ``"argmin_qc"``: the safest candidate, the lowest Qc (the cost critic's score is -Qc);
- ``"feasible_then_reward"``: among candidates the cost critic deems feasible (score >= 0, i.e.
  Qc <= 0), the one the reward critic scores highest; where none is feasible, the safest.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from psec_jax.data.normalize import Normalizer
from psec_jax.rl import critics as critics_lib
from psec_jax.rl.evaluate import ActFn

RULES = ("argmax_q", "argmin_qc", "feasible_then_reward")
NEEDS = {"argmax_q": ("reward",), "argmin_qc": ("cost",), "feasible_then_reward": ("reward", "cost")}

SampleFn = Callable[[jax.Array, jax.Array], jax.Array]  # (obs [M, obs_dim], key) -> actions [M, A]
ScoreFn = Callable[[jax.Array, jax.Array], jax.Array]  # (obs [M, obs_dim], actions [M, A]) -> [M], higher is better


def check_rule(rule: str) -> None:
    """ValueError naming an unknown choice rule."""
    if rule not in RULES:
        raise ValueError(f"unknown acting rule {rule!r}; choose from {RULES}")


def choose(rule: str, scores: Mapping[str, jax.Array]) -> jax.Array:
    """Index [] of the chosen candidate of one state. scores: ``{"reward": [N], "cost": [N]}`` (the
    critics' scores, higher is better; a cost score is -Qc), those the rule needs (``NEEDS``)."""
    check_rule(rule)
    if rule == "argmax_q":
        return jnp.argmax(scores["reward"])
    safety = scores["cost"]
    if rule == "argmin_qc":
        return jnp.argmax(safety)
    feasible = safety >= 0
    best_feasible = jnp.argmax(jnp.where(feasible, scores["reward"], -jnp.inf))
    return jnp.where(jnp.any(feasible), best_feasible, jnp.argmax(safety))


def select(
    sample_fn: SampleFn,
    score_fns: Mapping[str, ScoreFn],
    rule: str,
    obs: jax.Array,
    key: jax.Array,
    num_candidates: int,
) -> jax.Array:
    """For each of B states draw ``num_candidates`` actions and keep one by ``rule``.

    score_fns: ``{"reward": ..., "cost": ...}`` (at least those ``NEEDS[rule]`` names). obs:
    [B, obs_dim]. Returns actions [B, A]."""
    check_rule(rule)
    if obs.ndim != 2:
        raise ValueError(f"select: observations must be [B, obs_dim], got shape {obs.shape}")
    missing = [n for n in NEEDS[rule] if n not in score_fns]
    if missing:
        raise ValueError(f"acting rule {rule!r} needs the {missing} critic(s); have {sorted(score_fns)}")
    b = obs.shape[0]
    rep = jnp.repeat(obs, num_candidates, axis=0)  # [B * N, obs_dim], the candidates of a state contiguous
    actions = sample_fn(rep, key)
    if num_candidates == 1:
        return actions
    scores = {n: score_fns[n](rep, actions).reshape(b, num_candidates) for n in NEEDS[rule]}
    best = jax.vmap(lambda s: choose(rule, s))(scores)
    return actions.reshape(b, num_candidates, -1)[jnp.arange(b), best]


def make_act(
    sampler: Callable[[Any, jax.Array, jax.Array], jax.Array],
    critics: Mapping[str, critics_lib.Critic],
    rule: str,
    num_candidates: int,
    normalizer: Normalizer | None = None,
) -> ActFn:
    """An acting function ``(params, obs [E, obs_dim], key) -> actions [E, A]``.

    ``sampler(params["policy"], obs, key)`` draws actions; ``params["critics"][name]`` are the states
    of ``critics[name]`` (those ``rule`` needs). Raw observations are standardised by ``normalizer``
    first (the one the policy was trained with)."""
    check_rule(rule)
    needed = {n: critics[n] for n in NEEDS[rule]}

    def act(params: Mapping[str, Any], obs: jax.Array, key: jax.Array) -> jax.Array:
        if normalizer is not None:
            obs = normalizer(obs)
        scores = {n: (lambda c, st: lambda s, a: c.score(st, s, a))(c, params["critics"][n]) for n, c in needed.items()}
        return select(lambda s, k: sampler(params["policy"], s, k), scores, rule, obs, key, num_candidates)

    return act
