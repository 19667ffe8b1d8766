"""Training the MoE language model: `make_train(config, router) -> Trainer` of pure functions.

    trainer = make_train(config, "top_p")
    states = jax.vmap(trainer.init)(keys)                                # members on a leading axis
    states, metrics = jax.jit(jax.vmap(trainer.chunk, (0, None, 0)))(states, batches, ps)
    final, history = jax.jit(trainer.train)(key, p)                      # the whole run in one scan

A *member* is one model: its own initialisation key and top-p threshold `p` (a traced scalar, so
thresholds and seeds vmap into one compiled program). Every member sees the same batches in the same
order (equal data): batches come from the host pipeline (`psec_jax.models.pipeline`), a pure
function of (config.seed, step), so a run resumed from a checkpoint at step s continues exactly.

Stages (`STAGES`, named in `config.train.routers`, workdirs and results): "top1" and "top2" (the top-k
router with raw softmax weights, load-balance loss) and "top_p" (the paper's dynamic routing: threshold
p, load-balance and dynamic-entropy losses). A stage name is not a router name: each stage is a set of
`MoEConfig` overrides (router and k) on the config's model and router sections.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import struct

from psec_jax.models import transformer as tf
from psec_jax.models.pipeline import Batch
from psec_jax.models.tasks import NUM_LABELS
from psec_jax.moe import MoEConfig
from psec_jax.routing import ROUTERS as ROUTER_TABLE
from psec_jax.routing import get_router

# The LM's named stages -> MoEConfig overrides. The names are the experiment's (workdirs, committed
# results), not router names: the router is the override's `router`, a name in psec_jax.routing.ROUTERS.
# Any other router of that table is a stage too, under its own name (`stage_overrides`).
STAGES: dict[str, dict[str, Any]] = {
    "top1": {"router": "top_k", "k": 1},
    "top2": {"router": "top_k", "k": 2},
    "top3": {"router": "top_k", "k": 3},
    "top_p": {"router": "top_p"},
    # control: top-p's expert counts, each token given the count of the same position in the previous
    # sequence of the batch (`MoEConfig.count_roll` = seq_len): the counts no longer follow the token
    "top_p_rolled": {"router": "top_p", "count_roll": "seq_len"},
}


def stage_names() -> tuple[str, ...]:
    """Every name `config.train.routers` may hold: the named stages, then every other router in the table."""
    return tuple(STAGES) + tuple(name for name in ROUTER_TABLE if name not in STAGES)


def stage_overrides(stage: str) -> dict[str, Any]:
    """The MoEConfig overrides of a stage: its entry in `STAGES`, else {"router": stage} for a router of
    the table; ValueError for anything else."""
    if stage in STAGES:
        return STAGES[stage]
    if stage in ROUTER_TABLE:
        return {"router": stage}
    raise ValueError(f"unknown router {stage!r}; choose from {stage_names()}")


ROUTERS = tuple(STAGES)  # the experiment's default stage names (`config.train.routers`: any of stage_names())


@struct.dataclass
class TrainState:
    params: Any  # transformer parameters (float32)
    opt_state: optax.OptState  # clip + AdamW state (Adam moments shaped like params, step count)
    step: jax.Array  # [] int32, gradient steps taken


class Trainer(NamedTuple):
    spec: tf.Spec
    init: Callable[[jax.Array], TrainState]  # key -> initial state of one member
    chunk: Callable[
        [TrainState, Batch, jax.Array], tuple[TrainState, dict]
    ]  # S steps on Batch [S, B, T] -> chunk means
    evaluate: Callable[[Any, Batch, jax.Array, jax.Array], dict]  # (params, Batch [N, B, T], text rows [N, B], p)
    tokens: Callable[[Any, Batch, jax.Array], dict]  # (params, Batch [N, B, T], p) -> `token_outputs`
    train: Callable[[jax.Array, jax.Array], tuple[TrainState, dict]]  # (key, p) -> (state, [chunks] metrics)
    tx: optax.GradientTransformation  # the optimizer (its state's layout shards like the params)
    param_axes: Any  # logical axis names of every parameter as `tf.init` declares them (`tf.param_axes`)


def moe_config(config: ml_collections.ConfigDict, stage: str) -> MoEConfig:
    """The MoE layers' config of a stage (a name in `STAGES`): `config.model`'s dispatch choices,
    `config.router`'s threshold and loss weights, and the stage's overrides. The dynamic (entropy) loss
    only weighs on routers that use p (a variable expert count); 0 for the others."""
    overrides = dict(stage_overrides(stage))
    if overrides.get("count_roll") == "seq_len":
        overrides["count_roll"] = int(config.data.seq_len)
    m, r = config.model, config.router
    router = get_router(overrides.get("router", MoEConfig.router))
    # top-p keeps raw weights, as the official code; top-1 too (Switch): renormalised, its one weight is 1
    # and the LM loss would give the router no gradient at all
    k = overrides.get("k", MoEConfig.k)
    base = dict(
        p=r.p,
        max_k=m.max_k or None,
        renormalize=router.uses_k and k > 1 and r.renormalize_top_k,
        dispatch=m.dispatch,
        backend=m.backend,
        grouped_matmul=m.grouped_matmul,
        load_balance_weight=r.load_balance_weight,
        dynamic_weight=r.dynamic_weight if router.uses_p else 0.0,
        z_weight=r.z_weight,
        load_balance_norm=r.load_balance_norm,
    )
    return MoEConfig(**{**base, **overrides})


def model_spec(config: ml_collections.ConfigDict, router: str) -> tf.Spec:
    """The transformer Spec of `config.model` for the stage named `router` (a name in `STAGES`:
    "top1", "top2" or "top_p")."""
    m = config.model
    return tf.Spec(
        vocab_size=config.data.vocab_size,
        d_model=m.d_model,
        num_layers=m.num_layers,
        num_heads=m.num_heads,
        num_experts=m.num_experts,
        d_ff_expert=m.d_ff_expert,
        d_ff=m.d_ff,
        moe_every=m.moe_every,
        moe=moe_config(config, router),
        dtype=m.dtype,
        rope_base=m.rope_base,
        init=m.init,
        aux_layers=config.router.aux_layers,
        moe_position=m.moe_position,
        mask_padding=config.router.mask_padding,
        remat=m.remat,
        scan_unroll=m.scan_unroll or m.num_layers // m.moe_every,
        gather_weights=m.gather_weights,
    )


def optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """Global-norm clipping, then AdamW with linear warmup and cosine decay over train.num_steps; no
    weight decay on the RMSNorm scales and the routers (decay would flatten the router's probabilities
    and so, by itself, raise top-p's expert count)."""
    o = config.optim
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, o.learning_rate, o.warmup_steps, config.train.num_steps, end_value=o.learning_rate * o.final_lr_fraction
    )
    no_decay = ("norm", "router")
    decay = lambda params: jax.tree_util.tree_map_with_path(
        lambda path, _: not any(n in str(getattr(k, "key", "")) for k in path for n in no_decay), params
    )
    return optax.chain(
        optax.clip_by_global_norm(o.clip_norm),
        optax.adamw(schedule, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay, mask=decay),
    )


