"""The MKL grouped matmuls (`psec_jax.kernels.blas_gmm`) against `lax.ragged_dot` and per-group loops:
values, gradients of both operands (and of second order), jit, vmap, and the messages when MKL or a
compiler is missing. Skipped, with the reason, where MKL or a C++ compiler is not installed."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from psec_jax.kernels import blas_gmm, gmm
from psec_jax.testing import assert_trees_close

M, K, N = 50, 24, 20


@pytest.fixture(scope="module", autouse=True)
def handlers():
    """Builds the handler library once for the module (a few seconds the first time, then cached)."""
    reason = blas_gmm.unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    return blas_gmm.load()


def operands(seed: int = 0, m: int = M, k: int = K, n: int = N, groups: int = 4):
    ka, kb, kc = jax.random.split(jax.random.PRNGKey(seed), 3)
    lhs = jax.random.normal(ka, (m, k))
    return lhs, jax.random.normal(kb, (groups, k, n)), jax.random.normal(kc, (m, n))


def loop(lhs, rhs, sizes):
    """Group g's rows times rhs[g] in jnp, zeros past the groups (differentiable to any order)."""
    starts = np.concatenate([[0], np.cumsum(sizes)])
    parts = [lhs[starts[g] : starts[g + 1]] @ rhs[g] for g in range(len(sizes))]
    return jnp.concatenate(parts + [jnp.zeros((lhs.shape[0] - starts[-1], rhs.shape[-1]))])


SIZES = {
    "an empty group, 7 rows past the groups": [13, 0, 21, 9],
    "one group holds every row": [0, M, 0, 0],
    "no rows in any group": [0, 0, 0, 0],
}


@pytest.mark.parametrize("sizes", list(SIZES.values()), ids=list(SIZES))
def test_values_and_gradients_equal_ragged_dot(sizes):
    lhs, rhs, cot = operands()
    sizes = jnp.array(sizes, jnp.int32)
    total = int(sizes.sum())
    lhs = lhs.at[total:].set(jnp.nan)  # rows past the groups are never read

    def loss(mm):
        return jax.jit(jax.value_and_grad(lambda a, b: jnp.sum(mm(a, b, sizes) * cot), (0, 1)))

    y = jax.jit(blas_gmm.gmm)(lhs, rhs, sizes)
    clean = jnp.where(jnp.arange(M)[:, None] < total, lhs, 0.0)
    assert_trees_close(y, jax.lax.ragged_dot(clean, rhs, sizes))
    assert np.all(np.asarray(y)[total:] == 0)
    (_, got), (_, want) = loss(blas_gmm.gmm)(lhs, rhs), loss(jax.lax.ragged_dot)(clean, rhs)
    assert_trees_close(got, want)  # d_lhs: zeros past the groups; d_rhs: zeros for empty groups
    # rhs stored transposed, [G, n, k]
    y_t = blas_gmm.gmm(lhs, jnp.swapaxes(rhs, 1, 2), sizes, True)
    assert_trees_close(y_t, y)


def test_column_tiles_and_uneven_widths_are_exact():
    """n = 200 splits a large group's columns into tiles of 80, 80, 40 over the thread pool."""
    lhs, rhs, cot = operands(1, m=300, k=40, n=200, groups=3)
    sizes = jnp.array([250, 3, 40], jnp.int32)
    assert_trees_close(jax.jit(blas_gmm.gmm)(lhs, rhs, sizes), loop(lhs, rhs, np.asarray(sizes)))
    w = jax.jit(blas_gmm.tgmm)(lhs, cot, sizes)  # [G, k, n]
    starts = [0, 250, 253, 293]
    want = jnp.stack([lhs[starts[g] : starts[g + 1]].T @ cot[starts[g] : starts[g + 1]] for g in range(3)])
    assert_trees_close(w, want)


def test_second_order_gradients_equal_the_loop():
    """gmm and tgmm are each other's derivatives, so gradients of gradients need no more code."""
    lhs, rhs, _ = operands(2)
    sizes = [13, 0, 21, 9]

    def grad_of_grad(mm):
        inner = lambda a, b: jnp.sum(jax.grad(lambda a, b: jnp.sum(mm(a, b, sizes) ** 2), 1)(a, b) ** 2)
        return jax.jit(jax.grad(inner, (0, 1)))(lhs, rhs)

    blas = lambda a, b, s: blas_gmm.gmm(a, b, jnp.array(s, jnp.int32))
    assert_trees_close(grad_of_grad(blas), grad_of_grad(loop), rtol=1e-4)


def test_vmap_runs_each_member():
    lhs, rhs, _ = operands(3)
    lhs2, rhs2 = jnp.stack([lhs, 2 * lhs]), jnp.stack([rhs, rhs[::-1]])
    sizes2 = jnp.array([[13, 0, 21, 9], [9, 21, 0, 13]], jnp.int32)
    got = jax.jit(jax.vmap(blas_gmm.gmm))(lhs2, rhs2, sizes2)
    assert_trees_close(got, jnp.stack([jax.lax.ragged_dot(a, b, s) for a, b, s in zip(lhs2, rhs2, sizes2)]))
    grads = jax.vmap(jax.grad(lambda a, b, s: jnp.sum(blas_gmm.gmm(a, b, s) ** 2), (0, 1)))(lhs2, rhs2, sizes2)
    want = [
        jax.grad(lambda a, b: jnp.sum(jax.lax.ragged_dot(a, b, s) ** 2), (0, 1))(*ab)
        for *ab, s in zip(lhs2, rhs2, sizes2)
    ]
    assert_trees_close(grads, jax.tree.map(lambda *g: jnp.stack(g), *want))


def test_through_grouped_matmul_and_its_checks():
    lhs, rhs, _ = operands(4)
    sizes = jnp.array([13, 0, 21, 9], jnp.int32)
    assert gmm.resolve_impl("blas") == "blas"
    assert gmm.resolve_impl("auto") == "blas"  # on CPU, for float32, when installed
    assert_trees_close(gmm.grouped_matmul(lhs, rhs, sizes, impl="blas"), jax.lax.ragged_dot(lhs, rhs, sizes))
    with pytest.raises(TypeError, match="'blas' is float32 only"):
        gmm.grouped_matmul(lhs.astype(jnp.bfloat16), rhs.astype(jnp.bfloat16), sizes, impl="blas")
    with pytest.raises(ValueError, match=r"gmm: bad shapes lhs \(50, 24\), rhs \(4, 20, 24\)"):
        blas_gmm.gmm(lhs, jnp.swapaxes(rhs, 1, 2), sizes)  # [G, n, k] without transpose_rhs
    assert blas_gmm.gmm(lhs[:0], rhs, sizes * 0).shape == (0, N)  # no rows at all


def test_missing_mkl_or_compiler_says_what_to_install(monkeypatch):
    monkeypatch.setattr(blas_gmm, "find_mkl", lambda: None)
    with pytest.raises(ImportError, match=r"pip install 'psec-jax\[blas\]'"):
        blas_gmm.load.__wrapped__()  # load itself is cached after the fixture's success
    monkeypatch.undo()
    monkeypatch.setattr(blas_gmm, "_compiler", lambda: None)
    with pytest.raises(RuntimeError, match="install g\\+\\+"):
        blas_gmm.load.__wrapped__()
