"""The base config of the PSEC settings, with one table of sizes; each setting's config
(psec_jax/configs/psec_*.py) starts from ``base_config(size)`` and overrides what differs.

    c = base_config("small")          # the CPU sizes; "tiny" for tests, "paper" for PSEC's own
"""

from __future__ import annotations

import ml_collections

from psec_jax import config_check as cc
from psec_jax.rl import critics

SIZES_NAMES = ("tiny", "small", "paper")

# field -> (tiny, small, paper)
SIZES = {
    "network.hidden": (16, 128, 256),  # residual width of the noise net's MLP-ResNet
    "network.ff": (32, 512, 1024),  # width inside each residual block
    "network.num_blocks": (1, 2, 3),  # residual blocks
    "network.time_features": (8, 32, 64),  # Fourier features of the diffusion step
    "network.time_hidden": (16, 64, 128),  # width of the time MLP (2 layers)
    "network.mlp_adapter_hidden": ((16,), (128, 128), (256, 256)),  # MLP-adapter skill widths (ablation)
    # one pi_0 (seed 0's) for all seeds, else each seed trains its own (independent seeds: the spread
    # includes pi_0's); a setting's config may override it (psec_continual: independent at small size)
    "share_pretrain": (True, True, False),
    "pretrain.steps": (200, 6000, 1_000_000),  # gradient steps of diffusion BC
    "pretrain.batch_size": (32, 256, 2048),
    "pretrain.ema": (0.005, 0.005, 0.001),  # Polyak rate of the sampling copy
    "pretrain.log_every": (100, 1000, 10_000),  # steps per jitted chunk / log line
    "expand.steps": (200, 3000, 100_000),  # gradient steps per skill (and per scratch network)
    "expand.batch_size": (32, 256, 256),
    "expand.ema": (0.005, 0.005, 0.001),
    "expand.log_every": (100, 500, 10_000),
    "compose.steps": (100, 1000, 1000),  # gradient steps of each composer (PSEC: 1k)
    "compose.batch_size": (32, 256, 256),
    "compose.log_every": (100, 500, 500),
    "compose.hidden": ((16,), (256, 256), (256, 256)),  # AlphaNet widths
    "eval.episodes": (2, 4, 10),  # episodes per seed and method
    "eval.candidates": (2, 8, 16),  # actions sampled per state, one kept by the setting's acting rule
    "eval.episode_length": (20, 1000, 1000),  # environment steps per episode (references are 1000-step)
    "eval.bootstrap_reps": (200, 2000, 2000),  # rliable bootstrap replications of the 95% intervals
}


def size_index(size: str) -> int:
    """Column of ``size`` in the size tables; ValueError naming the choices."""
    if size not in SIZES_NAMES:
        raise ValueError(f"unknown size {size!r}; choose from {SIZES_NAMES}")
    return SIZES_NAMES.index(size)


def apply_sizes(c: ml_collections.ConfigDict, table: dict[str, tuple], size: str) -> ml_collections.ConfigDict:
    """Sets each dotted field of ``table`` to its ``size`` column, in place; returns ``c``."""
    i = size_index(size)
    for field, values in table.items():
        cc.set_field(c, field, values[i])
    return c


def _stage() -> ml_collections.ConfigDict:
    s = ml_collections.ConfigDict()
    s.steps = 0  # gradient steps (sizes table)
    s.batch_size = 0  # batch size (sizes table)
    s.learning_rate = 3e-4  # adamw peak
    s.cosine = True  # cosine decay of the learning rate to 0 over ``steps`` (else constant)
    s.weight_decay = 0.0  # adamw weight decay
    s.ema = 0.0  # Polyak rate of the sampling copy (sizes table)
    s.log_every = 0  # steps per jitted chunk / log line (sizes table)
    return s


def network_config(size: str = "paper") -> ml_collections.ConfigDict:
    """The noise network and skill settings of a size (the ``network.*`` rows of ``SIZES``)."""
    c = ml_collections.ConfigDict()
    c.network = ml_collections.ConfigDict()
    n = c.network
    n.hidden = n.ff = n.num_blocks = n.time_features = n.time_hidden = 0  # sizes table
    n.mlp_adapter_hidden = ()  # sizes table
    n.dropout = 0.1  # dropout inside the residual blocks (training only)
    n.diffusion_steps = 5  # T of the VP schedule
    n.lora_rank = 8  # rank of every LoRA skill
    n.lora_alpha = 16.0  # LoRA scale (the official code multiplies by alpha, not alpha / rank)
    apply_sizes(c, {k: v for k, v in SIZES.items() if k.startswith("network.")}, size)
    return c.network


