"""Small networks around the diffusion policy: critics, the context-aware alpha network, MLP adapters.

All are batch-polymorphic (any leading dims); twin critics carry a leading ensemble axis of 2.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


class MLP(nn.Module):
    """Dense layers of ``sizes`` with ``act`` between them (none after the last)."""

    sizes: Sequence[int]
    act: Callable = nn.relu
    layer_norm: bool = False  # LayerNorm after each hidden Dense (before the activation)
    last_init: Callable = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i, n in enumerate(self.sizes):
            last = i == len(self.sizes) - 1
            x = nn.Dense(n, kernel_init=self.last_init if last else nn.initializers.lecun_normal())(x)
            if not last:
                x = self.act(nn.LayerNorm()(x) if self.layer_norm else x)
        return x


class TwinQ(nn.Module):
    """Two independent Q(s, a) MLPs: [..., obs], [..., act] -> [2, ...]."""

    hidden: Sequence[int] = (256, 256)
    layer_norm: bool = False

    @nn.compact
    def __call__(self, obs: jax.Array, action: jax.Array) -> jax.Array:
        ensemble = nn.vmap(
            MLP, variable_axes={"params": 0}, split_rngs={"params": True}, in_axes=None, out_axes=0, axis_size=2
        )
        return ensemble((*self.hidden, 1), layer_norm=self.layer_norm)(jnp.concatenate([obs, action], -1))[..., 0]


class ValueNet(nn.Module):
    """V(s): [..., obs] -> [...]."""

    hidden: Sequence[int] = (256, 256)
    layer_norm: bool = False

    @nn.compact
    def __call__(self, obs: jax.Array) -> jax.Array:
        return MLP((*self.hidden, 1), layer_norm=self.layer_norm)(obs)[..., 0]


class AlphaNet(nn.Module):
    """PSEC's context-aware composition network: state -> one weight per component (no output
    activation, as in the official code): [..., obs] -> [..., num_outputs]."""

    num_outputs: int
    hidden: Sequence[int] = (256, 256)

    @nn.compact
    def __call__(self, obs: jax.Array) -> jax.Array:
        return MLP((*self.hidden, self.num_outputs))(obs)


class MLPAdapter(nn.Module):
    """The "MLP adapter" skill of PSEC's ablation: a residual MLP on the noise prediction,
    delta_eps(s, a_t, t) = MLP([a_t, s, onehot(t)]); the output layer starts at zero so a fresh
    adapter is an exact no-op, like a fresh LoRA."""

    act_dim: int
    num_steps: int  # diffusion steps T (for the one-hot of t)
    hidden: Sequence[int] = (256, 256)

    @nn.compact
    def __call__(self, obs: jax.Array, action: jax.Array, t: jax.Array) -> jax.Array:
        x = jnp.concatenate([action, obs, jax.nn.one_hot(t, self.num_steps)], axis=-1)
        return MLP((*self.hidden, self.act_dim), act=jax.nn.mish, last_init=nn.initializers.zeros)(x)
