"""Config of `psec-jax psec_safe`: multi-objective (safe) composition on a velocity-constrained body.

    psec-jax psec_safe --config=experiments/configs/psec_safe.py:small --workdir=runs/safe-hc
    psec-jax psec_safe --config=experiments/configs/psec_safe.py:paper --workdir=runs/safe-hc-paper
    ... --config.env=ant   (halfcheetah, hopper, walker2d or ant: the bodies with a velocity cost)

`small` fits this 2-core CPU; `paper` uses PSEC's network and step counts. `tiny` is for tests.
"""

import ml_collections

from psec_jax.rl import critics, pipeline


def get_config(size: str = "small") -> ml_collections.ConfigDict:
    if size not in ("small", "paper", "tiny"):
        raise ValueError(f"psec_safe config: size must be small, paper or tiny, got {size!r}")
    small, tiny = size != "paper", size == "tiny"
    c = ml_collections.ConfigDict()
    c.size = size  # which preset this is
    c.seed = 0  # root seed; seed s of a stage uses key(seed + s)
    c.num_seeds = 3  # seeds trained at once (vmapped) and evaluated
    c.env = "halfcheetah"  # evaluation body (must have a velocity cost: halfcheetah, hopper, walker2d, ant)
    c.data = "{env}-medium-expert-" + ("100traj" if small else "1000traj")  # offline data with costs ({env})
    c.cost_limit = 10.0  # episode cost budget: normalised cost = cost / cost_limit; safe data = cost <= it
    c.share_pretrain = small  # one pi_0 (seed 0) for all seeds
    c.network = pipeline.network_config("tiny" if tiny else size)
    c.methods = ("bc", "reward", "cost", "asec", "nsec", "psec")  # columns of the table (safe.METHODS)

    c.pretrain = ml_collections.ConfigDict()
    c.pretrain.steps = 200 if tiny else (6000 if small else 1_000_000)  # gradient steps of diffusion BC
    c.pretrain.batch_size = 32 if tiny else (256 if small else 2048)  # batch size
    c.pretrain.learning_rate = 3e-4  # adamw peak, cosine decay to 0
    c.pretrain.weight_decay = 0.0  # adamw weight decay
    c.pretrain.ema = 0.001 if not small else 0.005  # Polyak rate of the sampling copy
    c.pretrain.log_every = 100 if tiny else (1000 if small else 10_000)  # steps per jitted chunk / log line

    c.expand = ml_collections.ConfigDict()  # shared by the reward and the cost skill
    c.expand.steps = 200 if tiny else (3000 if small else 100_000)  # gradient steps per skill
    c.expand.batch_size = 32 if tiny else 256  # batch size
    c.expand.learning_rate = 3e-4  # adamw peak, cosine decay
    c.expand.weight_decay = 0.0  # adamw weight decay
    c.expand.ema = 0.001 if not small else 0.005  # Polyak rate of the sampling copy
    c.expand.log_every = 100 if tiny else (500 if small else 10_000)  # steps per chunk

    c.critics = ml_collections.ConfigDict()
    c.critics.reward = critics.default_config("reward")  # IQL critic of the reward skill (kind must stay "reward")
    c.critics.cost = critics.default_config("cost")  # reachability critic of the cost skill (kind "cost")
    if tiny:
        c.critics.reward.hidden = c.critics.cost.hidden = (32, 32)

    c.compose = ml_collections.ConfigDict()
    c.compose.steps = 100 if tiny else 1000  # gradient steps of each composer (PSEC: 1k), on the safe data
    c.compose.batch_size = 32 if tiny else 256  # batch size
    c.compose.learning_rate = 1e-3  # adam
    c.compose.network_dropout = False  # fit with the frozen noise net's dropout on (it acts without it)
    c.compose.log_every = 100 if tiny else 500  # steps per chunk
    c.compose.hidden = (16,) if tiny else (256, 256)  # AlphaNet widths

    c.eval = ml_collections.ConfigDict()
    c.eval.episodes = 2 if tiny else (4 if small else 10)  # episodes per seed and method
    c.eval.candidates = 2 if tiny else (8 if small else 16)  # actions sampled per state, kept by safe_choice
    c.eval.episode_length = 20 if tiny else 1000  # environment steps per episode (references are 1000-step)
    return c