def eval_sums(spec: tf.Spec, params: Any, batch: Batch, text_rows: jax.Array, p: jax.Array) -> dict[str, jax.Array]:
    """Sums for validation metrics over one Batch [B, T] whose rows `text_rows` [B] (bool) are held-out
    text and the others packed task rows. Token groups m: 0 = text tokens, 1 + c = positions whose
    target is an answer token of task label c (`tasks.label_names()`). Routing is counted at the
    position that predicts the token. Returns count [M], nll, nll_sq, correct (greedy next token is
    the target) [M] and experts [G, M] (sum of experts per token), M = 1 + NUM_LABELS."""
    if text_rows.shape != batch.inputs.shape[:1]:
        raise ValueError(f"text_rows has shape {text_rows.shape}, the batch has {batch.inputs.shape[0]} rows")
    out = tf.apply(params, batch.inputs, spec, p)
    _, nll = tf.cross_entropy(out.logits, batch.targets, batch.weights)
    text = text_rows[:, None] & (batch.weights > 0)
    masks = jnp.stack([text] + [batch.labels == c for c in range(NUM_LABELS)]).astype(jnp.float32)  # [M, B, T]
    correct = (jnp.argmax(out.logits, -1) == batch.targets).astype(jnp.float32)
    return {
        "count": masks.sum((1, 2)),
        "nll": jnp.einsum("mbt,bt->m", masks, nll),
        "nll_sq": jnp.einsum("mbt,bt->m", masks, nll * nll),
        "correct": jnp.einsum("mbt,bt->m", masks, correct),
        "experts": jnp.einsum("mbt,gbt->gm", masks, out.stats["experts_per_token"].astype(jnp.float32)),
    }


