"""Config of `psec-jax psec_continual`: continual policy shift on the DeepMind Control walker.

    psec-jax psec_continual --config=experiments/configs/psec_continual.py:small --workdir=runs/s2w
    psec-jax psec_continual --config=experiments/configs/psec_continual.py:paper --workdir=runs/s2w-paper
    ... --config.task=stand_run   (or stand_walk_run)

`small` fits this 2-core CPU (the `make demo` run); `paper` uses PSEC's network and step counts; `tiny`
is for tests. The fields shared by every setting are in `psec_jax.rl.config.base_config`.
"""

import ml_collections

from psec_jax.rl import config as base
from psec_jax.rl.continual import METHODS

# field -> (tiny, small, paper), where this setting differs from psec_jax.rl.config.SIZES
SIZES = {
    "pretrain.steps": (200, 10_000, 1_000_000),
    "expand.steps": (200, 6000, 100_000),
    # 1e-3 on the CPU budget: after 8k steps the LoRA walk skill returned 496 (lr 1e-3) vs 59 (lr 3e-4),
    # 6 episodes each (runs/lora_check.py)
    "expand.learning_rate": (1e-3, 1e-3, 3e-4),
    # 1 on the CPU budget: the critic is far from converged after a few thousand steps (mean Q ~30 where
    # returns imply ~95) and picking the argmax of 8 candidates cut the walk skill's return from 496 to
    # 55 (runs/lora_check.py)
    "eval.candidates": (2, 1, 16),
    "base_data": ("walker-stand-medium-expert-40traj",) * 2 + ("walker-stand-medium-expert-1000traj",),
}


def get_config(size: str = "small") -> ml_collections.ConfigDict:
    c = base.base_config(size)
    c.task = "stand_walk"  # one of psec_jax.rl.continual.TASKS
    c.base_data = ""  # pi_0's data (sizes table)
    c.skill_data = "walker-{task}-expert-10traj"  # data of each new skill ({task} = walk / run)
    c.methods = METHODS  # columns of the table
    return base.apply_sizes(c, SIZES, size)
