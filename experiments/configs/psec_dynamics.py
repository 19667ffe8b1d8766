"""Config of `psec-jax psec_dynamics`: dynamics shift (pi_0 on shifted dynamics, a LoRA skill on 5% of
nominal-dynamics data, evaluated on the nominal environment).

    psec-jax psec_dynamics --config=experiments/configs/psec_dynamics.py:small --workdir=runs/dyn-hc
    psec-jax psec_dynamics --config=experiments/configs/psec_dynamics.py:paper --workdir=runs/dyn-hc-paper
    ... --config.env=walker2d --config.variant=thigh_2 --config.kind=medium-expert

`small` fits this 2-core CPU; `paper` uses PSEC's network and step counts and 1000-episode datasets
(as D4RL's 1M transitions). `tiny` is for tests.
"""

import ml_collections

from psec_jax.rl import critics, pipeline


def get_config(size: str = "small") -> ml_collections.ConfigDict:
    if size not in ("small", "paper", "tiny"):
        raise ValueError(f"psec_dynamics config: size must be small, paper or tiny, got {size!r}")
    small, tiny = size != "paper", size == "tiny"
    episodes = "200traj" if small else "1000traj"
    c = ml_collections.ConfigDict()
    c.size = size  # which preset this is
    c.seed = 0  # root seed; seed s of a stage uses key(seed + s); also picks the target subset
    c.num_seeds = 3  # seeds trained at once (vmapped) and evaluated
    c.env = "halfcheetah"  # body (halfcheetah, hopper, walker2d, ant); evaluated with nominal dynamics
    c.variant = "friction_0.5"  # source dynamics: friction_0.25, friction_0.5, gravity_2 or thigh_2
    c.kind = "medium"  # behaviour level of both datasets: medium, medium-expert, medium-replay, ...
    c.source_data = "{env}:{variant}-{kind}-" + episodes  # pi_0's data ({env}, {variant}, {kind})
    c.target_data = "{env}-{kind}-" + episodes  # nominal-dynamics data the target subset comes from
    c.target_fraction = 0.05  # share of the target episodes used (PSEC: 5%)
    c.share_pretrain = small  # one pi_0 (seed 0) for all seeds
    c.network = pipeline.network_config("tiny" if tiny else size)
    c.methods = ("source_only", "target_only", "psec")  # columns of the table (dynamics.METHODS)

    c.pretrain = ml_collections.ConfigDict()
    c.pretrain.steps = 200 if tiny else (6000 if small else 1_000_000)  # gradient steps of diffusion BC
    c.pretrain.batch_size = 32 if tiny else (256 if small else 2048)  # batch size
    c.pretrain.learning_rate = 3e-4  # adamw peak, cosine decay to 0
    c.pretrain.weight_decay = 0.0  # adamw weight decay
    c.pretrain.ema = 0.001 if not small else 0.005  # Polyak rate of the sampling copy
    c.pretrain.log_every = 100 if tiny else (1000 if small else 10_000)  # steps per jitted chunk / log line

    c.expand = ml_collections.ConfigDict()  # the target skill, and the target_only baseline
    c.expand.steps = 200 if tiny else (3000 if small else 100_000)  # gradient steps
    c.expand.batch_size = 32 if tiny else 256  # batch size
    c.expand.learning_rate = 3e-4  # adamw peak, cosine decay
    c.expand.weight_decay = 0.0  # adamw weight decay
    c.expand.ema = 0.001 if not small else 0.005  # Polyak rate of the sampling copy
    c.expand.log_every = 100 if tiny else (500 if small else 10_000)  # steps per chunk
    c.expand.critic = critics.default_config("reward")  # IQL: expectile 0.7, beta 3, gamma 0.99
    if tiny:
        c.expand.critic.hidden = (32, 32)

    c.eval = ml_collections.ConfigDict()
    c.eval.episodes = 2 if tiny else (4 if small else 10)  # episodes per seed and method
    c.eval.candidates = 2 if tiny else (8 if small else 16)  # actions sampled per state, best by Q kept
    c.eval.episode_length = 20 if tiny else 1000  # environment steps per episode (references are 1000-step)
    return c
