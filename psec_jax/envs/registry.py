"""The environment registry: `make(name, variant=..., **options)`.

| name | simulator | obs | act | reward | cost |
|---|---|---|---|---|---|
| walker-stand, walker-walk, walker-run | MuJoCo Playground DMC walker, impl="jax" | 24 | 6 | DMC | 0 (no constraint) |
| walker-speed2, -speed3, -speed4, -speed6 | the same, WalkerWalk at that move speed (m/s) | 24 | 6 | DMC | 0 |
| halfcheetah, hopper, walker2d, ant | Brax (Gym MuJoCo bodies, backend "generalized" by default) | 17, 11, 17, 27 | 6, 3, 6, 8 | Gym locomotion | Safety-Gymnasium velocity v1 |

The Brax bodies are the "Run" safe-velocity tasks: `cost = 1` when the forward x velocity (ant: the
planar speed sqrt(vx^2 + vy^2)) is strictly above the Safety-Gymnasium v1 threshold, as in
`safety_gymnasium/tasks/safe_velocity/*_v1.py`. Every body takes every dynamics variant of
`psec_jax.envs.variants` (the name form "halfcheetah:gravity_2" is accepted too).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any
from unittest import mock

import jax
import jax.numpy as jnp
import mujoco
from etils import epath

from psec_jax.envs import variants
from psec_jax.envs.base import EPISODE_LENGTH, Env

# Safety-Gymnasium v1 velocity thresholds (m/s).
VELOCITY_THRESHOLDS: dict[str, float] = {
    "halfcheetah": 3.2096,
    "hopper": 0.7402,
    "walker2d": 2.3415,
    "ant": 2.6222,
}

WALKER_TASKS = {"walker-stand": "WalkerStand", "walker-walk": "WalkerWalk", "walker-run": "WalkerRun"}
# DMC walker tasks at speeds between walk (1 m/s) and run (8): Playground's WalkerWalk with its move speed
# set (the reward's full marks start there), for skill libraries with more than three skills
WALKER_SPEEDS = {"walker-speed2": 2.0, "walker-speed3": 3.0, "walker-speed4": 4.0, "walker-speed6": 6.0}
BRAX_BODIES = tuple(VELOCITY_THRESHOLDS)


def names() -> list[str]:
    """All registered environment names."""
    return [*WALKER_TASKS, *WALKER_SPEEDS, *BRAX_BODIES]


def parse(name: str, variant: str | None = None) -> tuple[str, str]:
    """Split "body:variant" and check both parts. Returns (name, variant)."""
    if ":" in name:
        if variant not in (None, "nominal"):
            raise ValueError(f"variant given twice: {name!r} and variant={variant!r}")
        name, variant = name.split(":", 1)
        if not variant:
            raise ValueError(f"empty variant in {name + ':'!r}")
    variant = variant or "nominal"
    if name not in names():
        raise ValueError(f"unknown environment {name!r}; known: {names()}")
    variants.check_variant(variant)
    return name, variant


def make(
    name: str, variant: str | None = None, *, backend: str = "generalized", episode_length: int = EPISODE_LENGTH
) -> Env:
    """Build an environment.

    Args:
      name: a registry name (see `names()`), optionally "name:variant".
      variant: dynamics variant (see `psec_jax.envs.variants.VARIANTS`); default nominal.
      backend: Brax physics pipeline for the Brax bodies ("generalized" (default), "mjx",
        "positional", "spring"); each models contact friction in its own way.
      episode_length: steps before the episode is truncated.
    """
    name, variant = parse(name, variant)
    if name in WALKER_TASKS or name in WALKER_SPEEDS:
        return _make_walker(name, variant, episode_length)
    return _make_brax(name, variant, backend, episode_length)


def _make_walker(name: str, variant: str, episode_length: int) -> Env:
    from mujoco_playground import registry as playground
    from mujoco_playground._src import mjx_env

    env = playground.load(WALKER_TASKS.get(name, "WalkerWalk"), config_overrides={"impl": "jax"})
    if name in WALKER_SPEEDS:
        env._move_speed = WALKER_SPEEDS[name]  # read by the reward at every step (PlanarWalker._get_reward)
    if variant != "nominal":
        spec = mujoco.MjSpec.from_file(str(env.xml_path))  # includes resolve next to the file
        model = variants.apply_variant(spec, "walker", variant)
        model.opt.timestep = env.sim_dt
        env._mj_model = model
        env._mjx_model = mujoco.mjx.put_model(model, impl="jax")
        env._post_init()  # ids and joint ranges from the edited model

    def reset(key: jax.Array) -> tuple[Any, jax.Array]:
        state = env.reset(key)
        return state, state.obs

    def step(inner: Any, action: jax.Array):
        nxt = env.step(inner, action)
        speed = mjx_env.get_sensor_data(env.mj_model, nxt.data, "torso_subtreelinvel")[0]
        return nxt, nxt.obs, nxt.reward, nxt.done, speed

    return Env(
        name=name,
        variant=variant,
        observation_size=int(env.observation_size),
        action_size=int(env.action_size),
        episode_length=episode_length,
        cost_threshold=None,
        dt=float(env.dt),
        _reset=reset,
        _step=step,
        backend=env,
    )


@contextlib.contextmanager
def _load_brax_models_through(edit: Callable[[str], Any]):
    """Make brax.io.mjcf.load build its System from `edit(path)`.

    Brax's environment classes read their model file inside `__init__` and then apply
    backend-specific tweaks (timestep, gears) to it; patching the loader keeps those tweaks while
    the model itself carries the variant's physics.
    """
    from brax.io import mjcf

    with mock.patch.object(mjcf, "load", lambda path: mjcf.load_model(edit(path))):
        yield


def _make_brax(name: str, variant: str, backend: str, episode_length: int) -> Env:
    from brax import envs as brax_envs

    def edited_model(path: Any) -> mujoco.MjModel:
        from brax.io import mjcf  # the same preprocessing (static-body fusing) as mjcf.load

        spec = mujoco.MjSpec.from_string(mjcf.fuse_bodies(epath.Path(path).read_text()))
        return variants.apply_variant(spec, name, variant)

    with _load_brax_models_through(edited_model):
        env = brax_envs.get_environment(name, backend=backend)
    planar = name == "ant"

    def reset(key: jax.Array) -> tuple[Any, jax.Array]:
        state = env.reset(key)
        return state, state.obs

    def step(inner: Any, action: jax.Array):
        nxt = env.step(inner, action)
        vx = nxt.metrics["x_velocity"]
        speed = jnp.sqrt(vx**2 + nxt.metrics["y_velocity"] ** 2) if planar else vx
        return nxt, nxt.obs, nxt.reward, nxt.done, speed

    return Env(
        name=name,
        variant=variant,
        observation_size=int(env.observation_size),
        action_size=int(env.action_size),
        episode_length=episode_length,
        cost_threshold=VELOCITY_THRESHOLDS[name],
        dt=float(env.dt),
        _reset=reset,
        _step=step,
        backend=env,
    )
