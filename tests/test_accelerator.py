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


@pytest.mark.accelerator
def test_fused_routing_kernel_compiled_on_tpu_equals_the_reference():
    """The Mosaic-compiled kernel (not interpret mode): selection exact given its probabilities."""
    if jax.default_backend() != "tpu":
        pytest.skip("the fused routing kernel lowers for TPU only (GPU: not yet)")
    from psec_jax.kernels import fused_route, fused_route_reference

    logits = jax.random.normal(jax.random.PRNGKey(0), (4096 + 17, 64)) * 2
    for rule, kw in (("top_p", dict(p=0.4)), ("top_k", dict(k=2)), ("top_p", dict(p=0.9, max_k=8))):
        got = jax.jit(lambda l: fused_route(l, rule, **kw))(logits)
        want = fused_route_reference(logits, rule, probs=got.probs, **kw)
        for f in ("mask", "weights", "positions", "counts", "truncated"):
            np.testing.assert_array_equal(np.asarray(getattr(got, f)), np.asarray(getattr(want, f)), err_msg=f)
        np.testing.assert_array_equal(np.where(got.mask, got.expert_ids, -1), np.where(want.mask, want.expert_ids, -1))
        assert_trees_close(got.probs, jax.nn.softmax(logits, -1), rtol=1e-5, atol=1e-6)