def base_config(size: str = "small") -> ml_collections.ConfigDict:
    """Every field the PSEC runner reads, at ``size``; a setting adds its own fields and overrides."""
    c = ml_collections.ConfigDict()
    c.size = size  # which preset this is
    c.seed = 0  # root seed; seed s of a stage uses key(seed + s)
    c.num_seeds = 3  # seeds trained at once (vmapped) and evaluated
    c.mesh = ml_collections.ConfigDict()
    # devices every stage's seeds are split over (parallel.sweep's data axis; a divisor of num_seeds);
    # -1: as many devices as divide num_seeds
    c.mesh.data = -1
    c.share_pretrain = False  # sizes table
    # standardise observations with pi_0's data statistics (every stage and acting); the official code
    # feeds raw observations (False)
    c.obs_norm = True
    # path of a pi_0 saved by an earlier run (its workdir's policies/pi0), or the name of one shipped in
    # psec_jax/rl/pretrained, to build on instead of pretraining; its network, data and normaliser must
    # match this config
    # ("" = pretrain here)
    c.pretrained = ""
    # path of a skill library saved by an earlier run (its workdir's policies/library_seed0, with
    # library_seed{i} beside it for each further seed) built on the same pi_0s (``pretrained`` of that
    # run's): its LoRA skills of this setting's names are loaded, not trained (they come without their
    # critics, so acting must sample one candidate); "" = train every skill here
    c.library = ""
    c.network = network_config(size)
    c.methods = ()  # columns of the table (the setting's method table)
    c.pretrain = _stage()  # diffusion BC of pi_0
    c.expand = _stage()  # each new skill, and the scratch baseline
    # skill (and scratch) loss: "advantage" weights the diffusion loss by clip(exp(beta (Q - V)), 0, max)
    # (official actor_objective exp_adv, the paper's); "bc" weights every sample 1 (official "bc")
    c.expand.objective = "advantage"
    c.critics = ml_collections.ConfigDict()
    c.critics.reward = critics.default_config("reward")  # IQL critic of reward skills (kind stays "reward")
    c.critics.cost = critics.default_config("cost")  # reachability critic of cost skills (kind "cost")
    c.compose = ml_collections.ConfigDict()
    c.compose.steps = c.compose.batch_size = c.compose.log_every = 0  # sizes table
    c.compose.learning_rate = 1e-3  # adam
    c.compose.hidden = ()  # AlphaNet widths (sizes table)
    c.compose.fixed_weight = 1.0  # fixed-weight composition: every skill at this weight, no context module
    c.compose.network_dropout = False  # fit with the frozen noise net's dropout on (it acts without it)
    # PSEC composer regulariser (param mode): weight of (mean alpha - t0)^2 + (mean alpha_new - t1)^2 added
    # to the diffusion loss, alpha = weight x LoRA scale (the official code's alpha replaces the scale) and
    # alpha_new that of the newest skill; official: 1 with targets (8, 16). 0 = off
    c.compose.alpha_reg = 0.0
    c.compose.alpha_targets = (8.0, 16.0)  # (t0, t1) of the regulariser, in LoRA-scale units
    # "pairs": the official semantics for any number of skills (each older skill paired with the newest;
    # minimum at the newest = t1, older = 2 t0 - t1; official for K = 2; one skill: t1); "mean": (mean alpha
    # - t0)^2 + (mean alpha_new - t1)^2 over all skills, the earlier port (one skill: pinned at 12), kept
    # so results made with it reproduce
    c.compose.alpha_reg_form = "pairs"
    # the routed composer (methods with composer "routed", psec_jax.routed): the AlphaNet's outputs are router
    # logits; each state composes its smallest set of skills whose probability exceeds p (or its k best)
    c.compose.routing = ml_collections.ConfigDict()
    c.compose.routing.router = "top_p"  # "top_p" (the MoE paper's dynamic routing) or "top_k"
    c.compose.routing.p = 0.5  # top-p threshold
    c.compose.routing.k = 1  # top-k skills per state
    c.compose.routing.max_k = 0  # top-p's most skills per state (0: every skill)
    # the selected skills' weights sum to 1 per state (else the raw probabilities, the MoE paper's top-p: a
    # state then runs its skills at their probability, at most their trained scale)
    c.compose.routing.renormalize = False
    c.compose.routing.backend = "dropless"  # "dropless" (each state's selected skills only) or "dense" (K-way)
    c.compose.routing.load_balance_weight = 1e-2  # weight of the load-balance loss (the MoE paper's)
    c.compose.routing.dynamic_weight = 1e-4  # weight of the dynamic (routing-entropy) loss (the MoE paper's)
    c.compose.routing.z_weight = 0.0  # weight of the router z-loss
    c.eval = ml_collections.ConfigDict()
    c.eval.episodes = c.eval.candidates = c.eval.episode_length = c.eval.bootstrap_reps = 0  # sizes table
    # how each method keeps one of its own candidate actions (psec_jax.rl.acting.RULES): "argmax_q",
    # "argmin_qc" (the official safe rule), "feasible_then_reward"; "" = the setting's own
    c.eval.rule = ""
    return apply_sizes(c, {k: v for k, v in SIZES.items() if not k.startswith("network.")}, size)
