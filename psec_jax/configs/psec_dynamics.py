"""Config of `psec-jax psec_dynamics`: dynamics shift (pi_0 on shifted dynamics, a LoRA skill on 5% of
nominal-dynamics data, evaluated on the nominal environment).

    psec-jax psec_dynamics --config=psec_dynamics:small --workdir=runs/dyn-hc
    psec-jax psec_dynamics --config=psec_dynamics:paper --workdir=runs/dyn-hc-paper
    ... --config.env=walker2d --config.variant=thigh_2 --config.kind=medium-expert

`small` fits this 2-core CPU; `paper` uses PSEC's network and step counts and 1000-episode datasets
(as D4RL's 1M transitions); `tiny` is for tests. The fields shared by every setting are in
`psec_jax.rl.config.base_config`.
"""

import ml_collections

from psec_jax.rl import config as base
from psec_jax.rl.dynamics import METHODS

# field -> (tiny, small, paper), where this setting differs from psec_jax.rl.config.SIZES
SIZES = {
    "source_data": ("{env}:{variant}-{kind}-200traj",) * 2 + ("{env}:{variant}-{kind}-1000traj",),
    "target_data": ("{env}-{kind}-200traj",) * 2 + ("{env}-{kind}-1000traj",),
    "critics.reward.hidden": ((32, 32), (256, 256), (256, 256)),
    "share_pretrain": (True, False, False),  # independent seeds: each seed its own pi_0
    "num_seeds": (2, 5, 5),
    "eval.episodes": (2, 10, 10),
}


def get_config(size: str = "small") -> ml_collections.ConfigDict:
    c = base.base_config(size)
    c.env = "halfcheetah"  # body (halfcheetah, hopper, walker2d, ant); evaluated with nominal dynamics
    c.variant = "friction_0.5"  # source dynamics: friction_0.25, friction_0.5, gravity_2 or thigh_2
    c.kind = "medium"  # behaviour level of both datasets: medium, medium-expert, medium-replay, ...
    c.source_data = ""  # pi_0's data ({env}, {variant}, {kind}; sizes table)
    c.target_data = ""  # nominal-dynamics data the target subset comes from (sizes table)
    c.target_fraction = 0.05  # share of the target data used (PSEC: 5%)
    # what the share is of: "transitions" (the official code: a random 5% of the transitions, many distinct
    # states) or "episodes" (whole episodes: far fewer distinct states for the same share)
    c.target_split = "transitions"
    c.methods = METHODS  # columns of the table
    return base.apply_sizes(c, SIZES, size)
