"""Soft Actor-Critic, written for this jax (brax's trainers need `jax.device_put_replicated`).

The whole training step (act in `num_envs` environments, store the transitions in an on-device
replay buffer, `updates_per_step` gradient updates) is one pure function; `make_train(env, config)`
returns `init(key)` and `run(state, num_iterations)` (a jitted `lax.scan`), so the driver
(`psec_jax.data.behavior`) only loops over evaluation chunks. Hyperparameters follow MuJoCo
Playground's published DMC SAC settings where they exist (128 envs, batch 512, 8 updates per env
step, learning rate 1e-3, discount 0.99, layer-normed critics, observation normalisation, 8192
random-action transitions before learning). Differences from Brax's SAC: target entropy
-action_size (Brax: -0.5 action_size), a 1M-transition replay (Brax: 4M), and the actor's
log-std clipped to [-5, 2] (Brax: softplus std plus a floor).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import struct

from psec_jax import envs as envs_lib
from psec_jax import prng
from psec_jax.data.normalize import RunningMoments
from psec_jax.envs import rollout

LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0


def default_config() -> ml_collections.ConfigDict:
    """SAC hyperparameters (Playground's DMC SAC settings)."""
    c = ml_collections.ConfigDict()
    c.num_envs = 128  # parallel environments stepped per iteration
    c.batch_size = 512  # replay samples per gradient update
    c.updates_per_step = 8  # gradient updates per iteration (per num_envs env steps)
    c.learning_rate = 1e-3  # adam, actor, critic and temperature
    c.discount = 0.99  # gamma
    c.tau = 0.005  # target critic Polyak rate
    c.hidden = (256, 256)  # actor and critic MLP widths
    c.replay_size = 1_000_000  # transitions kept on device
    c.min_replay = 8192  # transitions collected with uniform random actions before learning
    c.reward_scale = 1.0  # rewards are multiplied by this inside the critic target
    c.init_alpha = 1.0  # initial entropy temperature (target entropy = -action_size)
    return c


class Actor(nn.Module):
    """obs -> (mean [act], log_std [act]) of a tanh-squashed Gaussian."""

    hidden: tuple[int, ...]
    action_size: int

    @nn.compact
    def __call__(self, obs: jax.Array) -> tuple[jax.Array, jax.Array]:
        h = obs
        for width in self.hidden:
            h = nn.relu(nn.Dense(width)(h))
        out = nn.Dense(2 * self.action_size)(h)
        mean, log_std = jnp.split(out, 2, axis=-1)
        return mean, jnp.clip(log_std, LOG_STD_MIN, LOG_STD_MAX)


class TwinCritic(nn.Module):
    """(obs, action) -> Q values [2] of two independent layer-normed MLPs."""

    hidden: tuple[int, ...]

    @nn.compact
    def __call__(self, obs: jax.Array, action: jax.Array) -> jax.Array:
        def q(x: jax.Array) -> jax.Array:
            for width in self.hidden:
                x = nn.relu(nn.LayerNorm()(nn.Dense(width)(x)))
            return nn.Dense(1)(x)[..., 0]

        x = jnp.concatenate([obs, action], -1)
        return jnp.stack([q(x), q(x)], -1)


def sample_action(actor: Actor, params: Any, obs: jax.Array, key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Reparameterised tanh-Gaussian sample for one normalised obs. Returns (action [act], log_prob [])."""
    mean, log_std = actor.apply(params, obs)
    std = jnp.exp(log_std)
    u = mean + std * jax.random.normal(key, mean.shape)
    logp = jnp.sum(-0.5 * ((u - mean) / std) ** 2 - log_std - 0.5 * jnp.log(2 * jnp.pi), -1)
    logp -= jnp.sum(2 * (jnp.log(2.0) - u - jax.nn.softplus(-2 * u)), -1)  # log|d tanh(u)/du|
    return jnp.tanh(u), logp


def deterministic_action(actor: Actor, params: Any, moments: RunningMoments, obs: jax.Array) -> jax.Array:
    """tanh(mean) for a raw (unnormalised) obs [..., obs_dim]."""
    mean, _ = actor.apply(params, moments.normalizer()(obs))
    return jnp.tanh(mean)


@struct.dataclass
class Replay:
    """Circular on-device buffer of transitions."""

    data: envs_lib.Transition  # each field [capacity, ...]
    insert: jax.Array  # [] int32, next write position
    size: jax.Array  # [] int32, valid rows

    def add(self, batch: envs_lib.Transition) -> Replay:
        """Append a batch (fields [n, ...]), overwriting the oldest rows when full."""
        capacity = self.data.rewards.shape[0]
        n = batch.rewards.shape[0]
        idx = (self.insert + jnp.arange(n)) % capacity
        data = jax.tree.map(lambda buf, x: buf.at[idx].set(x.astype(buf.dtype)), self.data, batch)
        return Replay(data, (self.insert + n) % capacity, jnp.minimum(self.size + n, capacity))

    def sample(self, key: jax.Array, batch_size: int) -> envs_lib.Transition:
        idx = jax.random.randint(key, (batch_size,), 0, jnp.maximum(self.size, 1))
        return jax.tree.map(lambda buf: buf[idx], self.data)


@struct.dataclass
class SACState:
    """Everything the training loop carries."""

    actor_params: Any
    critic_params: Any
    target_params: Any
    log_alpha: jax.Array  # []
    actor_opt: Any
    critic_opt: Any
    alpha_opt: Any
    normalizer: RunningMoments  # observation statistics of everything seen so far
    replay: Replay
    env_state: envs_lib.EnvState  # [num_envs, ...]
    key: jax.Array  # root key of the run; per-iteration keys are fold_in(key, iteration)
    iteration: jax.Array  # [] int32
    env_steps: jax.Array  # [] int32
    # [] lambda of the penalised reward r - lambda * cost the critic learns (0: the task's own reward);
    # runs at several lambdas give the behaviour policies of the safe datasets a range of costs
    cost_penalty: jax.Array


class SAC(NamedTuple):
    """Pure, jitted functions of SAC runs (see make_train). The ``*_many`` functions are the same for a
    stack of independent runs (a leading axis on every key, penalty, state and parameter): one program."""

    actor: Actor
    init: Any  # (key, cost_penalty: float = 0) -> SACState (replay prefilled with random-action transitions)
    run: Any  # (SACState, num_iterations: static int) -> (SACState, metrics per iteration)
    # (actor_params, RunningMoments, key, num_episodes: static, sample: static bool = False) ->
    # rollout.Episodes (returns, costs, lengths [num_episodes]); sample: the stochastic policy, else tanh(mean)
    evaluate: Any
    init_many: Any  # (keys [R], cost_penalties [R]) -> SACState [R, ...]
    run_many: Any  # (SACState [R, ...], num_iterations: static) -> (SACState, metrics [R, num_iterations])
    # (actor_params [R], RunningMoments [R], keys [R], num_episodes: static, sample: static) -> Episodes [R, n]
    evaluate_many: Any


def make_train(env: envs_lib.Env, config: ml_collections.ConfigDict) -> SAC:
    """Build SAC for `env`. All returned functions are jitted and pure."""
    c = config
    if c.num_envs > c.replay_size:
        raise ValueError(f"num_envs ({c.num_envs}) must not exceed replay_size ({c.replay_size})")
    if c.min_replay < c.batch_size:
        raise ValueError(f"min_replay ({c.min_replay}) must be >= batch_size ({c.batch_size})")
    actor = Actor(tuple(c.hidden), env.action_size)
    critic = TwinCritic(tuple(c.hidden))
    adam = optax.adam(c.learning_rate)
    target_entropy = -float(env.action_size)
    batched_reset = jax.vmap(env.reset)

    def env_step(env_state, actions, key):
        keys = jax.random.split(key, actions.shape[0])
        return jax.vmap(lambda s, a, k: envs_lib.step_autoreset(env, s, a, k))(env_state, actions, keys)

    def empty_replay(capacity: int) -> Replay:
        o, a = env.observation_size, env.action_size
        data = envs_lib.Transition(
            observations=jnp.zeros((capacity, o)),
            actions=jnp.zeros((capacity, a)),
            rewards=jnp.zeros((capacity,)),
            costs=jnp.zeros((capacity,)),
            terminals=jnp.zeros((capacity,), bool),
            timeouts=jnp.zeros((capacity,), bool),
            next_observations=jnp.zeros((capacity, o)),
        )
        return Replay(data, jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))

    def init(key: jax.Array, cost_penalty: jax.Array) -> SACState:
        k_actor, k_critic, k_env, k_fill = (prng.stream(key, s) for s in ("actor", "critic", "env", "prefill"))
        obs = jnp.zeros((env.observation_size,))
        actor_params = actor.init(k_actor, obs)
        critic_params = critic.init(k_critic, obs, jnp.zeros((env.action_size,)))
        log_alpha = jnp.log(jnp.asarray(c.init_alpha, jnp.float32))
        env_state = batched_reset(jax.random.split(k_env, c.num_envs))
        normalizer = RunningMoments.zeros(env.observation_size)
        replay = empty_replay(min(c.replay_size, 10**8))

        def prefill(carry, i):
            env_state, replay, normalizer = carry
            k = jax.random.fold_in(k_fill, i)
            actions = jax.random.uniform(prng.stream(k, "act"), (c.num_envs, env.action_size), minval=-1, maxval=1)
            env_state, tr = env_step(env_state, actions, prng.stream(k, "reset"))
            return (env_state, replay.add(tr), normalizer.update(tr.observations)), None

        n_fill = -(-c.min_replay // c.num_envs)
        (env_state, replay, normalizer), _ = jax.lax.scan(prefill, (env_state, replay, normalizer), jnp.arange(n_fill))
        return SACState(
            actor_params,
            critic_params,
            critic_params,
            log_alpha,
            adam.init(actor_params),
            adam.init(critic_params),
            adam.init(log_alpha),
            normalizer,
            replay,
            env_state,
            prng.stream(key, "train"),
            jnp.zeros((), jnp.int32),
            jnp.asarray(n_fill * c.num_envs, jnp.int32),
            jnp.asarray(cost_penalty, jnp.float32),
        )

    def update(state: SACState, key: jax.Array) -> tuple[SACState, dict[str, jax.Array]]:
        batch = state.replay.sample(prng.stream(key, "batch"), c.batch_size)
        norm = state.normalizer.normalizer()
        obs, next_obs = norm(batch.observations), norm(batch.next_observations)
        alpha = jnp.exp(state.log_alpha)
        keys = jax.random.split(prng.stream(key, "next"), c.batch_size)
        next_a, next_logp = jax.vmap(lambda o, k: sample_action(actor, state.actor_params, o, k))(next_obs, keys)
        next_q = critic.apply(state.target_params, next_obs, next_a).min(-1) - alpha * next_logp
        bootstrap = jnp.where(batch.terminals, 0.0, next_q)  # where, not a product: NaN-safe at terminals
        reward = batch.rewards - state.cost_penalty * batch.costs
        target = jax.lax.stop_gradient(c.reward_scale * reward + c.discount * bootstrap)

        def critic_loss(p):
            q = critic.apply(p, obs, batch.actions)
            return 0.5 * jnp.mean(jnp.sum((q - target[:, None]) ** 2, -1)), q.mean()

        (q_loss, q_mean), g = jax.value_and_grad(critic_loss, has_aux=True)(state.critic_params)
        upd, critic_opt = adam.update(g, state.critic_opt)
        critic_params = optax.apply_updates(state.critic_params, upd)
        target_params = optax.incremental_update(critic_params, state.target_params, c.tau)

        pkeys = jax.random.split(prng.stream(key, "policy"), c.batch_size)

        def actor_loss(p):
            a, logp = jax.vmap(lambda o, k: sample_action(actor, p, o, k))(obs, pkeys)
            q = critic.apply(critic_params, obs, a).min(-1)
            return jnp.mean(alpha * logp - q), logp.mean()

        (pi_loss, logp_mean), g = jax.value_and_grad(actor_loss, has_aux=True)(state.actor_params)
        upd, actor_opt = adam.update(g, state.actor_opt)
        actor_params = optax.apply_updates(state.actor_params, upd)

        def alpha_loss(log_alpha):
            return -log_alpha * jax.lax.stop_gradient(logp_mean + target_entropy)

        g = jax.grad(alpha_loss)(state.log_alpha)
        upd, alpha_opt = adam.update(g, state.alpha_opt)
        log_alpha = optax.apply_updates(state.log_alpha, upd)
        state = state.replace(
            actor_params=actor_params,
            critic_params=critic_params,
            target_params=target_params,
            log_alpha=log_alpha,
            actor_opt=actor_opt,
            critic_opt=critic_opt,
            alpha_opt=alpha_opt,
        )
        return state, {"critic_loss": q_loss, "actor_loss": pi_loss, "q": q_mean, "alpha": alpha, "entropy": -logp_mean}

    def iteration(state: SACState, _) -> tuple[SACState, dict[str, jax.Array]]:
        key = jax.random.fold_in(state.key, state.iteration)
        obs = state.normalizer.normalizer()(state.env_state.obs)
        akeys = jax.random.split(prng.stream(key, "act"), c.num_envs)
        actions, _ = jax.vmap(lambda o, k: sample_action(actor, state.actor_params, o, k))(obs, akeys)
        env_state, tr = env_step(state.env_state, actions, prng.stream(key, "reset"))
        state = state.replace(
            env_state=env_state, replay=state.replay.add(tr), normalizer=state.normalizer.update(tr.observations)
        )
        ukeys = jax.random.split(prng.stream(key, "update"), c.updates_per_step)
        state, metrics = jax.lax.scan(update, state, ukeys)
        metrics = jax.tree.map(jnp.mean, metrics)
        metrics["reward"] = tr.rewards.mean()
        metrics["cost"] = tr.costs.mean()
        return state.replace(iteration=state.iteration + 1, env_steps=state.env_steps + c.num_envs), metrics

    def run(state: SACState, num_iterations: int):
        return jax.lax.scan(iteration, state, None, length=num_iterations)

    def evaluate(
        actor_params: Any, moments: RunningMoments, key: jax.Array, num_episodes: int, sample: bool = False
    ) -> rollout.Episodes:
        """Full episodes of the deterministic policy (tanh of the mean), or with ``sample`` of the stochastic
        one (as it collects data): undiscounted returns, costs and lengths [num_episodes]."""

        def act(p, obs, k):
            if not sample:
                return deterministic_action(actor, p, moments, obs)
            keys = jax.random.split(k, obs.shape[0])
            return jax.vmap(lambda o, kk: sample_action(actor, p, o, kk)[0])(moments.normalizer()(obs), keys)

        return rollout.rollout(
            env, act, actor_params, jax.random.split(key, num_episodes), key, chunk=env.episode_length
        )

    return SAC(
        actor=actor,
        init=jax.jit(lambda key, cost_penalty=0.0: init(key, cost_penalty)),
        run=jax.jit(run, static_argnums=1, donate_argnums=0),
        evaluate=jax.jit(evaluate, static_argnums=(3, 4)),
        init_many=jax.jit(jax.vmap(init)),
        run_many=jax.jit(jax.vmap(run, in_axes=(0, None)), static_argnums=1, donate_argnums=0),
        evaluate_many=jax.jit(jax.vmap(evaluate, in_axes=(0, 0, 0, None, None)), static_argnums=(3, 4)),
    )
