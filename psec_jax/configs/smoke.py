"""Config for `psec-jax smoke`: a tiny MLP regression run that exercises the whole run machinery.

psec-jax smoke --config=smoke --workdir=/tmp/smoke --config.train.num_steps=400
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0  # root PRNG seed; data, init and per-step keys are named streams of it
    config.num_seeds = 1  # members seed, seed+1, ... trained as one program, split over the devices

    config.data = ml_collections.ConfigDict()
    config.data.num_examples = 1024  # size of the synthetic regression set (kept on device)
    config.data.input_dim = 8  # features per example
    config.data.noise_std = 0.05  # std of Gaussian noise added to the targets

    config.model = ml_collections.ConfigDict()
    config.model.hidden_sizes = (64, 64)  # widths of the MLP's hidden layers (tanh)

    config.optim = ml_collections.ConfigDict()
    config.optim.learning_rate = 3e-3  # AdamW learning rate (constant, so extending num_steps on resume is exact)
    config.optim.weight_decay = 1e-4  # AdamW decoupled weight decay

    config.train = ml_collections.ConfigDict()
    config.train.num_steps = 2000  # total gradient steps (a multiple of log_every)
    config.train.batch_size = 128  # examples per gradient step, sampled with replacement
    config.train.log_every = 100  # steps per jitted lax.scan chunk; metrics are logged once per chunk
    config.train.checkpoint_every = 500  # steps between checkpoints (a multiple of log_every)
    config.train.max_to_keep = 2  # checkpoints kept on disk
    return config
