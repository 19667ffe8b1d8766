"""Config of `psec-jax psec_continual`: continual policy shift on the DeepMind Control walker.

    psec-jax psec_continual --config=psec_continual:small --workdir=runs/s2w
    psec-jax psec_continual --config=psec_continual:small,paper_protocol --workdir=...
    ... --config.task=stand_run   (or stand_walk_run)   --config.skill_trajectories=3

The argument is ``SIZE[,PROTOCOL]`` or ``demo`` (``DEMO``: what `make demo` runs). Sizes: `small` fits
this 2-core CPU, `paper` uses PSEC's network
and step counts, `tiny` is for tests. Protocols (``PROTOCOLS``): `default`, the project's own, and
`paper_protocol`, the official code's semantics as far as the CPU budget allows (its steps are the
size's). Each protocol field is a switch of its own and can be set alone (``--config.obs_norm=False``).
The fields shared by every setting are in `psec_jax.rl.config.base_config`.
"""

import ml_collections

from psec_jax.rl import config as base
from psec_jax.rl.continual import METHODS

# field -> (tiny, small, paper), where this setting differs from psec_jax.rl.config.SIZES
SIZES = {
    "num_seeds": (2, 10, 10),  # independent seeds (each its own pi_0 unless share_pretrain)
    "share_pretrain": (True, False, False),  # tiny shares one pi_0 to keep tests fast
    "eval.episodes": (2, 10, 10),
    "pretrain.steps": (200, 10_000, 1_000_000),
    "expand.steps": (200, 6000, 100_000),
    # 1e-3 on the CPU budget: after 8k steps the LoRA walk skill returned 496 (lr 1e-3) vs 59 (lr 3e-4),
    # 6 episodes each (runs/lora_check.py)
    "expand.learning_rate": (1e-3, 1e-3, 3e-4),
    # 1 on the CPU budget: the critic is far from converged after a few thousand steps (mean Q ~30 where
    # returns imply ~95) and picking the argmax of 8 candidates cut the walk skill's return from 496 to
    # 55 (runs/lora_check.py); the official main launcher also samples one action
    "eval.candidates": (2, 1, 16),
    "base_data": ("walker-stand-medium-expert-40traj",) * 2 + ("walker-stand-medium-expert-1000traj",),
}

PROTOCOL_NAMES = ("default", "paper_protocol")

# protocol -> {field: (tiny, small, paper)}, on top of the size; "default" changes nothing
PROTOCOLS = {
    "default": {},
    "paper_protocol": {
        "obs_norm": (False,) * 3,  # official: no observation normalisation anywhere
        # paper: pi_0 on 1000 expert stand trajectories (a TD3 expert's), 1M steps at batch 2048; here
        # the expert behaviour policy's, 30k steps at batch 256 on the CPU
        "base_data": ("walker-stand-expert-200traj",) + ("walker-stand-expert-1000traj",) * 2,
        "pretrain.steps": (200, 30_000, 1_000_000),
        # official cosine horizons (2e6 steps) far exceed the steps run: the learning rate is ~constant
        "pretrain.cosine": (False,) * 3,
        "expand.cosine": (False,) * 3,
        "expand.weight_decay": (1e-4,) * 3,  # official adamw weight decay
        "expand.objective": ("advantage",) * 3,  # official main branch: exp_adv
        "critics.reward.beta": (1.0,) * 3,  # official main / gymnasium: temperature 1 on raw rewards
        "compose.alpha_reg": (1.0,) * 3,  # official composer regulariser (compose.alpha_reg_form "pairs")
        "compose.learning_rate": (3e-4,) * 3,  # official adam 3e-4 (1k steps)
        "compose.batch_size": (32, 2048, 2048),  # official composer batch (its launcher's 512 is misspelt)
    },
}


# `make demo`: the paper protocol at small size on the committed pi_0 (made by round one's s2w_paper run:
# 30k steps on walker-stand-expert-1000traj as generated then, raw observations), one LoRA skill against
# scratch for 5 seeds sharing that pi_0, shortened to fit 20 minutes on a 2-core CPU
DEMO_PI0 = "walker_stand_small_paper_pi0"  # shipped in psec_jax/rl/pretrained (rl.pi0.pretrained_root)
DEMO = {
    "pretrained": DEMO_PI0,
    "share_pretrain": True,
    "num_seeds": 5,
    "methods": ("scratch", "psec"),
    "expand.steps": 2000,
}


def get_config(arg: str = "small") -> ml_collections.ConfigDict:
    """``arg``: ``SIZE`` or ``SIZE,PROTOCOL`` (e.g. ``small,paper_protocol``), or ``demo``."""
    if arg == "demo":
        c = get_config("small,paper_protocol")
        c.protocol = "demo"
        return base.apply_sizes(c, {k: (v,) * 3 for k, v in DEMO.items()}, "small")
    size, _, protocol = arg.partition(",")
    protocol = protocol or "default"
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r} in {arg!r}; choose from {PROTOCOL_NAMES}")
    c = base.base_config(size)
    c.protocol = protocol  # which protocol preset this is (its fields can still be overridden one by one)
    c.task = "stand_walk"  # one of psec_jax.rl.continual.TASKS
    c.base_data = ""  # pi_0's data (sizes / protocol table)
    c.skill_trajectories = 10  # target trajectories of each new skill (paper: 10; its ablation 10-100)
    c.skill_data = "walker-{task}-expert-{n}traj"  # data of each new skill ({task} = walk / run)
    c.methods = METHODS  # columns of the table
    base.apply_sizes(c, SIZES, size)
    return base.apply_sizes(c, PROTOCOLS[protocol], size)
