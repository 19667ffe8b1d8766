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


# jax >= 0.11 warns at every Pallas Triton lowering that the path is deprecated; it is the one this kernel has.
triton_deprecated = pytest.mark.filterwarnings("ignore:The Pallas Triton backend is deprecated:DeprecationWarning")


@pytest.mark.accelerator
@triton_deprecated
def test_fused_routing_kernel_compiled_equals_the_reference():
    """The compiled kernel (Mosaic on TPU, Triton on GPU; not interpret mode): selection exact given its
    probabilities, the probabilities a softmax's."""
    from psec_jax.kernels import fused_route, fused_route_reference

    logits = jax.random.normal(jax.random.PRNGKey(0), (4096 + 17, 64)) * 2
    for rule, kw in (("top_p", dict(p=0.4)), ("top_k", dict(k=2)), ("top_p", dict(p=0.9, max_k=8))):
        compiled = jax.jit(lambda l: fused_route(l, rule, **kw))
        text = compiled.lower(logits).as_text()
        assert "tpu_custom_call" in text or "__gpu$xla.gpu.triton" in text  # the kernel, not interpret mode
        got = compiled(logits)
        want = fused_route_reference(logits, rule, probs=got.probs, **kw)
        for f in ("mask", "weights", "positions", "counts", "truncated"):
            np.testing.assert_array_equal(np.asarray(getattr(got, f)), np.asarray(getattr(want, f)), err_msg=f)
        np.testing.assert_array_equal(np.where(got.mask, got.expert_ids, -1), np.where(want.mask, want.expert_ids, -1))
        assert_trees_close(got.probs, jax.nn.softmax(logits, -1), rtol=1e-5, atol=1e-6)


@pytest.mark.accelerator
@triton_deprecated
def test_moe_layer_with_the_compiled_kernel_equals_argsort_dispatch():
    """The kernel inside the layer, forward and gradients, against the jnp router and an argsort."""
    import dataclasses

    from psec_jax import moe

    params = moe.init_moe(jax.random.PRNGKey(0), 64, 128, 16)
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 256, 64))
    config = moe.MoEConfig(router="top_p", p=0.5, backend="dropless")
    fused = dataclasses.replace(config, dispatch="fused")
    loss = lambda c: jax.jit(jax.value_and_grad(lambda p, x: jnp.mean(moe.moe_apply(p, x, c)[0] ** 2), (0, 1)))
    # the kernel's softmax is not XLA's (Triton: approximate exp and division, a few ulps): bf16 entry
    assert_trees_close(
        jax.tree.map(lambda a: a.astype(jnp.bfloat16), loss(fused)(params, x)),
        jax.tree.map(lambda a: a.astype(jnp.float32), loss(config)(params, x)),
    )
