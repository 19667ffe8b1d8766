"""Config of `psec-jax psec_safe`: multi-objective (safe) composition on a velocity-constrained body.

    psec-jax psec_safe --config=psec_safe:small --workdir=runs/safe-hc            (the official argmin-Qc rule)
    psec-jax psec_safe --config=psec_safe:small_project --workdir=runs/safe-hc-p  (feasible, then best reward)
    psec-jax psec_safe --config=psec_safe:paper --workdir=runs/safe-hc-paper
    ... --config.env=ant   (halfcheetah, hopper, walker2d or ant: the bodies with a velocity cost)

A preset is a size, `tiny` (tests), `small` (this 2-core CPU) or `paper` (PSEC's network and step
counts), optionally followed by `_project`: the acting rule the project proposed (among the candidates
the cost critic deems feasible, the one the reward critic prefers) instead of the official argmin Qc. The
fields shared by every setting are in `psec_jax.rl.config.base_config`.
"""

import ml_collections

from psec_jax.rl import config as base
from psec_jax.rl.safe import METHODS

# field -> (tiny, small, paper), where this setting differs from psec_jax.rl.config.SIZES
SIZES = {
    "data": ("{env}-mixed-cost-100traj", "{env}-mixed-cost-300traj", "{env}-mixed-cost-1000traj"),
    "critics.reward.hidden": ((32, 32), (256, 256), (256, 256)),
    "critics.cost.hidden": ((32, 32), (256, 256), (256, 256)),
    "share_pretrain": (True, False, False),  # independent seeds: each seed its own pi_0
    "num_seeds": (2, 5, 5),
    "eval.episodes": (2, 10, 10),
}
RULES = {"": "argmin_qc", "_project": "feasible_then_reward"}  # preset suffix -> acting rule


def get_config(preset: str = "small") -> ml_collections.ConfigDict:
    size, suffix = (preset[: -len("_project")], "_project") if preset.endswith("_project") else (preset, "")
    c = base.base_config(size)
    c.env = "halfcheetah"  # evaluation body (must have a velocity cost: halfcheetah, hopper, walker2d, ant)
    c.data = ""  # offline data with costs ({env}; sizes table): pi_0's and both skills'
    c.compose_data = "{env}-imitation-10traj"  # the composers' small imitation set ({env}); "" = the safe subset
    c.cost_limit = 10.0  # episode cost budget: normalised cost = cost / cost_limit; safe data = cost <= it
    # normalised reward: "dsrl" maps the training data's lowest / highest episode return to 0 / 1 (DSRL's
    # rule); "policies" the behaviour policies' random / expert returns
    c.normalization = "dsrl"
    c.methods = METHODS  # columns of the table
    c.eval.rule = RULES[suffix]  # how each method keeps one of its own candidates (preset suffix)
    return base.apply_sizes(c, SIZES, size)
