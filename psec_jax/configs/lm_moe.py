"""Config for `psec-jax lm_moe`: top-1 vs top-2 vs top-p MoE language models ("Harder Tasks Need More
Experts") on the Python standard library's source plus a controlled task mixture.

    psec-jax lm_moe --config=lm_moe:small --workdir=runs/lm_moe_small
    psec-jax lm_moe --config=lm_moe:paper --workdir=/tmp/paper   # counts only

Presets: `tiny` (tests, seconds), `small` (this 2-core CPU: each router ~10 min per seed), `round2` (the
paired-seed table of six arms x 12 seeds, ~9 h here), `medium`
(throughput benchmarks: d_model 512, 8 layers, 8 experts of width 1408, 256-token rows), `paper` (the
paper's 24-layer, 16-expert model; `dry_run` by default: parameter counts from jax.eval_shape).
One base config; a preset overrides only the fields in its row of `SIZES`.
"""

import ml_collections

from psec_jax import config_check as cc

SIZES = {
    "tiny": {
        "data.vocab_size": 384,
        "data.max_corpus_bytes": 350_000,
        "data.seq_len": 64,
        "data.batch_size": 4,
        "data.task_rows": 1,
        "data.num_task_examples": 400,
        "data.num_val_task_examples": 100,
        "data.val_corpus_rows": 4,
        "data.val_task_rows": 4,
        "model.d_model": 32,
        "model.num_layers": 2,
        "model.num_heads": 2,
        "model.num_experts": 4,
        "model.d_ff_expert": 32,
        "model.d_ff": 32,
        "model.moe_every": 1,
        "model.backend": "dense",
        "train.num_steps": 8,
        "train.log_every": 4,
        "train.checkpoint_every": 4,
        "train.seeds": 1,
        "train.sweep_p": (0.3, 0.6),
        "optim.warmup_steps": 2,
    },
    "small": {},  # the base config
    # the round-two table (issue 32): 12 paired seeds (initialisation and data order) per arm, arms on the
    # top-k frontier (top-1/2/3), top-p at two thresholds and top-p's counts given to other tokens (the
    # control of adaptive allocation), 2M tokens per model drawn from the 32M-token deduplicated source of
    # the pinned packages; ~9 h on this 2-core CPU (top1 1.1 h, top2 1.5 h, top3 ~1.9 h, each top-p arm ~1.3 h)
    "round2": {
        "data.source": "packages",
        "data.final_val_rows": 1024,
        "data.num_task_examples": 50_000,
        "data.num_val_task_examples": 6_000,
        "train.routers": ("top1", "top2", "top3", "top_p", "top_p_rolled"),
        "train.arm_p": (0.3,),
        "train.sweep_p": (),
        "train.seeds": 12,
        "train.num_steps": 1000,
        "train.log_every": 100,
        "train.checkpoint_every": 100,
    },
    # shapes closer to real models, for throughput (benchmarks/lm_train_throughput.py): 4,096-token steps,
    # ~0.9 TFLOP per step at 1.5 experts per token (6 x active parameters x tokens)
    "medium": {
        "data.seq_len": 256,
        "model.d_model": 512,
        "model.num_layers": 8,
        "model.num_heads": 8,
        "model.d_ff_expert": 1408,
        "model.d_ff": 1408,
    },
    "paper": {
        "data.vocab_size": 32000,
        "data.seq_len": 2048,
        "data.batch_size": 512,
        "model.d_model": 1024,
        "model.num_layers": 24,
        "model.num_heads": 16,
        "model.num_experts": 16,
        "model.d_ff_expert": 2816,
        "model.remat": True,
        "model.scan_unroll": 1,
        "model.dtype": "bfloat16",
        "model.backend": "ragged",
        "train.num_steps": 100_000,
        "train.log_every": 100,
        "train.checkpoint_every": 1000,
        "train.seeds": 1,
        "dry_run": True,
    },
}


