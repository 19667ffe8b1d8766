"""Offline critics: IQL (twin Q, expectile V) for reward skills, the reachability critic for safety.

The targets and weights are written for one example (rlax style) and vmapped over the batch:

- reward (IQL): V(s) <- expectile_tau of min_i Q'_i(s, a); Q_i(s, a) <- r + gamma (1 - done) V(s');
  actor weight ``clip(exp(beta (Q' - V)), 0, max_weight)``.
- cost (reachability, FISOR style): the cost is mapped to h = +25 if c > 0 else -1;
  Qc_i(s, a) <- (1 - gamma) h + gamma max(h, Vc(s')) (h alone at a terminal); Vc <- the *reversed*
  expectile of max_i Qc'_i (it tracks the lower, i.e. safest, values). A state is feasible where
  Vc <= 0. Actor weight ``1[Qc < Vc] clip(exp(beta (Vc - Qc)), 0, max_weight)``.

Q' is a Polyak-averaged target. ``make_iql`` and ``make_reachability`` build the two critics from these
functions; ``make_critic`` picks one by ``config.kind``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import struct

from psec_jax.envs.base import Transition
from psec_jax.rl.networks import TwinQ, ValueNet

COST_UNSAFE, COST_SAFE = 25.0, -1.0
KINDS = ("reward", "cost")


def default_config(kind: str = "reward") -> ml_collections.ConfigDict:
    """Critic hyperparameters (PSEC / IQL defaults)."""
    c = ml_collections.ConfigDict()
    c.kind = kind  # "reward" (IQL) or "cost" (reachability critic)
    c.hidden = (256, 256)  # MLP widths of Q and V
    c.learning_rate = 3e-4  # adam
    c.gamma = 0.99  # discount
    c.tau = 0.005  # Polyak rate of the target Q
    c.expectile = 0.7 if kind == "reward" else 0.9  # IQL expectile; reversed for cost
    c.beta = 3.0 if kind == "reward" else 1.0  # temperature of the actor weights
    c.max_weight = 100.0  # clip of the actor weights
    return c


# ------------------------------------------------------------------- single-example targets and weights


def iql_target(reward: jax.Array, done: jax.Array, next_v: jax.Array, gamma: float) -> jax.Array:
    """Q target ``r + gamma (1 - done) V(s')`` of one transition (all scalars)."""
    return reward + gamma * (1 - done) * next_v


def reachability_target(cost: jax.Array, done: jax.Array, next_v: jax.Array, gamma: float) -> jax.Array:
    """Qc target of one transition: h = +25 if cost > 0 else -1; ``h`` at a terminal, else
    ``(1 - gamma) h + gamma max(h, Vc(s'))``."""
    h = jnp.where(cost > 0, COST_UNSAFE, COST_SAFE)
    return jnp.where(done > 0, h, (1 - gamma) * h + gamma * jnp.maximum(h, next_v))


def advantage_weight(q: jax.Array, v: jax.Array, beta: float, max_weight: float) -> jax.Array:
    """IQL's actor weight ``clip(exp(beta (Q - V)), 0, max_weight)`` of one state-action."""
    return jnp.clip(jnp.exp(beta * (q - v)), 0.0, max_weight)


def feasibility_weight(qc: jax.Array, vc: jax.Array, beta: float, max_weight: float) -> jax.Array:
    """The reachability actor weight ``1[Qc < Vc] clip(exp(beta (Vc - Qc)), 0, max_weight)``."""
    return (qc < vc) * jnp.clip(jnp.exp(beta * (vc - qc)), 0.0, max_weight)


def expectile_loss(diff: jax.Array, expectile: float) -> jax.Array:
    """Mean of ``|expectile - 1[diff < 0]| diff^2``."""
    return jnp.mean(jnp.abs(expectile - (diff < 0).astype(diff.dtype)) * diff**2)


# ------------------------------------------------------------------- the critic


@struct.dataclass
class CriticState:
    q: Any  # TwinQ params (leading ensemble axis 2 inside)
    q_target: Any  # Polyak average of q
    v: Any  # ValueNet params
    q_opt: optax.OptState
    v_opt: optax.OptState


class Critic(NamedTuple):
    """Pure functions of one critic (reward or cost)."""

    init: Callable[[jax.Array], CriticState]  # key -> state
    update: Callable[[CriticState, Transition], tuple[CriticState, dict]]  # one gradient step on a batch
    # metrics of update include "actor_weights" [B]: the weights of the diffusion loss computed from the
    # critic before the step (so the actor does not pay for another forward pass)
    score: Callable[[CriticState, jax.Array, jax.Array], jax.Array]  # (s [B,obs], a [B,A]) -> [B], higher is better
    actor_weights: Callable[[CriticState, Transition], jax.Array]  # batch -> [B] weights of the diffusion loss


class _Rule(NamedTuple):
    """What distinguishes one critic kind from the other."""

    pick: Callable[[jax.Array], jax.Array]  # [2, B] twin values -> [B]
    residual: Callable[[jax.Array, jax.Array], jax.Array]  # (q [B], v [B]) -> the expectile loss's argument
    target: Callable[[Transition, jax.Array], jax.Array]  # (batch, V(s') [B]) -> Q target [B]
    weight: Callable[[jax.Array, jax.Array], jax.Array]  # (q [B], v [B]) -> actor weights [B]
    sign: float  # score = sign * Q (higher is better)


def make_iql(obs_dim: int, act_dim: int, config: ml_collections.ConfigDict) -> Critic:
    """The IQL critic of a reward skill: pessimistic twin (min), expectile V, advantage weights."""
    target = jax.vmap(lambda r, d, nv: iql_target(r, d, nv, config.gamma))
    weight = jax.vmap(lambda q, v: advantage_weight(q, v, config.beta, config.max_weight))
    rule = _Rule(
        lambda q: jnp.min(q, 0), lambda q, v: q - v, lambda b, nv: target(b.rewards, b.terminals, nv), weight, 1.0
    )
    return _make(obs_dim, act_dim, config, rule)


def make_reachability(obs_dim: int, act_dim: int, config: ml_collections.ConfigDict) -> Critic:
    """The reachability critic of a cost skill: pessimistic twin (max), reversed expectile Vc,
    feasibility weights; scores are -Qc (higher is safer)."""
    target = jax.vmap(lambda c, d, nv: reachability_target(c, d, nv, config.gamma))
    weight = jax.vmap(lambda q, v: feasibility_weight(q, v, config.beta, config.max_weight))
    # reversed expectile: Vc follows the lower (safer) action values
    rule = _Rule(
        lambda q: jnp.max(q, 0), lambda q, v: v - q, lambda b, nv: target(b.costs, b.terminals, nv), weight, -1.0
    )
    return _make(obs_dim, act_dim, config, rule)


def make_critic(obs_dim: int, act_dim: int, config: ml_collections.ConfigDict) -> Critic:
    """``make_iql`` (``config.kind == "reward"``) or ``make_reachability`` (``"cost"``)."""
    if config.kind not in KINDS:
        raise ValueError(f"critic kind must be 'reward' or 'cost', got {config.kind!r}")
    return (make_iql if config.kind == "reward" else make_reachability)(obs_dim, act_dim, config)


def _make(obs_dim: int, act_dim: int, config: ml_collections.ConfigDict, rule: _Rule) -> Critic:
    qnet, vnet = TwinQ(tuple(config.hidden)), ValueNet(tuple(config.hidden))
    q_tx, v_tx = optax.adam(config.learning_rate), optax.adam(config.learning_rate)

    def init(key: jax.Array) -> CriticState:
        kq, kv = jax.random.split(key)
        q = qnet.init(kq, jnp.zeros((1, obs_dim)), jnp.zeros((1, act_dim)))["params"]
        v = vnet.init(kv, jnp.zeros((1, obs_dim)))["params"]
        return CriticState(q, q, v, q_tx.init(q), v_tx.init(v))

    def q_of(params, s, a):
        return rule.pick(qnet.apply({"params": params}, s, a))

    def weights(q: jax.Array, v: jax.Array) -> jax.Array:
        return jax.lax.stop_gradient(rule.weight(q, v))

    def update(state: CriticState, b: Transition) -> tuple[CriticState, dict]:
        q_t = q_of(state.q_target, b.observations, b.actions)

        def v_loss(v):
            vs = vnet.apply({"params": v}, b.observations)
            return expectile_loss(rule.residual(q_t, vs), config.expectile), vs

        (vl, vs), vg = jax.value_and_grad(v_loss, has_aux=True)(state.v)
        v_upd, v_opt = v_tx.update(vg, state.v_opt, state.v)
        v = optax.apply_updates(state.v, v_upd)
        target = rule.target(b, vnet.apply({"params": v}, b.next_observations))

        def q_loss(q):
            qs = qnet.apply({"params": q}, b.observations, b.actions)
            return jnp.mean(jnp.sum((qs - target) ** 2, 0)), qs

        (ql, qs), qg = jax.value_and_grad(q_loss, has_aux=True)(state.q)
        q_upd, q_opt = q_tx.update(qg, state.q_opt, state.q)
        q = optax.apply_updates(state.q, q_upd)
        q_target = optax.incremental_update(q, state.q_target, config.tau)
        new = CriticState(q, q_target, v, q_opt, v_opt)
        return new, {
            "v_loss": vl,
            "q_loss": ql,
            "q_mean": jnp.mean(qs),
            "v_mean": jnp.mean(vs),
            "actor_weights": weights(q_t, vs),
        }

    def score(state: CriticState, s: jax.Array, a: jax.Array) -> jax.Array:
        q = q_of(state.q_target, s, a)
        return -q if rule.sign < 0 else q

    def actor_weights(state: CriticState, b: Transition) -> jax.Array:
        return weights(q_of(state.q_target, b.observations, b.actions), vnet.apply({"params": state.v}, b.observations))

    return Critic(init, update, score, actor_weights)
