"""Grouped matmul implementations against `lax.ragged_dot` and the per-group loop (CPU: megablox in
interpret mode, tokamax with its XLA fallback when installed)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from psec_jax import moe
from psec_jax.kernels import gmm
from psec_jax.testing import assert_trees_close

IMPLS = ["ragged_dot", "megablox"] + (["tokamax"] if gmm.tokamax_available() else [])


def loop_reference(lhs, rhs, sizes):
    """Group g's rows times rhs[g], one group at a time; rows past the sum are zeros."""
    out, start = np.zeros((lhs.shape[0], rhs.shape[-1]), np.float64), 0
    for g, n in enumerate(np.asarray(sizes)):
        out[start : start + n] = np.asarray(lhs[start : start + n], np.float64) @ np.asarray(rhs[g], np.float64)
        start += n
    return out


@pytest.mark.parametrize("impl", IMPLS)
def test_values_and_gradients_equal_the_loop(impl):
    kx, kw, kg = jax.random.split(jax.random.PRNGKey(0), 3)
    lhs, rhs = jax.random.normal(kx, (50, 24)), jax.random.normal(kw, (4, 24, 20))
    sizes = jnp.array([13, 0, 21, 9], jnp.int32)  # an empty group; 7 rows past the sum
    y = jax.jit(lambda a, b: gmm.grouped_matmul(a, b, sizes, impl=impl))(lhs, rhs)
    np.testing.assert_allclose(y, loop_reference(lhs, rhs, sizes), rtol=1e-5, atol=1e-4)
    assert np.all(np.asarray(y)[43:] == 0)
    cot = jax.random.normal(kg, (50, 20))
    got = jax.jit(jax.grad(lambda a, b: jnp.sum(gmm.grouped_matmul(a, b, sizes, impl=impl) * cot), (0, 1)))(lhs, rhs)

    def loop(a, b):  # the per-group loop in jnp, differentiated by autodiff
        starts = np.concatenate([[0], np.cumsum(sizes)])
        y = jnp.concatenate([a[starts[g] : starts[g + 1]] @ b[g] for g in range(4)] + [jnp.zeros((7, 20))])
        return jnp.sum(y * cot)

    assert_trees_close(got, jax.grad(loop, (0, 1))(lhs, rhs), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("impl", [i for i in IMPLS if i != "ragged_dot"])  # ragged_dot: test_moe_dispatch
def test_ragged_backend_with_each_impl_equals_the_loop_reference(impl):
    params = moe.init_moe(jax.random.PRNGKey(0), 16, 24, 4)
    x = jax.random.normal(jax.random.PRNGKey(1), (30, 16))
    r = moe.top_p(x @ params["router"] * 3, 0.5)
    config = moe.MoEConfig(backend="ragged", grouped_matmul=impl)
    y = jax.jit(lambda x: moe.dispatch(x, r, moe.swiglu_expert, params["experts"], config)[0])(x)
    np.testing.assert_allclose(y, moe.loop_reference(x, r, moe.swiglu_expert, params["experts"]), rtol=1e-5, atol=1e-5)


def test_auto_and_bad_names():
    assert gmm.resolve_impl("auto") == "ragged_dot"  # CPU
    with pytest.raises(ValueError, match="unknown grouped matmul 'cutlass'"):
        gmm.resolve_impl("cutlass")
    with pytest.raises(ValueError, match=r"lhs \[m, k\], rhs \[G, k, n\]"):
        gmm.grouped_matmul(jnp.zeros((4, 3)), jnp.zeros((2, 5, 6)), jnp.zeros((2,), jnp.int32))


def test_megablox_lowers_for_tpu_at_the_target_shape():
    """jax.export to the TPU platform runs megablox's Mosaic lowering here (forward and backward)."""

    def loss(a, b, g):
        return jnp.sum(gmm.grouped_matmul(a, b, g, impl="megablox", interpret=False).astype(jnp.float32))

    shapes = (
        jax.ShapeDtypeStruct((4096, 1024), jnp.bfloat16),
        jax.ShapeDtypeStruct((16, 1024, 2816), jnp.bfloat16),
        jax.ShapeDtypeStruct((16,), jnp.int32),
    )
    exported = jax.export.export(jax.jit(jax.grad(loss, (0, 1))), platforms=["tpu"])(*shapes)
    assert exported.mlir_module().count("tpu_custom_call") >= 2  # gmm for the input, tgmm for the weights
