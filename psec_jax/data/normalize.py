"""The one observation normaliser, and the running statistics SAC maintains it from.

``Normalizer`` standardises observations with fixed statistics: PSEC's (pi_0's training data fixes
them for every later stage and for acting) and the behaviour policies' (frozen with their SAC actor,
clipped to +-10). ``RunningMoments`` is Welford's streaming mean and variance, from which SAC
normalises while it trains.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class Normalizer:
    """``(obs - mean) / std``, clipped to ``[-clip, clip]`` when ``clip`` is set."""

    mean: jax.Array  # [obs_dim]
    std: jax.Array  # [obs_dim], > 0
    clip: float | None = struct.field(pytree_node=False, default=None)

    @classmethod
    def of(cls, observations: jax.Array, *, floor: float = 1e-3) -> Normalizer:
        """Statistics of observations [N, obs_dim], the std floored at ``floor``."""
        if observations.ndim != 2 or observations.shape[0] < 1:
            raise ValueError(f"Normalizer.of needs observations [N >= 1, obs_dim], got shape {observations.shape}")
        return cls(jnp.mean(observations, 0), jnp.maximum(jnp.std(observations, 0), floor))

    @classmethod
    def identity(cls, obs_dim: int) -> Normalizer:
        """The normaliser that changes nothing."""
        return cls(jnp.zeros((obs_dim,)), jnp.ones((obs_dim,)))

    def __call__(self, obs: jax.Array) -> jax.Array:
        """Standardised observations [..., obs_dim]."""
        x = (obs - self.mean) / self.std
        return x if self.clip is None else jnp.clip(x, -self.clip, self.clip)


class RunningMoments(NamedTuple):
    """Running observation statistics (Welford)."""

    count: jax.Array  # []
    mean: jax.Array  # [obs_dim]
    m2: jax.Array  # [obs_dim], sum of squared deviations

    @classmethod
    def zeros(cls, obs_dim: int) -> RunningMoments:
        return cls(jnp.zeros(()), jnp.zeros((obs_dim,)), jnp.zeros((obs_dim,)))

    @property
    def std(self) -> jax.Array:
        return jnp.sqrt(self.m2 / jnp.maximum(self.count, 1.0) + 1e-6)

    def update(self, x: jax.Array) -> RunningMoments:
        """Fold in a batch x: [n, obs_dim]."""
        n = x.shape[0]
        count = self.count + n
        delta = x.mean(0) - self.mean
        mean = self.mean + delta * n / count
        m2 = self.m2 + ((x - x.mean(0)) ** 2).sum(0) + delta**2 * self.count * n / count
        return RunningMoments(count, mean, m2)

    def normalizer(self, clip: float | None = 10.0) -> Normalizer:
        """The current statistics as a ``Normalizer`` (clipped, as SAC acts)."""
        return Normalizer(self.mean, self.std, clip)
