"""Grouped matmul implementations against `lax.ragged_dot` and the per-group loop (CPU: megablox in
interpret mode, tokamax with its XLA fallback when installed, blas when MKL and a compiler are), and
the ragged back-end over each against the loop-over-experts reference."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from psec_jax import moe
from psec_jax.kernels import blas_gmm, gmm
from psec_jax.testing import assert_no_recompile, assert_trees_close

_NO_BLAS = blas_gmm.unavailable_reason()
BLAS = pytest.param("blas", marks=pytest.mark.skipif(_NO_BLAS is not None, reason=str(_NO_BLAS)))
IMPLS = ["ragged_dot", "megablox"] + (["tokamax"] if gmm.tokamax_available() else []) + [BLAS]


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


@pytest.mark.parametrize("impl", IMPLS)
def test_ragged_backend_with_each_impl_equals_the_loop_reference(impl):
    params = moe.init_moe(jax.random.PRNGKey(0), 16, 24, 4)
    x = jax.random.normal(jax.random.PRNGKey(1), (30, 16))
    r = moe.top_p(x @ params["router"] * 3, 0.5)
    config = moe.MoEConfig(backend="ragged", grouped_matmul=impl)
    y = jax.jit(lambda x: moe.dispatch(x, r, moe.swiglu_expert, params["experts"], config)[0])(x)
    np.testing.assert_allclose(y, moe.loop_reference(x, r, moe.swiglu_expert, params["experts"]), rtol=1e-5, atol=1e-5)


def swiglu_loss(x, experts, router, route, config=None):
    """Scalar loss through the ragged back-end (config) or the loop reference (None); the route's
    ids and mask fixed, its weights recomputed so the router gets gradients."""
    probs = jax.nn.softmax(3.0 * (x @ router), -1)
    r = route.replace(weights=jnp.take_along_axis(probs, route.expert_ids, 1) * route.mask, probs=probs)
    if config is None:
        y = moe.loop_reference(x, r, moe.swiglu_expert, experts)
    else:
        y = moe.dispatch(x, r, moe.swiglu_expert, experts, config)[0]
    return jnp.sum(y * jnp.cos(jnp.arange(x.shape[1])))


@pytest.mark.parametrize("impl", ["ragged_dot", BLAS])
@pytest.mark.parametrize("saved_slots", [None, 1.0])
def test_ragged_passes_equal_the_loop_reference(impl, saved_slots):
    """Top-p over 8 experts with ~3.5 experts per token: saved_slots=1.0 runs 30 tokens' assignments in
    passes of 32 sorted rows (4 passes, the last 3 recomputed backwards); None in one pass of 240."""
    params = moe.init_moe(jax.random.PRNGKey(0), 16, 24, 8)
    x = jax.random.normal(jax.random.PRNGKey(1), (30, 16))
    r = moe.top_p(x @ params["router"] * 0.3, 0.5)
    assert 3 * 32 < int(r.mask.sum()) <= 4 * 32  # four passes at saved_slots=1.0
    config = moe.MoEConfig(backend="ragged", grouped_matmul=impl, saved_slots=saved_slots)
    args = (x, params["experts"], params["router"])
    value_and_grad = lambda config: jax.value_and_grad(swiglu_loss, (0, 1, 2))(*args, r, config)
    got = jax.jit(value_and_grad, static_argnums=0)(config)
    assert_trees_close(got, value_and_grad(None), rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(_NO_BLAS is not None, reason=str(_NO_BLAS))
def test_moe_layer_with_blas_equals_dropless_and_does_not_recompile():
    params = moe.init_moe(jax.random.PRNGKey(2), 16, 24, 8)
    x = jax.random.normal(jax.random.PRNGKey(3), (40, 16))
    configs = [moe.MoEConfig(router="top_p", backend="ragged", grouped_matmul="blas"), moe.MoEConfig(router="top_p")]

    def loss(p, x, config):
        y, aux, _ = moe.moe_apply(p, x, config)
        return jnp.mean(y**2) + aux["total"]

    fns = [jax.jit(jax.value_and_grad(lambda p, x, c=c: loss(p, x, c))) for c in configs]
    assert_trees_close(fns[0](params, x), fns[1](params, x), rtol=1e-4, atol=1e-6)
    x2 = jax.random.normal(jax.random.PRNGKey(4), x.shape) * 3.0  # other group sizes, other pass counts
    assert_no_recompile(fns[0], params, x, next_args=lambda out: (params, x2 + out[0] * 0))


def test_auto_and_bad_names():
    assert gmm.resolve_impl("auto") == ("blas" if _NO_BLAS is None else "ragged_dot")  # CPU
    assert gmm.resolve_impl("auto", jnp.bfloat16) == "ragged_dot"
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
