"""The DDPM diffusion policy of PSEC (IDQL lineage): VP noise schedule, noise network, loss, sampler.

The noise network predicts the noise ``eps`` added to an action; every Dense layer is a
``psec_jax.lora.LoRADense``, so a stack of skills in the ``"lora"`` collection adapts all of them at
once, weighted by ``skill_weights`` (``[K]`` global or ``[B, K]`` per state: PSEC's composition).
Shapes: observations ``[B, obs_dim]``, actions ``[B, act_dim]``, diffusion steps ``[B]`` int in
``[0, T)``; the network is batch-polymorphic (any leading dims).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from psec_jax.lora import LoRADense


class Schedule(NamedTuple):
    """The T-step noise schedule (index t = 0 .. T-1, t = 0 the least noisy)."""

    betas: jax.Array  # [T]
    alphas: jax.Array  # [T] 1 - beta
    alpha_hats: jax.Array  # [T] cumulative products of alphas


def vp_betas(num_steps: int, beta_min: float = 0.1, beta_max: float = 10.0) -> jax.Array:
    """The variance-preserving schedule: ``alpha_t = exp(-b_min/T - (b_max-b_min)(2t-1)/(2T^2))``,
    t = 1..T, returned as betas ``1 - alpha_t`` [T] (T=5: about [0.196, 0.459, 0.636, 0.755, 0.835])."""
    if num_steps < 1:
        raise ValueError(f"the number of diffusion steps must be >= 1, got {num_steps}")
    t = jnp.arange(1, num_steps + 1, dtype=jnp.float32)
    alpha = jnp.exp(-beta_min / num_steps - 0.5 * (beta_max - beta_min) * (2 * t - 1) / num_steps**2)
    return 1.0 - alpha


def make_schedule(num_steps: int = 5) -> Schedule:
    """``Schedule`` of the VP betas with ``num_steps`` steps."""
    betas = vp_betas(num_steps)
    alphas = 1.0 - betas
    return Schedule(betas, alphas, jnp.cumprod(alphas))


class FourierFeatures(nn.Module):
    """Learnable Fourier features of the diffusion step: ``[cos 2 pi t w, sin 2 pi t w]``.

    The frequency vector is named ``w`` (not ``kernel``) so LoRA targeting ``kernel`` leaves it alone.
    """

    features: int  # output size (even)

    @nn.compact
    def __call__(self, t: jax.Array) -> jax.Array:  # [...] -> [..., features]
        w = self.param("w", nn.initializers.normal(0.2), (self.features // 2,))
        f = 2 * jnp.pi * t[..., None].astype(jnp.float32) * w
        return jnp.concatenate([jnp.cos(f), jnp.sin(f)], axis=-1)


class NoiseNet(nn.Module):
    """eps_theta(s, a_t, t): Fourier(t) -> MLP(time_hidden x2) = cond; [a_t, s, cond] -> Dense(hidden)
    -> ``num_blocks`` x [Dropout, LayerNorm, Dense(ff), act, Dense(hidden), +residual] -> act ->
    Dense(act_dim). Activation mish. All Dense layers are LoRA-adaptable."""

    act_dim: int
    hidden: int = 256  # residual width
    ff: int = 1024  # width inside each residual block
    num_blocks: int = 3
    time_features: int = 64  # Fourier features of t
    time_hidden: int = 128  # the time MLP's width (two layers)
    dropout: float = 0.1
    layer_norm: bool = True

    @nn.compact
    def __call__(
        self,
        obs: jax.Array,
        action: jax.Array,
        t: jax.Array,
        skill_weights: jax.Array | None = None,
        *,
        train: bool = False,
    ) -> jax.Array:
        """obs [..., obs_dim], action [..., act_dim], t [...] int; skill_weights as in
        ``lora.lora_dense`` (coefficients: weights times scales). Returns eps [..., act_dim]."""
        act = jax.nn.mish
        dense = lambda n, name: lambda x: LoRADense(n, name=name)(x, skill_weights)
        cond = FourierFeatures(self.time_features, name="time_fourier")(t)
        cond = dense(self.time_hidden, "time_0")(cond)
        cond = dense(self.time_hidden, "time_1")(act(cond))
        x = jnp.concatenate([action, obs, cond], axis=-1)
        x = dense(self.hidden, "input")(x)
        for i in range(self.num_blocks):
            y = nn.Dropout(self.dropout, deterministic=not train)(x)
            if self.layer_norm:
                y = nn.LayerNorm(name=f"block_{i}_norm")(y)
            y = dense(self.ff, f"block_{i}_up")(y)
            y = dense(self.hidden, f"block_{i}_down")(act(y))
            x = x + y
        return dense(self.act_dim, "output")(act(x))


EpsFn = Callable[[jax.Array, jax.Array], jax.Array]  # (a_t [B, A], t [B]) -> eps [B, A]


def noisy_actions(schedule: Schedule, actions: jax.Array, key: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Forward process for a batch: t ~ U{0..T-1}, eps ~ N(0, I), a_t = sqrt(ah_t) a + sqrt(1-ah_t) eps.

    actions [B, A]. Returns (a_t [B, A], t [B] int32, eps [B, A])."""
    kt, ke = jax.random.split(key)
    t = jax.random.randint(kt, actions.shape[:1], 0, schedule.betas.shape[0])
    eps = jax.random.normal(ke, actions.shape, actions.dtype)
    ah = schedule.alpha_hats[t][:, None]
    return jnp.sqrt(ah) * actions + jnp.sqrt(1 - ah) * eps, t, eps


def noise_loss(eps_hat: jax.Array, eps: jax.Array, weights: jax.Array | None = None) -> jax.Array:
    """Mean over the batch of ``w * ||eps_hat - eps||^2`` (summed over action dims). eps [B, A],
    weights [B] (advantage weights) or None."""
    per_example = jnp.sum((eps_hat - eps) ** 2, axis=-1)
    if weights is not None:
        per_example = per_example * weights
    return jnp.mean(per_example)


def sample(eps_fn: EpsFn, schedule: Schedule, key: jax.Array, shape: tuple[int, int], clip: float = 1.0) -> jax.Array:
    """Ancestral DDPM sampling from a_T ~ N(0, I), clipping to [-clip, clip] after every step.

    a_{t-1} = (a_t - beta_t / sqrt(1 - ah_t) eps) / sqrt(alpha_t) + sqrt(beta_t) z (no noise at t=0).
    shape: (B, act_dim). Returns actions [B, act_dim] in [-clip, clip]."""
    k0, kz = jax.random.split(key)
    num_steps = schedule.betas.shape[0]

    def step(a, t):
        eps = eps_fn(a, jnp.full(shape[:1], t, jnp.int32))
        beta, alpha, ah = schedule.betas[t], schedule.alphas[t], schedule.alpha_hats[t]
        a = (a - beta / jnp.sqrt(1 - ah) * eps) / jnp.sqrt(alpha)
        z = jax.random.normal(jax.random.fold_in(kz, t), shape)
        a = a + (t > 0) * jnp.sqrt(beta) * z
        return jnp.clip(a, -clip, clip), None

    a0 = jax.random.normal(k0, shape)
    a, _ = jax.lax.scan(step, a0, jnp.arange(num_steps - 1, -1, -1))
    return a


def init_noise_net(net: NoiseNet, key: jax.Array, obs_dim: int) -> Any:
    """Parameters (the ``"params"`` collection's contents) of ``net`` for observations of obs_dim."""
    return net.init(key, jnp.zeros((1, obs_dim)), jnp.zeros((1, net.act_dim)), jnp.zeros((1,), jnp.int32))["params"]
