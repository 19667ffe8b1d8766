"""PSEC's three training stages (and the baselines) as pure, scanned, vmappable trainers.

Every stage is ``make_*(...) -> Trainer`` with ``init(key, inputs) -> StageState``,
``chunk(state, inputs, data)`` (``steps_per_chunk`` gradient steps in one ``lax.scan``, batches sampled
on device) and ``train(key, inputs, data)`` (the whole stage in one scan), so
``jax.jit(jax.vmap(train, in_axes=(0, 0, None)))(keys, inputs, data)`` trains several seeds at once.
``inputs`` is what the stage builds on and never updates (an argument, never baked into the program as
a constant), one type per stage:

- ``pretrain`` (diffusion BC of pi_0 on the base data): ``PretrainInputs()`` (nothing); params = the
  noise net.
- ``expand`` (a new skill, advantage-weighted diffusion loss): ``ExpandInputs(base, critic)``; params =
  the adapter tree of one skill (leaves [1, ...], LoRA or MLP adapter; ``actor.as_skills(params)`` adds
  the configured, untrained scale). ``critic=None`` trains an IQL or reachability critic alongside;
  a given critic is used frozen. ``adapter="full"`` is the *scratch* baseline: a fresh full network,
  same loss, ``base=None``.
- ``compose`` (the composer trained through the composed policy on target data, everything else
  frozen): ``ComposeInputs(base, skills, actions)``; params = the composer's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import struct

from psec_jax import prng, routed
from psec_jax.data.offline import OfflineData
from psec_jax.rl import critics, diffusion, policy
from psec_jax.rl.policy import Actor

ADAPTERS = ("lora", "mlp", "full")


class PretrainInputs(NamedTuple):
    """Pretraining builds on nothing."""


class ExpandInputs(NamedTuple):
    base: Any  # pi_0's params (None for the scratch baseline, which trains a full network)
    critic: critics.CriticState | None  # a trained critic to weight with, frozen; None: train one alongside


class ComposeInputs(NamedTuple):
    base: Any  # pi_0's params
    skills: policy.Skills  # the K skills composed
    actions: jax.Array | None  # [N, K+1, A] one sampled action of each component per data state
    #                            (action mode only; ``policy.component_actions``), else None


@struct.dataclass
class StageState:
    params: Any  # what this stage trains (noise net / Skills / composer params)
    ema: Any  # Polyak average of params used for sampling (rate ``ema``; = params in compose)
    opt_state: optax.OptState
    critic: critics.CriticState | None  # expand only
    step: jax.Array  # [] int32 gradient steps taken
    key: jax.Array  # [] PRNG key; step keys are fold_in(key, step)


class Trainer(NamedTuple):
    init: Callable[[jax.Array, Any], StageState]  # (key, inputs) -> state
    chunk: Callable[[StageState, Any, OfflineData], tuple[StageState, dict]]  # (state, inputs, data)
    train: Callable[[jax.Array, Any, OfflineData], tuple[StageState, dict]]  # (key, inputs, data)
    steps_per_chunk: int
    num_chunks: int


def _check_steps(c: ml_collections.ConfigDict, stage: str) -> None:
    if c.steps < 1 or c.log_every < 1 or c.steps % c.log_every:
        raise ValueError(f"{stage}: steps ({c.steps}) must be a positive multiple of log_every ({c.log_every})")
    if c.batch_size < 1:
        raise ValueError(f"{stage}: batch_size must be >= 1, got {c.batch_size}")


def learning_rate(c: ml_collections.ConfigDict) -> optax.Schedule:
    """step -> learning rate of a stage: cosine decay from ``learning_rate`` to 0 over ``steps`` when
    ``cosine``, else constant (the official code's cosine horizons far exceed its steps: ~constant)."""
    return (
        optax.cosine_decay_schedule(c.learning_rate, c.steps) if c.cosine else optax.constant_schedule(c.learning_rate)
    )


def _optimizer(c: ml_collections.ConfigDict) -> optax.GradientTransformation:
    return optax.adamw(learning_rate(c) if c.cosine else c.learning_rate, weight_decay=c.weight_decay)


def _assemble(init: Callable, step: Callable, c: ml_collections.ConfigDict) -> Trainer:
    def chunk(state, inputs, data):
        return jax.lax.scan(lambda s, _: step(s, inputs, data), state, None, length=c.log_every)

    def train(key, inputs, data):
        state = init(key, inputs)
        return jax.lax.scan(lambda s, _: chunk(s, inputs, data), state, None, length=c.steps // c.log_every)

    return Trainer(init, chunk, train, c.log_every, c.steps // c.log_every)


def _sgd(
    loss_fn: Callable, tx: optax.GradientTransformation, state: StageState, ema_rate: float, *args
) -> tuple[StageState, jax.Array, dict]:
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, *args)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = optax.incremental_update(params, state.ema, ema_rate)
    new = state.replace(params=params, ema=ema, opt_state=opt_state, step=state.step + 1)
    return new, loss, {**aux, "grad_norm": optax.tree.norm(grads)}


def make_pretrain(actor: Actor, c: ml_collections.ConfigDict) -> Trainer:
    """Diffusion behaviour cloning of the base policy (config: steps, batch_size, learning_rate, cosine,
    weight_decay, ema, log_every). Inputs: ``PretrainInputs()``."""
    _check_steps(c, "pretrain")
    tx = _optimizer(c)

    def init(key, inputs=PretrainInputs()):  # noqa: B008 (an empty, immutable NamedTuple)
        params = actor.init_base(prng.stream(key, "params"))
        return StageState(params, params, tx.init(params), None, jnp.zeros((), jnp.int32), prng.stream(key, "steps"))

    def loss_fn(params, batch, key):
        kn, kd = jax.random.split(key)
        a_t, t, eps = diffusion.noisy_actions(actor.schedule, batch.actions, kn)
        return diffusion.noise_loss(actor.eps(params, None, None, batch.observations, a_t, t, kd), eps), {}

    def step(state, inputs, data):
        kb, kl = jax.random.split(jax.random.fold_in(state.key, state.step))
        state, loss, aux = _sgd(loss_fn, tx, state, c.ema, data.sample(kb, c.batch_size), kl)
        return state, {"bc_loss": loss, **aux}

    return _assemble(init, step, c)


OBJECTIVES = ("advantage", "bc")


def make_expand(
    actor: Actor, c: ml_collections.ConfigDict, critic_config: ml_collections.ConfigDict, adapter: str = "lora"
) -> Trainer:
    """A new skill on target data with the weighted diffusion loss (config: steps, batch_size,
    learning_rate, cosine, weight_decay, ema, log_every, objective) and a critic of kind
    ``critic_config.kind``. ``adapter``: "lora" / "mlp" (must match ``actor.kind``) or "full" (scratch).
    ``objective``: "advantage" weights each sample by the critic's actor weight, "bc" weights all 1
    (the critic still trains: acting may rank candidates by it).

    Inputs: ``ExpandInputs(base, critic)``. With ``critic=None`` (PSEC) the critic trains alongside and
    the actor's weights come from it before each step; a given critic (e.g. one shared by several
    baselines trained on the same data, which saves its cost) weights every step frozen and is
    ``state.critic``."""
    _check_steps(c, "expand")
    if adapter not in ADAPTERS:
        raise ValueError(f"unknown adapter {adapter!r}; choose from {ADAPTERS}")
    if adapter != "full" and adapter != actor.kind:
        raise ValueError(f"adapter {adapter!r} does not match the actor's skill kind {actor.kind!r}")
    objective = c.get("objective", "advantage")
    if objective not in OBJECTIVES:
        raise ValueError(f"expand: unknown objective {objective!r}; choose from {OBJECTIVES}")
    tx = _optimizer(c)
    critic = critics.make_critic(actor.obs_dim, actor.act_dim, critic_config)

    def init(key, inputs: ExpandInputs):
        if adapter == "full":
            params = actor.init_base(prng.stream(key, "params"))
        else:
            # only the adapter is optimised; its scale is configuration (actor.as_skills)
            params = actor.init_skill(prng.stream(key, "skill"), inputs.base).params
        critic_state = critic.init(prng.stream(key, "critic")) if inputs.critic is None else inputs.critic
        return StageState(
            params, params, tx.init(params), critic_state, jnp.zeros((), jnp.int32), prng.stream(key, "steps")
        )

    def loss_fn(params, base, batch, weights, key):
        kn, kd = jax.random.split(key)
        a_t, t, eps = diffusion.noisy_actions(actor.schedule, batch.actions, kn)
        if adapter == "full":
            eps_hat = actor.eps(params, None, None, batch.observations, a_t, t, kd)
        else:
            eps_hat = actor.eps(base, actor.as_skills(params), None, batch.observations, a_t, t, kd)
        return diffusion.noise_loss(eps_hat, eps, weights), {}

    def step(state, inputs: ExpandInputs, data):
        kb, kl = jax.random.split(jax.random.fold_in(state.key, state.step))
        batch = data.sample(kb, c.batch_size)
        if inputs.critic is None:
            critic_state, critic_metrics = critic.update(state.critic, batch)
            weights = critic_metrics.pop("actor_weights")
            state = state.replace(critic=critic_state)
        else:
            weights, critic_metrics = critic.actor_weights(inputs.critic, batch), {}
        if objective == "bc":
            weights = jnp.ones_like(weights)
        state, loss, aux = _sgd(loss_fn, tx, state, c.ema, inputs.base, batch, weights, kl)
        return state, {"actor_loss": loss, "weight_mean": jnp.mean(weights), **aux, **critic_metrics}

    return _assemble(init, step, c)


ALPHA_REG_FORMS = ("mean", "pairs")


def alpha_regulariser(alpha: jax.Array, targets: tuple[float, float], form: str = "mean") -> jax.Array:
    """The official PSEC composer's pull of composition scales alpha [B, K] (newest skill last) towards
    the scale the newest skill was trained at. With ``(t0, t1) = targets``:

    ``"pairs"`` (the official semantics for any K): ``sum_i<K (mean (alpha_i + alpha_K) / 2 - t0)^2 +
    (mean alpha_K - t1)^2``. For K = 2 this is the official ``(mean alpha - t0)^2 + (mean alpha_1 - t1)^2``
    exactly; its unique minimum is alpha_K = t1 and every older alpha_i = 2 t0 - t1 (16 and 0 for the
    official (8, 16)); for K = 1 it is alpha = t1.
    ``"mean"`` (the earlier port, kept so its results reproduce): ``(mean alpha - t0)^2 + (mean alpha_K -
    t1)^2`` over all K skills; for K = 1 both terms act on one alpha and pin it at (t0 + t1) / 2 = 12.
    """
    if alpha.ndim != 2:
        raise ValueError(f"alpha_regulariser: alpha must be [batch, skills], got shape {alpha.shape}")
    if form not in ALPHA_REG_FORMS:
        raise ValueError(f"alpha_regulariser: form must be one of {ALPHA_REG_FORMS}, got {form!r}")
    newest = jnp.mean(alpha[:, -1])
    if form == "mean":
        return (jnp.mean(alpha) - targets[0]) ** 2 + (newest - targets[1]) ** 2
    pairs = (jnp.mean(alpha[:, :-1], axis=0) + newest) / 2  # [K-1] mean of each (older, newest) pair
    return jnp.sum((pairs - targets[0]) ** 2) + (newest - targets[1]) ** 2


class _ComposeBatch(NamedTuple):
    observations: jax.Array  # [B, obs_dim]
    actions: jax.Array  # [B, A]
    component_actions: jax.Array | None  # [B, K+1, A] (action mode only)


def make_compose(actor: Actor, composer: policy.Composer, mode: str, c: ml_collections.ConfigDict) -> Trainer:
    """The composer trained through the composed policy on target data (config: steps, batch_size,
    learning_rate, log_every, network_dropout). ``"param"`` / ``"noise"`` modes use the diffusion loss
    through the frozen network, deterministic as at acting time unless ``network_dropout``; ``"action"``
    regresses the weighted sum of the components' sampled actions onto the data's: for it the inputs'
    ``actions`` [N, K+1, A] hold one action of each component per data state
    (``policy.component_actions``), sampled once rather than at every step. Inputs: ``ComposeInputs``.

    ``alpha_reg`` > 0 (``"param"`` mode only, where a weight scales a skill's LoRA update) adds
    ``alpha_reg * alpha_regulariser(alpha, alpha_targets, alpha_reg_form)``, ``alpha = w * skill scale``:
    the official composer's pull towards the LoRA scale it was trained at."""
    _check_steps(c, "compose")
    policy.num_outputs(mode, 1)  # validates mode
    tx = optax.adam(c.learning_rate)
    alpha_reg = float(c.get("alpha_reg", 0.0)) if mode == "param" else 0.0
    targets = tuple(c.get("alpha_targets", (8.0, 16.0)))
    form = c.get("alpha_reg_form", "mean")

    def init(key, inputs: ComposeInputs):
        params = composer.init(prng.stream(key, "composer"))
        return StageState(params, params, tx.init(params), None, jnp.zeros((), jnp.int32), prng.stream(key, "steps"))

    def loss_fn(params, inputs: ComposeInputs, batch, key):
        kn, kd = jax.random.split(key)
        s = batch.observations
        w = composer.apply(params, s)
        if mode == "action":
            a = jnp.einsum("bj,bja->ba", w, batch.component_actions)
            return jnp.mean(jnp.sum((a - batch.actions) ** 2, -1)), {"weight_mean": jnp.mean(w)}
        a_t, t, eps = diffusion.noisy_actions(actor.schedule, batch.actions, kn)
        eps_hat = policy.composed_eps(
            actor, inputs.base, inputs.skills, mode, w, s, a_t, t, kd if c.network_dropout else None
        )
        loss = diffusion.noise_loss(eps_hat, eps)
        metrics = {}
        if isinstance(w, routed.SkillRoute):  # its aux losses (load balance, dynamic, z) at its config's weights
            aux = routed.aux_losses(w)
            metrics = {"noise_loss": loss, "aux_loss": aux["total"]}
            metrics["skills_per_state"] = jnp.mean(w.route.experts_per_token.astype(jnp.float32))
            metrics["weight_mean"] = jnp.mean(w.dense_weights())
            # no alpha regulariser: its optimum (the newest skill alone at its full scale) is a route that
            # always selects one skill with probability 1, which would decide the routing, not the data
            return loss + aux["total"], metrics
        metrics["weight_mean"] = jnp.mean(w)
        if not alpha_reg:
            return loss, metrics
        reg = alpha_regulariser(w * inputs.skills.scales, targets, form)
        return loss + alpha_reg * reg, {**metrics, "alpha_reg": reg, "noise_loss": loss}

    def step(state, inputs: ComposeInputs, data):
        kb, kl = jax.random.split(jax.random.fold_in(state.key, state.step))
        idx = jax.random.randint(kb, (c.batch_size,), 0, data.size)
        if (mode == "action") != (inputs.actions is not None):
            raise ValueError(f"compose: ComposeInputs.actions must be given in action mode only (mode {mode!r})")
        batch = _ComposeBatch(
            data.observations[idx], data.actions[idx], inputs.actions[idx] if mode == "action" else None
        )
        state, loss, aux = _sgd(loss_fn, tx, state, 1.0, inputs, batch, kl)
        return state, {"compose_loss": loss, **aux}

    return _assemble(init, step, c)
