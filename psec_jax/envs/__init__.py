"""Environments: one jittable, vmappable reset/step API with reward and cost in every state.

    env = envs.make("walker-walk")                 # or "halfcheetah", "ant:gravity_2", ...
    state = jax.vmap(env.reset)(keys)              # EnvState with leading batch axis
    state = jax.vmap(env.step)(state, actions)     # actions in [-1, 1]

The types (``psec_jax.envs.base``: ``Env``, ``EnvState``, ``Transition``) import nothing but JAX; the
registry, the dynamics variants and the rollout helper (which import the simulators) load on first use,
so code that only needs the types never imports MuJoCo or Brax.
"""

import importlib

from psec_jax.envs.base import Env, EnvState, Transition, step_autoreset

_LAZY = {
    "BRAX_BODIES": "registry",
    "VELOCITY_THRESHOLDS": "registry",
    "WALKER_TASKS": "registry",
    "WALKER_SPEEDS": "registry",
    "make": "registry",
    "names": "registry",
    "parse": "registry",
    "THIGH_GEOMS": "variants",
    "VARIANTS": "variants",
    "apply_variant": "variants",
}

__all__ = ["Env", "EnvState", "Transition", "step_autoreset", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f"psec_jax.envs.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'psec_jax.envs' has no attribute {name!r}")
