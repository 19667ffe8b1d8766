"""Config of `psec-jax psec_safe`: multi-objective (safe) composition on a velocity-constrained body.

    psec-jax psec_safe --config=psec_safe:small --workdir=runs/safe-hc
    psec-jax psec_safe --config=psec_safe:paper --workdir=runs/safe-hc-paper
    ... --config.env=ant   (halfcheetah, hopper, walker2d or ant: the bodies with a velocity cost)

`small` fits this 2-core CPU; `paper` uses PSEC's network and step counts; `tiny` is for tests. The
fields shared by every setting are in `psec_jax.rl.config.base_config`.
"""

import ml_collections

from psec_jax.rl import config as base
from psec_jax.rl.safe import METHODS

# field -> (tiny, small, paper), where this setting differs from psec_jax.rl.config.SIZES
SIZES = {
    "data": ("{env}-medium-expert-100traj",) * 2 + ("{env}-medium-expert-1000traj",),
    "critics.reward.hidden": ((32, 32), (256, 256), (256, 256)),
    "critics.cost.hidden": ((32, 32), (256, 256), (256, 256)),
}


def get_config(size: str = "small") -> ml_collections.ConfigDict:
    c = base.base_config(size)
    c.env = "halfcheetah"  # evaluation body (must have a velocity cost: halfcheetah, hopper, walker2d, ant)
    c.data = ""  # offline data with costs ({env}; sizes table)
    c.cost_limit = 10.0  # episode cost budget: normalised cost = cost / cost_limit; safe data = cost <= it
    c.methods = METHODS  # columns of the table
    return base.apply_sizes(c, SIZES, size)
