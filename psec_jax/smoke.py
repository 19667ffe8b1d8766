"""`psec-jax smoke`: a tiny MLP regression run that exercises configs, training, logging and resume.

It is the template every training experiment follows: ``make_train(config)`` returns pure functions;
``train(key)`` runs the whole loop in one ``lax.scan`` (so ``jit(vmap(train))(keys)`` trains many seeds
at once), and ``run`` drives the same ``chunk`` function through ``psec_jax.loop.run_chunks`` for
metrics, progress and checkpoints, ``num_seeds`` members at once split over the devices
(``psec_jax.parallel.sweep``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import struct

from psec_jax import config_check, loop, parallel, prng, runs
from psec_jax.parallel import distributed

RESUME_MAY_CHANGE = ("train.num_steps",)  # a rerun may extend the run; any other change needs a new workdir


class Data(NamedTuple):
    x: jax.Array  # [num_examples, input_dim]
    y: jax.Array  # [num_examples]


@struct.dataclass
class TrainState:
    params: Any  # MLP parameters
    opt_state: optax.OptState
    step: jax.Array  # [] int32, gradient steps taken
    key: jax.Array  # [] PRNG key of the batch stream; step keys are fold_in(key, step)


class Trainer(NamedTuple):
    make_data: Callable[[jax.Array], Data]  # key -> on-device dataset
    init: Callable[[jax.Array], TrainState]  # key -> initial state
    chunk: Callable[[TrainState, Data], tuple[TrainState, dict]]  # log_every steps in one lax.scan
    train: Callable[[jax.Array], tuple[TrainState, dict]]  # root key -> (final state, [chunks, steps] metrics)
    loss: Callable[[Any, Data], jax.Array]  # (params, data) -> [] mean squared error over data


class MLP(nn.Module):
    hidden_sizes: tuple[int, ...]

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:  # [input_dim] -> []
        for width in self.hidden_sizes:
            x = nn.tanh(nn.Dense(width)(x))
        return nn.Dense(1)(x)[0]


def check_config(config: ml_collections.ConfigDict) -> None:
    """ConfigError (one line) for values that cannot train; run before anything is compiled."""
    config_check.positive_int(
        config,
        "num_seeds",
        "data.num_examples",
        "data.input_dim",
        "model.hidden_sizes",
        "train.batch_size",
        "train.max_to_keep",
    )
    config_check.multiple_of(config, "train.num_steps", "train.log_every")
    config_check.multiple_of(config, "train.checkpoint_every", "train.log_every")
    config_check.positive(config, "optim.learning_rate")
    config_check.non_negative(config, "optim.weight_decay", "data.noise_std")
    if config.seed + config.num_seeds - 1 > config_check.INT32_MAX:  # member i's key is key(seed + i), in int32
        raise config_check.ConfigError(
            f"config field seed ({config.seed}) + num_seeds ({config.num_seeds}) - 1 "
            f"must fit in int32 (at most {config_check.INT32_MAX})"
        )


def make_train(config: ml_collections.ConfigDict) -> Trainer:
    """Builds the pure functions of the smoke run from ``config`` (see psec_jax/configs/smoke.py);
    ConfigError if the config cannot train."""
    check_config(config)
    tc = config.train
    model = MLP(tuple(config.model.hidden_sizes))
    tx = optax.adamw(config.optim.learning_rate, weight_decay=config.optim.weight_decay)
    dim, n = config.data.input_dim, config.data.num_examples

    def make_data(key: jax.Array) -> Data:
        kx, kw, kn = jax.random.split(key, 3)
        x = jax.random.normal(kx, (n, dim))
        w = jax.random.normal(kw, (dim,)) / jnp.sqrt(dim)
        y = jnp.sin(2.0 * x @ w) + config.data.noise_std * jax.random.normal(kn, (n,))
        return Data(x, y)

    def init(key: jax.Array) -> TrainState:
        params = model.init(prng.stream(key, "params"), jnp.zeros((dim,)))
        return TrainState(params, tx.init(params), jnp.zeros((), jnp.int32), prng.stream(key, "batches"))

    def loss_fn(params: Any, batch: Data) -> jax.Array:
        pred = jax.vmap(model.apply, in_axes=(None, 0))(params, batch.x)
        return jnp.mean((pred - batch.y) ** 2)

    def step(state: TrainState, data: Data) -> tuple[TrainState, dict]:
        idx = jax.random.randint(jax.random.fold_in(state.key, state.step), (tc.batch_size,), 0, n)
        loss, grads = jax.value_and_grad(loss_fn)(state.params, Data(data.x[idx], data.y[idx]))
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new = state.replace(params=params, opt_state=opt_state, step=state.step + 1)
        return new, {"loss": loss, "grad_norm": optax.tree.norm(grads)}

    def chunk(state: TrainState, data: Data) -> tuple[TrainState, dict]:
        return jax.lax.scan(lambda s, _: step(s, data), state, None, length=tc.log_every)

    def train(key: jax.Array) -> tuple[TrainState, dict]:
        data = make_data(prng.stream(key, "data"))
        state = init(prng.stream(key, "init"))
        return jax.lax.scan(lambda s, _: chunk(s, data), state, None, length=tc.num_steps // tc.log_every)

    return Trainer(make_data, init, chunk, train, loss_fn)


def seed_keys(config: ml_collections.ConfigDict) -> jax.Array:
    """[num_seeds] root keys of the members: key(seed + i) for member i (member 0 is a 1-seed run)."""
    return jax.vmap(jax.random.key)(config.seed + jnp.arange(config.num_seeds))


def train_in(
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    wrap: Callable[[Callable], Callable] = lambda chunk: chunk,
) -> tuple[Trainer, Data, TrainState, list[dict]]:
    """Trains the ``num_seeds`` members with ``loop.run_chunks`` (metrics, progress, checkpoints in
    ``workdir``, resumed if present). The members are one program split over the devices
    (`parallel.sweep`: as many as divide num_seeds). ``wrap`` decorates the chunk function (tests
    interrupt it). Returns (trainer, data [N, ...], final state [N, ...], metric records)."""
    trainer = make_train(config)
    keys = seed_keys(config)
    data = parallel.sweep(lambda k: trainer.make_data(prng.stream(k, "data")))(keys)
    state = parallel.sweep(lambda k: trainer.init(prng.stream(k, "init")))(keys)
    chunk = parallel.sweep(trainer.chunk)
    state, records = loop.run_chunks(
        wrap(lambda s: chunk(s, data)),
        state,
        num_chunks=config.train.num_steps // config.train.log_every,
        steps_per_chunk=config.train.log_every,
        workdir=workdir,
        config=config,
        checkpoint_every_chunks=config.train.checkpoint_every // config.train.log_every,
        max_to_keep=config.train.max_to_keep,
        resume_may_change=RESUME_MAY_CHANGE,
        desc="smoke",
    )
    return trainer, data, state, records


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains with logging and checkpoints in ``workdir`` (resuming if it has any); prints a summary
    (process 0 of a multi-process run) and returns it: means over the seeds, and per seed."""
    trainer, data, state, records = train_in(config, workdir)
    mse = distributed.to_host(parallel.sweep(trainer.loss)(state.params, data))  # [num_seeds]
    variance = distributed.to_host(parallel.sweep(lambda d: jnp.var(d.y))(data))
    summary = {
        "steps": int(distributed.to_host(state.step)[0]),
        "num_seeds": int(config.num_seeds),
        "final_train_mse": float(mse.mean()),
        "target_variance": float(variance.mean()),
        "final_train_mse_per_seed": [float(m) for m in mse],
        "steps_per_sec": records[-1]["steps_per_sec"] if records else None,  # the last chunk's rate
    }
    if distributed.is_main():
        print(runs.write_summary(workdir, summary))
    return summary