def eval_metrics(sums: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Validation metrics from `eval_sums` (summed over any number of batches); NaN for an empty group.

    val_loss, val_loss_se (standard error over tokens), val_experts [] and val_experts_per_layer [G] on
    text tokens; task_loss, task_accuracy, task_experts [NUM_LABELS] and task_experts_per_layer
    [G, NUM_LABELS] on answer tokens.
    """
    n = jnp.where(sums["count"] > 0, sums["count"], jnp.nan)
    mean, experts = sums["nll"] / n, sums["experts"] / n  # [M], [G, M]
    var = jnp.maximum(sums["nll_sq"] / n - mean**2, 0.0)
    return {
        "val_loss": mean[0],
        "val_loss_se": jnp.sqrt(var[0] / n[0]),
        "val_experts": experts[:, 0].mean(),
        "val_experts_per_layer": experts[:, 0],
        "task_loss": mean[1:],
        "task_accuracy": sums["correct"][1:] / n[1:],
        "task_experts": experts[:, 1:].mean(0),
        "task_experts_per_layer": experts[:, 1:],
    }


def evaluate_all(spec: tf.Spec, params: Any, batches: Batch, text_rows: jax.Array, p: jax.Array) -> dict:
    """`eval_metrics` over every batch of `batches` [N, B, T] (text_rows [N, B]), in one scan."""
    sums_of = lambda b: eval_sums(spec, params, b[0], b[1], p)
    first = jax.tree.map(lambda a: a[0], (batches, text_rows))
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(sums_of, first))
    sums, _ = jax.lax.scan(lambda acc, b: (jax.tree.map(jnp.add, acc, sums_of(b)), None), zeros, (batches, text_rows))
    return eval_metrics(sums)


def token_outputs(spec: tf.Spec, params: Any, batches: Batch, p: jax.Array) -> dict[str, jax.Array]:
    """Per-position outputs over batches [N, B, T] (one batch at a time, `lax.map`): nll [N, B, T]
    float32 (the target's negative log-likelihood) and experts [G, N, B, T] uint8 (experts the routed
    input token used in each MoE layer), for per-token analyses (`psec_jax.models.difficulty`)."""

    def one(b: Batch) -> dict[str, jax.Array]:
        out = tf.apply(params, b.inputs, spec, p)
        _, nll = tf.cross_entropy(out.logits, b.targets, b.weights)
        return {"nll": nll, "experts": out.stats["experts_per_token"].astype(jnp.uint8)}

    out = jax.lax.map(one, batches)
    return {"nll": out["nll"], "experts": jnp.moveaxis(out["experts"], 1, 0)}


def accumulate_gradients(
    spec: tf.Spec, params: Any, batch: Batch, p: jax.Array, microbatches: int = 1
) -> tuple[Any, dict[str, jax.Array]]:
    """Gradients of the training loss on Batch [B, T], in `microbatches` sequential slices of B / m rows
    each (slice i: every m-th row from row i), run by a `lax.scan` (activation memory of one slice;
    gradients summed in the params' dtype).

    The LM loss is the batch's token-weighted mean whatever m (each slice's mean is weighted by its share
    of the tokens); the aux losses (load balance, dynamic, z) are means over the slices of each slice's
    value, as in Megatron / MaxText gradient accumulation: with m > 1 they see B / m rows at a time, so
    they, and only they, differ from m = 1. Returns (grads, metrics): loss, total_loss, load_balance,
    dynamic_loss, truncated_fraction, dropped_fraction, max_expert_load (means over slices) and
    experts_per_layer [G] (sum over target tokens of the experts used)."""
    rows = batch.inputs.shape[0]
    if microbatches < 1 or rows % microbatches:
        raise ValueError(f"train.microbatches={microbatches} must be >= 1 and divide the batch's {rows} rows")
    total_weight = jnp.maximum(batch.weights.sum(), 1.0)

    def one(params: Any, mb: Batch) -> tuple[jax.Array, dict]:
        _, (out, lm) = tf.loss(params, mb.inputs, mb.targets, mb.weights, spec, p)
        share = mb.weights.sum() / total_weight  # this slice's part of the batch's token-weighted mean
        objective = share * lm + tf.layer_aux(out.aux["total"], spec) / microbatches
        s = out.stats
        metrics = {
            "loss": share * lm,
            "total_loss": objective,
            "load_balance": out.aux["load_balance"].mean() / microbatches,
            "dynamic_loss": out.aux["dynamic"].mean() / microbatches,
            "truncated_fraction": s["truncated_fraction"].mean() / microbatches,
            "dropped_fraction": s["dropped_fraction"].mean() / microbatches,
            "max_expert_load": s["expert_load"].max(-1).mean() / microbatches,
            # experts per token, summed over the positions whose target is not padding
            "experts_per_layer": jnp.einsum("gbt,bt->g", s["experts_per_token"].astype(jnp.float32), mb.weights),
        }
        return objective, metrics

    grad_fn = jax.grad(one, has_aux=True)
    if microbatches == 1:
        return grad_fn(params, batch)
    # slice i = rows i, i + m, i + 2m, ...: with rows split over devices in contiguous blocks, every
    # device holds its share of every slice, so slicing moves nothing between devices
    slices = jax.tree.map(
        lambda a: jnp.swapaxes(a.reshape((rows // microbatches, microbatches) + a.shape[1:]), 0, 1), batch
    )

    def add(acc: tuple[Any, dict], mb: Batch) -> tuple[tuple[Any, dict], None]:
        return jax.tree.map(jnp.add, acc, grad_fn(params, mb)), None

    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(grad_fn, params, batch))
    (grads, metrics), _ = jax.lax.scan(add, zeros, slices)
    return grads, metrics


def make_train(
    config: ml_collections.ConfigDict,
    router: str,
    host_batches: Callable[[int], Batch] | None = None,
    validation: Batch | None = None,
) -> Trainer:
    """Pure functions for training one member with the named router.

    host_batches(start_step) -> Batch [S, B, T] (S = train.log_every) and the validation Batch are only
    needed by `train` (which fetches batches with `jax.pure_callback` inside its scan) and `chunk`'s
    end-of-chunk evaluation uses `validation` when given (its metrics are then added to the chunk's).
    """
    spec = model_spec(config, router)
    tx = optimizer(config)
    tc = config.train
    if validation is not None:
        text_rows = jnp.arange(validation.inputs.shape[0]) < config.data.val_corpus_rows  # text rows come first

    def init(key: jax.Array) -> TrainState:
        params = tf.init(key, spec)
        return TrainState(params, tx.init(params), jnp.zeros((), jnp.int32))

    def step(state: TrainState, batch: Batch, p: jax.Array) -> tuple[TrainState, dict]:
        grads, sums = accumulate_gradients(spec, state.params, batch, p, tc.microbatches)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        per_layer = sums["experts_per_layer"] / jnp.maximum(batch.weights.sum(), 1.0)
        metrics = {
            **{k: v for k, v in sums.items() if k != "experts_per_layer"},
            "experts": per_layer.mean(),
            "experts_per_layer": per_layer,
            "grad_norm": optax.tree.norm(grads),
        }
        return TrainState(params, opt_state, state.step + 1), metrics

    def chunk(state: TrainState, batches: Batch, p: jax.Array) -> tuple[TrainState, dict]:
        state, metrics = jax.lax.scan(lambda s, b: step(s, b, p), state, batches)
        metrics = jax.tree.map(lambda m: m.mean(0), metrics)  # chunk means, the unit that is logged
        if validation is not None:
            metrics = {**metrics, **eval_metrics(eval_sums(spec, state.params, validation, text_rows, p))}
        return state, metrics

    def train(key: jax.Array, p: jax.Array) -> tuple[TrainState, dict]:
        if host_batches is None:
            raise ValueError("make_train(..., host_batches=...) is needed for train()")
        shape = jax.eval_shape(lambda: host_batches(0))

        def one_chunk(state: TrainState, _) -> tuple[TrainState, dict]:
            batches = jax.pure_callback(lambda s: host_batches(int(s)), shape, state.step, vmap_method="sequential")
            return chunk(state, batches, p)

        return jax.lax.scan(one_chunk, init(key), None, length=tc.num_steps // tc.log_every)

    return Trainer(
        spec,
        init,
        chunk,
        lambda params, batches, rows, p: evaluate_all(spec, params, batches, rows, p),
        lambda params, batches, p: token_outputs(spec, params, batches, p),
        train,
        tx,
        tf.param_axes(spec),
    )
