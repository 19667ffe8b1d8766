"""Offline critics: IQL (twin Q, expectile V) for reward skills, the reachability critic for safety.

Reward (IQL): V(s) <- expectile_tau of min_i Q'_i(s, a); Q_i(s, a) <- r + gamma (1 - done) V(s');
Q' is a Polyak-averaged target. Actor weights: ``clip(exp(beta (min Q' - V)), 0, max_weight)``.

Cost (reachability, FISOR style): the cost is mapped to h = +25 if c > 0 else -1;
Qc_i(s, a) <- (1 - gamma) h + gamma max(h, Vc(s')) (h alone at a terminal), Vc <- the *reversed*
expectile of max_i Qc'_i (it tracks the lower, i.e. safest, values). A state is feasible where
Vc <= 0. Actor weights: ``1[Qc < Vc] clip(exp(beta (Vc - Qc)), 0, max_weight)``.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import struct

from psec_jax.envs.base import Transition
from psec_jax.rl.networks import TwinQ, ValueNet

COST_UNSAFE, COST_SAFE = 25.0, -1.0


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


def expectile_loss(diff: jax.Array, expectile: float) -> jax.Array:
    """Mean of ``|expectile - 1[diff < 0]| diff^2``."""
    return jnp.mean(jnp.abs(expectile - (diff < 0).astype(diff.dtype)) * diff**2)


def make_critic(obs_dim: int, act_dim: int, config: ml_collections.ConfigDict) -> Critic:
    """A reward (IQL) or cost (reachability) critic for observations [obs_dim], actions [act_dim]."""
    if config.kind not in ("reward", "cost"):
        raise ValueError(f"critic kind must be 'reward' or 'cost', got {config.kind!r}")
    cost = config.kind == "cost"
    qnet, vnet = TwinQ(tuple(config.hidden)), ValueNet(tuple(config.hidden))
    q_tx, v_tx = optax.adam(config.learning_rate), optax.adam(config.learning_rate)
    # cost critics are pessimistic by taking the larger of the twins, reward critics the smaller
    pick = (lambda q: jnp.max(q, 0)) if cost else (lambda q: jnp.min(q, 0))

    def init(key: jax.Array) -> CriticState:
        kq, kv = jax.random.split(key)
        q = qnet.init(kq, jnp.zeros((1, obs_dim)), jnp.zeros((1, act_dim)))["params"]
        v = vnet.init(kv, jnp.zeros((1, obs_dim)))["params"]
        return CriticState(q, q, v, q_tx.init(q), v_tx.init(v))

    def q_of(params, s, a):
        return pick(qnet.apply({"params": params}, s, a))

    def update(state: CriticState, b: Transition) -> tuple[CriticState, dict]:
        q_t = q_of(state.q_target, b.observations, b.actions)

        def v_loss(v):
            vs = vnet.apply({"params": v}, b.observations)
            # cost: reversed expectile, so Vc follows the lower (safer) action values
            return (expectile_loss(vs - q_t, config.expectile) if cost
                    else expectile_loss(q_t - vs, config.expectile)), vs

        (vl, vs), vg = jax.value_and_grad(v_loss, has_aux=True)(state.v)
        v_upd, v_opt = v_tx.update(vg, state.v_opt, state.v)
        v = optax.apply_updates(state.v, v_upd)
        next_v = vnet.apply({"params": v}, b.next_observations)
        done = b.terminals
        if cost:
            h = jnp.where(b.costs > 0, COST_UNSAFE, COST_SAFE)
            target = jnp.where(done > 0, h, (1 - config.gamma) * h + config.gamma * jnp.maximum(h, next_v))
        else:
            target = b.rewards + config.gamma * (1 - done) * next_v

        def q_loss(q):
            qs = qnet.apply({"params": q}, b.observations, b.actions)
            return jnp.mean(jnp.sum((qs - target) ** 2, 0)), qs

        (ql, qs), qg = jax.value_and_grad(q_loss, has_aux=True)(state.q)
        q_upd, q_opt = q_tx.update(qg, state.q_opt, state.q)
        q = optax.apply_updates(state.q, q_upd)
        q_target = optax.incremental_update(q, state.q_target, config.tau)
        new = CriticState(q, q_target, v, q_opt, v_opt)
        return new, {"v_loss": vl, "q_loss": ql, "q_mean": jnp.mean(qs), "v_mean": jnp.mean(vs),
                     "actor_weights": _weights(q_t, vs)}

    def _weights(q: jax.Array, v: jax.Array) -> jax.Array:
        if cost:
            w = (q < v) * jnp.clip(jnp.exp(config.beta * (v - q)), 0.0, config.max_weight)
        else:
            w = jnp.clip(jnp.exp(config.beta * (q - v)), 0.0, config.max_weight)
        return jax.lax.stop_gradient(w)

    def score(state: CriticState, s: jax.Array, a: jax.Array) -> jax.Array:
        q = q_of(state.q_target, s, a)
        return -q if cost else q

    def actor_weights(state: CriticState, b: Transition) -> jax.Array:
        return _weights(q_of(state.q_target, b.observations, b.actions), vnet.apply({"params": state.v}, b.observations))

    return Critic(init, update, score, actor_weights)
