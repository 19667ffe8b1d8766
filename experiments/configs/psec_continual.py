"""Config of `psec-jax psec_continual`: continual policy shift on the DeepMind Control walker.

    psec-jax psec_continual --config=experiments/configs/psec_continual.py:small --workdir=runs/s2w
    psec-jax psec_continual --config=experiments/configs/psec_continual.py:paper --workdir=runs/s2w-paper
    ... --config.task=stand_run   (or stand_walk_run)

`small` fits this 2-core CPU (the `make demo` run); `paper` uses PSEC's network and step counts.
"""

import ml_collections

from psec_jax.rl import critics, pipeline

# task name -> (skills learned before the target, target task); pi_0 is always pretrained on stand
TASKS = {
    "stand_walk": ((), "walk"),
    "stand_run": ((), "run"),
    "stand_walk_run": (("walk",), "run"),
}


def get_config(size: str = "small") -> ml_collections.ConfigDict:
    if size not in ("small", "paper", "tiny"):
        raise ValueError(f"psec_continual config: size must be small, paper or tiny, got {size!r}")
    small, tiny = size != "paper", size == "tiny"
    c = ml_collections.ConfigDict()
    c.size = size  # which preset this is
    c.seed = 0  # root seed; seed s of a stage uses key(seed + s)
    c.num_seeds = 3  # seeds trained at once (vmapped) and evaluated
    c.task = "stand_walk"  # one of TASKS
    c.base_data = "walker-stand-medium-expert-" + ("40traj" if small else "1000traj")  # pi_0's data
    c.skill_data = "walker-{task}-expert-10traj"  # data of each new skill ({task} = walk / run)
    c.share_pretrain = small  # one pi_0 (seed 0) for all seeds: the given pretrained policy
    c.network = pipeline.network_config("tiny" if tiny else size)
    c.methods = ("scratch", "asec", "nsec", "psec_mlp", "psec_fixed", "psec")  # columns of the table

    c.pretrain = ml_collections.ConfigDict()
    c.pretrain.steps = 200 if tiny else (10_000 if small else 1_000_000)  # gradient steps of diffusion BC
    c.pretrain.batch_size = 32 if tiny else (256 if small else 2048)  # batch size
    c.pretrain.learning_rate = 3e-4  # adamw peak, cosine decay to 0
    c.pretrain.weight_decay = 0.0  # adamw weight decay
    c.pretrain.ema = 0.001 if not small else 0.005  # Polyak rate of the sampling copy
    c.pretrain.log_every = 100 if tiny else (1000 if small else 10_000)  # steps per jitted chunk / log line

    c.expand = ml_collections.ConfigDict()
    c.expand.steps = 200 if tiny else (6000 if small else 100_000)  # gradient steps per new skill (and scratch)
    c.expand.batch_size = 32 if tiny else 256  # batch size
    # adamw peak, cosine decay. 1e-3 on the CPU budget: after 8k steps the LoRA walk skill returned 496
    # (lr 1e-3) vs 59 (lr 3e-4), 6 episodes each (runs/lora_check.py)
    c.expand.learning_rate = 1e-3 if small else 3e-4
    c.expand.weight_decay = 0.0  # adamw weight decay
    c.expand.ema = 0.001 if not small else 0.005  # Polyak rate of the sampling copy
    c.expand.log_every = 100 if tiny else (500 if small else 10_000)  # steps per chunk
    c.expand.critic = critics.default_config("reward")  # IQL: expectile 0.7, beta 3, gamma 0.99

    c.compose = ml_collections.ConfigDict()
    c.compose.steps = 100 if tiny else 1000  # gradient steps of the composer (PSEC: 1k)
    c.compose.batch_size = 32 if tiny else 256  # batch size
    c.compose.learning_rate = 1e-3  # adam
    c.compose.network_dropout = False  # fit with the frozen noise net's dropout on (it acts without it)
    c.compose.log_every = 100 if tiny else 500  # steps per chunk
    c.compose.hidden = (16,) if tiny else (256, 256)  # AlphaNet widths
    c.compose.fixed_weight = 1.0  # psec_fixed: every skill at this weight, no context module

    c.eval = ml_collections.ConfigDict()
    c.eval.episodes = 2 if tiny else (4 if small else 10)  # episodes per seed and method
    # actions sampled per state, the best by Q kept. 1 on the CPU budget: the critic is far from
    # converged after a few thousand steps (mean Q ~30 where returns imply ~95) and picking the argmax
    # of 8 candidates cut the walk skill's return from 496 to 55 (runs/lora_check.py)
    c.eval.candidates = 2 if tiny else (1 if small else 16)
    c.eval.episode_length = 20 if tiny else 1000  # environment steps per episode
    return c
