"""Shared pytest setup: persistent compilation cache, and skipping `accelerator` tests on CPU."""

import pytest

from psec_jax import compilation_cache

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
