"""Training the MoE language model: `make_train(config, router) -> Trainer` of pure functions.

    trainer = make_train(config, "top_p")
    states = jax.vmap(trainer.init)(keys)                                # members on a leading axis
    states, metrics = jax.jit(jax.vmap(trainer.chunk, (0, None, 0)))(states, batches, ps)
    final, history = jax.jit(trainer.train)(key, p)                      # the whole run in one scan

A *member* is one model: its own initialisation key and top-p threshold `p` (a traced scalar, so
thresholds and seeds vmap into one compiled program). Every member sees the same batches in the same
order (equal data): batches come from the host pipeline (`psec_jax.models.pipeline`), a pure
function of (config.seed, step), so a run resumed from a checkpoint at step s continues exactly.

Routers: "top1" and "top2" (top-k with raw softmax weights, load-balance loss) and "top_p" (the
paper's dynamic routing: threshold p, load-balance and dynamic-entropy losses).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import struct

from psec_jax.models import transformer as tf
from psec_jax.models.pipeline import Batch
from psec_jax.models.tasks import NUM_LABELS

ROUTERS = ("top1", "top2", "top_p")


@struct.dataclass
class TrainState:
    params: Any  # transformer parameters (float32)
    opt_state: optax.OptState
    step: jax.Array  # [] int32, gradient steps taken


class Trainer(NamedTuple):
    spec: tf.Spec
    init: Callable[[jax.Array], TrainState]  # key -> initial state of one member
    chunk: Callable[[TrainState, Batch, jax.Array], tuple[TrainState, dict]]  # S steps on Batch [S, B, T] -> chunk means
    evaluate: Callable[[Any, Batch, jax.Array], dict]  # (params, validation Batch [B, T], p) -> metrics
    train: Callable[[jax.Array, jax.Array], tuple[TrainState, dict]]  # (key, p) -> (state, [chunks] metrics)


def model_spec(config: ml_collections.ConfigDict, router: str) -> tf.Spec:
    """The transformer Spec of `config.model` with the named router ("top1", "top2" or "top_p")."""
    if router not in ROUTERS:
        raise ValueError(f"unknown router {router!r}; choose from {ROUTERS}")
    m, r = config.model, config.router
    kind = {"top1": ("top_k", 1), "top2": ("top_k", 2), "top_p": ("top_p", 2)}[router]
    return tf.Spec(
        vocab_size=config.data.vocab_size, d_model=m.d_model, num_layers=m.num_layers, num_heads=m.num_heads,
        num_experts=m.num_experts, d_ff_expert=m.d_ff_expert, d_ff=m.d_ff, moe_every=m.moe_every,
        router=kind[0], k=kind[1], p=r.p, max_k=m.max_k or None, backend=m.backend, capacity_factor=m.capacity_factor,
        load_balance_weight=r.load_balance_weight, dynamic_weight=r.dynamic_weight if router == "top_p" else 0.0,
        z_weight=r.z_weight, dtype=m.dtype, rope_base=m.rope_base, remat=m.remat)


def optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """Global-norm clipping, then AdamW with linear warmup and cosine decay over train.num_steps; no
    weight decay on the RMSNorm scales."""
    o = config.optim
    schedule = optax.warmup_cosine_decay_schedule(0.0, o.learning_rate, o.warmup_steps, config.train.num_steps,
                                                  end_value=o.learning_rate * o.final_lr_fraction)
    decay = lambda params: jax.tree_util.tree_map_with_path(
        lambda path, _: not any("norm" in str(getattr(k, "key", "")) for k in path), params)
    return optax.chain(optax.clip_by_global_norm(o.clip_norm),
                       optax.adamw(schedule, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay, mask=decay))


def _masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    return jnp.sum(jnp.where(mask, x, 0.0)) / jnp.maximum(jnp.sum(mask), 1)


def evaluate(spec: tf.Spec, params: Any, val: Batch, p: jax.Array, num_corpus_rows: int) -> dict[str, jax.Array]:
    """Validation metrics of one member on a fixed Batch [B, T] whose first `num_corpus_rows` rows are
    held-out text and the rest packed task examples.

    Returns val_loss [] (text rows), val_experts [] and val_experts_per_layer [G] (text tokens), and per
    task label c (`tasks.label_names()`): task_loss / task_accuracy (greedy next token equals the
    answer token) [NUM_LABELS], task_experts [NUM_LABELS] and task_experts_per_layer [G, NUM_LABELS]
    over answer tokens only.
    """
    out = tf.apply(params, val.inputs, spec, p)
    _, nll = tf.cross_entropy(out.logits, val.targets, val.weights)
    n = out.stats["experts_per_token"].astype(jnp.float32)  # [G, B, T]
    text = (jnp.arange(val.inputs.shape[0]) < num_corpus_rows)[:, None] & (val.weights > 0)  # [B, T]
    correct = (jnp.argmax(out.logits, -1) == val.targets).astype(jnp.float32)
    labels = [val.labels == c for c in range(NUM_LABELS)]
    per_layer = jnp.stack([jax.vmap(_masked_mean, (0, None))(n, m) for m in labels], -1)  # [G, NUM_LABELS]
    return {
        "val_loss": _masked_mean(nll, text),
        "val_experts": _masked_mean(n.mean(0), text),
        "val_experts_per_layer": jax.vmap(_masked_mean, (0, None))(n, text),
        "task_loss": jnp.stack([_masked_mean(nll, m) for m in labels]),
        "task_accuracy": jnp.stack([_masked_mean(correct, m) for m in labels]),
        "task_experts": per_layer.mean(0),
        "task_experts_per_layer": per_layer,
    }


def make_train(config: ml_collections.ConfigDict, router: str, host_batches: Callable[[int], Batch] | None = None,
               validation: Batch | None = None) -> Trainer:
    """Pure functions for training one member with the named router.

    host_batches(start_step) -> Batch [S, B, T] (S = train.log_every) and the validation Batch are only
    needed by `train` (which fetches batches with `jax.pure_callback` inside its scan) and `chunk`'s
    end-of-chunk evaluation uses `validation` when given (its metrics are then added to the chunk's).
    """
    spec = model_spec(config, router)
    tx = optimizer(config)
    tc, num_corpus_rows = config.train, config.data.val_corpus_rows

    def init(key: jax.Array) -> TrainState:
        params = tf.init(key, spec)
        return TrainState(params, tx.init(params), jnp.zeros((), jnp.int32))

    def step(state: TrainState, batch: Batch, p: jax.Array) -> tuple[TrainState, dict]:
        grad_fn = jax.value_and_grad(tf.loss, has_aux=True)
        (total, (out, nll)), grads = grad_fn(state.params, batch.inputs, batch.targets, batch.weights, spec, p)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        lm = jnp.sum(nll * batch.weights) / jnp.maximum(jnp.sum(batch.weights), 1.0)
        s = out.stats
        metrics = {"loss": lm, "total_loss": total, "load_balance": out.aux["load_balance"].mean(),
                   "dynamic_loss": out.aux["dynamic"].mean(), "experts": s["experts_per_token_mean"].mean(),
                   "experts_per_layer": s["experts_per_token_mean"], "truncated_fraction": s["truncated_fraction"].mean(),
                   "dropped_fraction": s["dropped_fraction"].mean(), "max_expert_load": s["expert_load"].max(-1).mean(),
                   "grad_norm": optax.tree.norm(grads)}
        return TrainState(params, opt_state, state.step + 1), metrics

    def chunk(state: TrainState, batches: Batch, p: jax.Array) -> tuple[TrainState, dict]:
        state, metrics = jax.lax.scan(lambda s, b: step(s, b, p), state, batches)
        metrics = jax.tree.map(lambda m: m.mean(0), metrics)  # chunk means, the unit that is logged
        if validation is not None:
            metrics = {**metrics, **evaluate(spec, state.params, validation, p, num_corpus_rows)}
        return state, metrics

    def train(key: jax.Array, p: jax.Array) -> tuple[TrainState, dict]:
        if host_batches is None:
            raise ValueError("make_train(..., host_batches=...) is needed for train()")
        shape = jax.eval_shape(lambda: host_batches(0))

        def one_chunk(state: TrainState, _) -> tuple[TrainState, dict]:
            batches = jax.pure_callback(lambda s: host_batches(int(s)), shape, state.step)
            return chunk(state, batches, p)

        return jax.lax.scan(one_chunk, init(key), None, length=tc.num_steps // tc.log_every)

    return Trainer(spec, init, chunk, lambda params, val, p: evaluate(spec, params, val, p, num_corpus_rows), train)
