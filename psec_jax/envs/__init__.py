"""Environments: one jittable, vmappable reset/step API with reward and cost in every state.

    env = envs.make("walker-walk")                 # or "halfcheetah", "ant:gravity_2", ...
    state = jax.vmap(env.reset)(keys)              # EnvState with leading batch axis
    state = jax.vmap(env.step)(state, actions)     # actions in [-1, 1]
"""

from psec_jax.envs.base import Env, EnvState, Transition, step_autoreset
from psec_jax.envs.registry import (BRAX_BODIES, VELOCITY_THRESHOLDS, WALKER_TASKS, make, names,
                                    parse)
from psec_jax.envs.variants import THIGH_GEOMS, VARIANTS, apply_variant

__all__ = ["Env", "EnvState", "Transition", "step_autoreset", "make", "names", "parse",
           "BRAX_BODIES", "VELOCITY_THRESHOLDS", "WALKER_TASKS", "VARIANTS", "THIGH_GEOMS",
           "apply_variant"]