def get_config(preset: str = "small") -> ml_collections.ConfigDict:
    if preset not in SIZES:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(SIZES)}")
    config = ml_collections.ConfigDict()
    config.seed = 0  # root seed: member i of every router is initialised from fold_in(seed, i); batches use it too
    config.dry_run = False  # only print the model's parameter counts (jax.eval_shape, nothing allocated) and exit

    config.data = ml_collections.ConfigDict()
    config.data.vocab_size = 2048  # byte-level BPE vocabulary trained on the train split (2 special tokens)
    # corpus: "stdlib" (the interpreter's standard library, ~12 MB) or "packages" (the Python source of the
    # pinned packages, deduplicated: psec_jax.models.sources)
    config.data.source = "stdlib"
    config.data.max_corpus_bytes = 0  # 0: the whole corpus; else each split's first files up to this size
    config.data.seq_len = 128  # tokens per training row (rows hold seq_len + 1 tokens: inputs and shifted targets)
    config.data.batch_size = 16  # rows per gradient step
    config.data.task_rows = 4  # of which packed task-mixture rows (the rest are stdlib text windows)
    config.data.num_task_examples = 20_000  # generated training task examples (sort, addition, lookup: tasks.py)
    config.data.num_val_task_examples = 2_000  # held-out task examples (a different generator seed)
    config.data.val_corpus_rows = 32  # fixed held-out text windows evaluated after every chunk
    config.data.val_task_rows = 32  # fixed held-out task rows evaluated after every chunk
    config.data.seed = 0  # seed of the task generator (part of the cached data's identity)
    config.data.final_val_rows = 0  # text windows of the final evaluation (0: every window of the val split)
    config.data.heldout_rows = 128  # windows of each held-out set (val text at 2 x seq_len; other text)
    config.data.token_rows = 256  # val text windows whose per-position NLL and expert counts are saved

    config.model = ml_collections.ConfigDict()
    config.model.d_model = 128  # residual width
    config.model.num_layers = 4  # transformer blocks
    config.model.num_heads = 4  # attention heads (head size d_model / num_heads, even for RoPE)
    config.model.num_experts = 8  # routed SwiGLU experts per MoE layer
    config.model.d_ff_expert = 256  # hidden width of each expert
    config.model.d_ff = 256  # hidden width of the dense SwiGLU FFNs between MoE layers (moe_every > 1)
    config.model.moe_every = 1  # every moe_every-th layer is MoE (1: all layers, as in the paper)
    config.model.max_k = 0  # top-p slots per token (0: all experts, never truncated)
    config.model.backend = "dropless"  # "dropless" (exact, fastest on CPU), "dense" or "ragged" (GPU/TPU)
    config.model.grouped_matmul = "auto"  # "ragged" back-end's grouped matmul (kernels.gmm; "blas": MKL on CPU)
    config.model.dispatch = "argsort"  # routing: "argsort" (jnp routers) or "fused" (Pallas kernel; interpreted on CPU)
    config.model.dtype = "float32"  # activation dtype; "bfloat16" on accelerators (on this CPU it is 1.3x slower)
    config.model.rope_base = 10000.0  # RoPE frequency base
    # initialisation: "official" (the top-p paper's code, HF LLaMA: N(0, 0.02) for every matrix and the
    # embedding, so a fresh router is near uniform) or "fan_in" (N(0, 1) embedding, N(0, 1/fan_in) matrices)
    config.model.init = "official"
    config.model.moe_position = "first"  # MoE layer in each group of moe_every: "first" (official) or "last"
    config.model.remat = False  # recompute each layer in the backward pass (activation memory)
    # layer groups per layer-scan iteration; 0: all (one compiled body per layer: 5-10% faster steps on this
    # CPU at 4 layers, benchmarks/results/lm_train_throughput.json; the paper preset keeps 1, for compile time)
    config.model.scan_unroll = 0
    # FSDP: gather layer weights where used; None: yes, except on CPU meshes (a placeholder, so that
    # --config.model.gather_weights=true|false can set it: ml-collections refuses to override a plain None)
    config.model.gather_weights = ml_collections.config_dict.placeholder(bool)

    config.router = ml_collections.ConfigDict()
    config.router.p = 0.4  # top-p threshold of the main top-p run (the paper's)
    config.router.load_balance_weight = 1e-2  # a: load-balance loss weight, every router (per MoE layer)
    config.router.dynamic_weight = 1e-4  # b: dynamic (routing entropy) loss weight, top-p only
    config.router.z_weight = 0.0  # router z-loss weight (not in the paper)
    # load balance N * sum f_i P_i with f normalised to sum 1 ("assignments") or to k, the experts per
    # token ("tokens": GShard, HF Mixtral, MaxText); the paper does not say
    config.router.load_balance_norm = "tokens"
    config.router.aux_layers = "mean"  # aux losses over the MoE layers: "mean" (the scale of HF's pooled loss) or "sum"
    config.router.mask_padding = True  # aux losses and routing statistics leave out padded positions
    # top-k baselines' combine weights (k > 1): the raw probabilities, as top-p's (the official code), so
    # arms differ in routing and not in output scale; or renormalised to sum 1 (GShard, Mixtral). The
    # paper's top-2 weighting is unreleased; top-1 always keeps its raw probability (Switch)
    config.router.renormalize_top_k = False

    config.optim = ml_collections.ConfigDict()
    config.optim.learning_rate = 3e-3  # peak AdamW learning rate
    config.optim.warmup_steps = 50  # linear warmup from 0
    config.optim.final_lr_fraction = 0.1  # cosine decay to this fraction of the peak at train.num_steps
    config.optim.b1 = 0.9  # Adam first-moment decay
    config.optim.b2 = 0.95  # Adam second-moment decay
    config.optim.weight_decay = 0.1  # AdamW decoupled weight decay (not on RMSNorm scales)
    config.optim.clip_norm = 1.0  # global gradient-norm clipping

    config.train = ml_collections.ConfigDict()
    # one stage each (also "top3", and "top_p_rolled": top-p's counts given to other tokens), at equal steps
    config.train.routers = ("top1", "top2", "top_p")
    config.train.seeds = 3  # members per router (initialisations fold_in(seed, 0..seeds-1))
    config.train.arm_p = ()  # more top-p arms: one stage per threshold, every seed (named top_p<p>)
    config.train.sweep_p = (0.2, 0.3, 0.5)  # extra top-p thresholds (seed 0), one stage; () for none
    # "member": each seed its own batch order (seed i's order is the same in every stage: paired arms);
    # "shared": every member of every stage sees one order (seeds then vary initialisation only)
    config.train.data_order = "member"
    config.train.members = "map"  # run a stage's members in one program: "map" (lax.map) or "vmap"
    config.train.num_steps = 1000  # gradient steps per member (a multiple of log_every)
    config.train.microbatches = 1  # gradient accumulation: each step's batch in this many sequential slices
    config.train.log_every = 50  # steps per jitted lax.scan chunk; metrics and validation once per chunk
    config.train.checkpoint_every = 100  # steps between checkpoints (a multiple of log_every)
    config.train.max_to_keep = 2  # checkpoints kept per stage
    # the device mesh (psec_jax.models.members): with fsdp = expert = model = 1 a stage's members are split
    # over the devices; otherwise each member in turn is sharded over data x fsdp x expert x model
    config.mesh = ml_collections.ConfigDict()
    config.mesh.data = -1  # batch (data-parallel) axis; -1: the devices the other axes leave
    config.mesh.fsdp = 1  # weights' d_model and the batch split over this axis (FSDP)
    config.mesh.expert = 1  # experts split over this axis (and the batch)
    config.mesh.model = 1  # hidden widths (mlp, heads, vocab) split over this axis (tensor parallel)
    for field, value in SIZES[preset].items():
        cc.set_field(config, field, value)
    config.lock()
    return config
