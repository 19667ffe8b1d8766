"""On-device offline datasets: a pytree of arrays with a jittable `sample(key, batch_size)`.

    data = OfflineData.from_numpy(formats.load_d4rl(path)[0])
    def step(state, key):
        batch = data.sample(key, 256)          # inside jit / lax.scan: no host round trip
        ...

`OfflineData` is a `flax.struct` dataclass, so it can be passed to jitted functions as an argument
(not baked in as a constant) and sharded like any other pytree.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from psec_jax.envs.base import Transition


@struct.dataclass
class OfflineData:
    """N transitions stored as device arrays."""

    observations: jax.Array  # [N, obs_dim] float32
    actions: jax.Array  # [N, act_dim] float32
    rewards: jax.Array  # [N] float32
    costs: jax.Array  # [N] float32 (zeros when the source has none)
    terminals: jax.Array  # [N] float32, 1.0 on true termination
    timeouts: jax.Array  # [N] float32, 1.0 where the episode was cut by the time limit
    next_observations: jax.Array  # [N, obs_dim] float32

    @classmethod
    def from_numpy(cls, data: Mapping[str, np.ndarray]) -> OfflineData:
        """Build from a D4RL transition dict (formats.load_d4rl / load_dsrl / load_minari)."""
        missing = [k for k in ("observations", "actions", "rewards", "terminals", "next_observations") if k not in data]
        if missing:
            raise KeyError(f"transition dict lacks {missing}")
        n = len(data["rewards"])
        f32 = lambda k: jnp.asarray(np.asarray(data[k], np.float32))
        return cls(
            observations=f32("observations"),
            actions=f32("actions"),
            rewards=f32("rewards").reshape(n),
            costs=f32("costs").reshape(n) if "costs" in data else jnp.zeros((n,), jnp.float32),
            terminals=f32("terminals").reshape(n),
            timeouts=f32("timeouts").reshape(n) if "timeouts" in data else jnp.zeros((n,), jnp.float32),
            next_observations=f32("next_observations"),
        )

    @classmethod
    def synthetic(cls, n: int, obs_dim: int, act_dim: int, seed: int = 0) -> OfflineData:
        """n random transitions (normal observations, uniform actions in [-1, 1], normal rewards, 30%
        cost events, next observation = observation + small noise): shapes for tests and benchmarks."""
        rng = np.random.default_rng(seed)
        obs = rng.normal(size=(n, obs_dim))
        return cls.from_numpy(
            dict(
                observations=obs,
                actions=rng.uniform(-1, 1, (n, act_dim)),
                rewards=rng.normal(size=n),
                costs=(rng.uniform(size=n) < 0.3).astype(np.float32),
                terminals=np.zeros(n),
                next_observations=obs + 0.1 * rng.normal(size=(n, obs_dim)),
            )
        )

    @property
    def size(self) -> int:
        """Number of transitions N."""
        return self.rewards.shape[0]

    def checksum(self) -> str:
        """sha256 over every field's name, dtype, shape and bytes: what a result records about its data."""
        import hashlib

        h = hashlib.sha256()
        for name, x in zip(self.__dataclass_fields__, jax.tree.leaves(self)):
            x = np.ascontiguousarray(np.asarray(x))
            h.update(f"{name}:{x.dtype}:{x.shape};".encode())
            h.update(x.tobytes())
        return h.hexdigest()

    def sample(self, key: jax.Array, batch_size: int) -> Transition:
        """batch_size transitions drawn uniformly with replacement (fields [batch_size, ...])."""
        idx = jax.random.randint(key, (batch_size,), 0, self.size)
        return jax.tree.map(lambda x: x[idx], self.as_transition())

    def as_transition(self) -> Transition:
        """All transitions as a Transition (terminals/timeouts as float32)."""
        return Transition(
            self.observations,
            self.actions,
            self.rewards,
            self.costs,
            self.terminals,
            self.timeouts,
            self.next_observations,
        )

    def episode_ids(self) -> np.ndarray:
        """[N] int: index of the episode each transition belongs to (host-side)."""
        ends = np.asarray(jnp.maximum(self.terminals, self.timeouts)) > 0
        return np.concatenate([[0], np.cumsum(ends[:-1])]).astype(np.int64)

    def take_episodes(self, episodes: np.ndarray) -> OfflineData:
        """The transitions of the given episode indices (host-side selection, order kept)."""
        mask = np.isin(self.episode_ids(), np.asarray(episodes))
        idx = jnp.asarray(np.flatnonzero(mask))
        return jax.tree.map(lambda x: x[idx], self)

    def subsample_episodes(self, key: jax.Array, fraction: float) -> OfflineData:
        """A random `fraction` of the episodes (at least one), e.g. 0.05 for a 5% target set."""
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        num = int(self.episode_ids()[-1]) + 1
        k = max(1, int(round(fraction * num)))
        chosen = np.sort(np.asarray(jax.random.choice(key, num, (k,), replace=False)))
        return self.take_episodes(chosen)

    def subsample_transitions(self, key: jax.Array, fraction: float) -> OfflineData:
        """A random `fraction` of the transitions (at least one), in their original order: each keeps its
        own observation, action, reward, cost, flags and next observation, so an offline learner sees whole
        transitions from many more distinct states than the same share of whole episodes would give."""
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        k = max(1, int(round(fraction * self.size)))
        idx = jnp.asarray(np.sort(np.asarray(jax.random.choice(key, self.size, (k,), replace=False))))
        return jax.tree.map(lambda x: x[idx], self)

    @staticmethod
    def concatenate(parts: list[OfflineData]) -> OfflineData:
        """Join datasets along the transition axis."""
        return jax.tree.map(lambda *xs: jnp.concatenate(xs), *parts)
