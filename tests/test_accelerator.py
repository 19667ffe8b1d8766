"""Checks that only make sense on a GPU/TPU; skipped (marker `accelerator`) when JAX sees only a CPU."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from psec_jax.testing import assert_trees_close


@pytest.mark.accelerator
def test_default_device_is_an_accelerator_and_matmul_matches_numpy():
    assert jax.default_backend() in ("gpu", "tpu")
    x = np.random.default_rng(0).standard_normal((256, 128)).astype(np.float32)
    y = jax.jit(lambda a: a @ a.T)(jnp.asarray(x))
    assert y.devices() == {jax.devices()[0]}
    # TF32/bf16 passes on accelerators: compare at the bf16 entry of the shared table.
    assert_trees_close(y.astype(jnp.bfloat16), (x @ x.T).astype(jnp.float32))
