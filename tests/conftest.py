"""Shared pytest setup: XLA:CPU's backend optimisation off, persistent compilation cache, and skipping
`accelerator` tests on CPU."""

import os

import pytest

# The suite is compile-bound on CPU: LLVM at -O0 compiles its tiny programs ~30% faster. Every comparison
# in it is between computations made under the same flags (subprocesses inherit them); datasets are
# generated in a child with the pin flag alone (psec_jax.data.pinned), so their bytes are what users get.
if "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_backend_optimization_level=0".strip()

from psec_jax import compilation_cache  # noqa: E402 (after XLA_FLAGS)

# Repeated `make test` runs reuse compiled executables (PSEC_JAX_COMPILATION_CACHE=0 turns it off).
compilation_cache.enable()


def pytest_collection_modifyitems(config, items):
    import jax

    if jax.default_backend() != "cpu":
        return
    skip = pytest.mark.skip(reason="needs a GPU or TPU; jax runs on CPU only here")
    for item in items:
        if "accelerator" in item.keywords:
            item.add_marker(skip)
