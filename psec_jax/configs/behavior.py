"""Config for `psec-jax behavior`: train the SAC behaviour policies of one task.

    psec-jax behavior --config=behavior --config.env=walker-walk --workdir=runs/sac-walk

Per-task budgets used for the committed policies are in `psec_jax.data.behavior.BUDGETS`; pass
`--config.total_steps` to change them.
"""

import ml_collections

from psec_jax.data import behavior


def get_config() -> ml_collections.ConfigDict:
    return behavior.default_config()
