"""Config for `psec-jax behavior`: train the SAC behaviour policies of one task.

    psec-jax behavior --config=behavior:hopper --workdir=runs/sac-hopper   # the committed recipe of a task
    psec-jax behavior --config=behavior --config.env=walker-walk --workdir=runs/sac-walk

A preset is a task name: its committed policies' settings (`psec_jax.data.behavior.RECIPES`); without
one, `default_config()` (Playground's DMC SAC settings) for `config.env`.
"""

import ml_collections

from psec_jax.data import behavior


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    return behavior.recipe_config(preset) if preset else behavior.default_config()
