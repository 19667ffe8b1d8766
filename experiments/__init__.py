"""What a person runs from the checkout: sweeps over the library's experiments, their summaries and the
committed results (``experiments/results``). Not installed with the package; the experiments themselves
are ``psec_jax.registry``'s, run as ``psec-jax <name> --config=<name>[:<preset>] --workdir=DIR``.
"""
