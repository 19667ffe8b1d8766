"""psec_jax experiments: one thin entry point per experiment, configs in ``experiments/configs/``.

Run them through the CLI: ``psec-jax <name> --config=experiments/configs/<name>.py --workdir=DIR``.
"""
