"""The one environment API: pure, jittable, vmappable `reset(key)` / `step(state, action)`.

Every environment, whatever simulator it runs on (MuJoCo Playground, Brax), is wrapped into `Env`,
whose states are `EnvState`s carrying `reward` *and* `cost`, D4RL-style `terminal` / `truncation`
flags and an episode step counter. Episodes end at `episode_length` steps (truncation) or when the
simulator terminates them (a fallen hopper, a NaN state). `step` never resets by itself; use
`step_autoreset` (which also returns the transition with the true final observation) in loops.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import struct

EPISODE_LENGTH = 1000  # steps of an episode unless an env is made with another length (D4RL / DMC)


@struct.dataclass
class EnvState:
    """State of one environment (add leading axes with vmap)."""

    inner: Any  # the simulator's own state (brax.envs.State or mujoco_playground State)
    obs: jax.Array  # [obs_dim] float32
    reward: jax.Array  # [] float32, reward of the last step
    cost: jax.Array  # [] float32, 1.0 when the last step broke the task's constraint, else 0.0
    terminal: jax.Array  # [] float32, 1.0 when the last step ended the episode by termination
    truncation: jax.Array  # [] float32, 1.0 when the episode hit episode_length without terminating
    speed: jax.Array  # [] float32, the velocity the cost is computed from (forward or planar speed)
    steps: jax.Array  # [] int32, steps taken in this episode

    @property
    def done(self) -> jax.Array:
        """[] float32: 1.0 when the episode is over (terminal or truncated)."""
        return jnp.maximum(self.terminal, self.truncation)


class Transition(NamedTuple):
    """One step of experience, D4RL field names (leading axes added by vmap/scan)."""

    observations: jax.Array  # [obs_dim]
    actions: jax.Array  # [act_dim]
    rewards: jax.Array  # []
    costs: jax.Array  # []
    terminals: jax.Array  # [] true termination (bootstrapping stops); bool from envs, float32 0/1 from OfflineData
    timeouts: jax.Array  # [] episode truncated by the time limit; same dtype convention as terminals
    next_observations: jax.Array  # [obs_dim], the real final observation even when the episode ends


@dataclasses.dataclass(frozen=True)
class Env:
    """A named task with pure `reset` and `step` (both jit- and vmap-safe).

    Attributes:
      name: registry name, e.g. "walker-walk" or "halfcheetah".
      variant: dynamics variant name ("nominal", "friction_0.25", ...).
      observation_size / action_size: flat sizes; actions live in [-1, 1].
      episode_length: steps before truncation.
      cost_threshold: velocity above which `cost` is 1 (None: the task has no cost, cost is 0).
      dt: seconds of simulated time per step.
    """

    name: str
    variant: str
    observation_size: int
    action_size: int
    episode_length: int
    cost_threshold: float | None
    dt: float
    _reset: Callable[[jax.Array], tuple[Any, jax.Array]] = dataclasses.field(repr=False)
    _step: Callable[[Any, jax.Array], tuple[Any, jax.Array, jax.Array, jax.Array, jax.Array]] = dataclasses.field(
        repr=False
    )
    backend: Any = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def id(self) -> str:
        """ "name" for the nominal dynamics, "name:variant" otherwise."""
        return self.name if self.variant == "nominal" else f"{self.name}:{self.variant}"

    def reset(self, key: jax.Array) -> EnvState:
        """Start an episode. key: a PRNG key. Returns an unbatched EnvState."""
        inner, obs = self._reset(key)
        zero = jnp.zeros((), jnp.float32)
        return EnvState(inner, obs.astype(jnp.float32), zero, zero, zero, zero, zero, jnp.zeros((), jnp.int32))

    def step(self, state: EnvState, action: jax.Array) -> EnvState:
        """Advance one step. action: [action_size], clipped to [-1, 1]."""
        action = jnp.clip(action, -1.0, 1.0)
        inner, obs, reward, terminated, speed = self._step(state.inner, action)
        steps = state.steps + 1
        terminal = (terminated > 0).astype(jnp.float32)
        truncation = ((steps >= self.episode_length) & (terminal == 0)).astype(jnp.float32)
        if self.cost_threshold is None:
            cost = jnp.zeros((), jnp.float32)
        else:
            cost = (speed > self.cost_threshold).astype(jnp.float32)
        return EnvState(
            inner,
            obs.astype(jnp.float32),
            reward.astype(jnp.float32),
            cost,
            terminal,
            truncation,
            speed.astype(jnp.float32),
            steps,
        )


def step_autoreset(env: Env, state: EnvState, action: jax.Array, key: jax.Array) -> tuple[EnvState, Transition]:
    """Step; when the episode ends, start a new one from `key`.

    Returns (state to continue from, the transition just taken). The transition keeps the final
    observation of a finished episode in `next_observations`; the returned state is the fresh reset.
    """
    next_state = env.step(state, action)
    transition = Transition(
        observations=state.obs,
        actions=jnp.clip(action, -1.0, 1.0),
        rewards=next_state.reward,
        costs=next_state.cost,
        terminals=next_state.terminal > 0,
        timeouts=next_state.truncation > 0,
        next_observations=next_state.obs,
    )
    fresh = env.reset(key)
    done = next_state.done > 0
    continued = jax.tree.map(lambda a, b: jnp.where(done, a, b), fresh, next_state)
    return continued, transition
