"""The tiny smoke-experiment run shared by the training-loop tests."""

import jax

from experiments import smoke
from experiments.configs import smoke as smoke_config
from psec_jax import loop, prng


def tiny_config(**train):
    """The smoke config at test size (40 steps in chunks of 10, checkpoints every 20); ``train``
    overrides ``config.train`` fields."""
    config = smoke_config.get_config()
    config.data.num_examples = 64
    config.model.hidden_sizes = (16,)
    config.train.update({**dict(num_steps=40, batch_size=16, log_every=10, checkpoint_every=20), **train})
    return config


def run(config, workdir, wrap=lambda chunk: chunk):
    """``loop.run_chunks`` over the smoke trainer, as ``smoke.main`` drives it; ``wrap`` decorates the
    jitted chunk function (to interrupt it). Returns ``(final state, metric records)``."""
    trainer = smoke.make_train(config)
    root = jax.random.key(config.seed)
    data = trainer.make_data(prng.stream(root, "data"))
    chunk = jax.jit(trainer.chunk)
    return loop.run_chunks(
        wrap(lambda s: chunk(s, data)), trainer.init(prng.stream(root, "init")),
        num_chunks=config.train.num_steps // config.train.log_every,
        steps_per_chunk=config.train.log_every, workdir=workdir, config=config,
        checkpoint_every_chunks=config.train.checkpoint_every // config.train.log_every,
        resume_may_change=("train.num_steps",),
    )
