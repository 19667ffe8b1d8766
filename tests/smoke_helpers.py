"""The tiny smoke-experiment run shared by the training-loop tests."""

from psec_jax import smoke
from psec_jax.configs import smoke as smoke_config


def tiny_config(**train):
    """The smoke config at test size (40 steps in chunks of 10, checkpoints every 20); ``train``
    overrides ``config.train`` fields."""
    config = smoke_config.get_config()
    config.data.num_examples = 64
    config.model.hidden_sizes = (16,)
    config.train.update({**dict(num_steps=40, batch_size=16, log_every=10, checkpoint_every=20), **train})
    return config


def run(config, workdir, wrap=lambda chunk: chunk):
    """``smoke.train_in`` (what ``smoke.run`` trains with); ``wrap`` decorates the chunk function (to
    interrupt it). Returns ``(final state [num_seeds, ...], metric records)``."""
    _, _, state, records = smoke.train_in(config, workdir, wrap)
    return state, records
