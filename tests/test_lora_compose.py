"""Tests of static composition (exact, cat, svd, ties, dare) against dense numpy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from lora_helpers import TwoLayer, np_dense_delta, random_library

from psec_jax import lora
from psec_jax.testing import assert_trees_close

X = jax.random.normal(jax.random.key(42), (6, 8))
WEIGHTS = jnp.array([1.5, -0.7, 0.25])  # negative and unequal on purpose


@pytest.fixture(scope="module")
def setup():
    base = TwoLayer().init(jax.random.key(0), X)
    lib = random_library(base, [2, 4, 3])
    return base, lib, lib.coefficients(WEIGHTS)


def _np_tasks(pair, c):
    a, b = np.asarray(pair.a, np.float64), np.asarray(pair.b, np.float64)
    return np.stack([c[k] * a[k] @ b[k] for k in range(len(c))])


def _np_ties(tasks, density):
    kept = np.zeros_like(tasks)
    for k, t in enumerate(tasks):
        n = int(round(density * t.size))
        idx = np.argsort(-np.abs(t).ravel(), kind="stable")[:n]
        kept[k].ravel()[idx] = t.ravel()[idx]
    sign = np.where(kept.sum(0) >= 0, 1.0, -1.0)
    agree = (np.sign(kept) == sign) & (kept != 0)
    return np.where(agree, kept, 0).sum(0) / np.maximum(agree.sum(0), 1)


def test_exact_and_cat_equal_the_weighted_sum(setup):
    base, lib, c = setup
    exact = lora.combine(lib.adapters, c, "exact")
    cat = lora.combine(lib.adapters, c, "cat")
    for path, pair in lora.flatten(lib.adapters).items():
        ref = np_dense_delta(pair, np.asarray(c))
        assert_trees_close(lora.flatten(exact)[path], ref.astype(np.float32), rtol=1e-5, atol=1e-5)
        cp = lora.flatten(cat)[path]
        assert cp.a.shape[-1] == 3 * lib.max_rank  # rank = sum of (padded) ranks
        assert_trees_close(cp.a @ cp.b, ref.astype(np.float32), rtol=1e-5, atol=1e-5)
    # Merged models agree with the factored forward pass of the library.
    y = TwoLayer().apply({"params": base["params"], "lora": lib.adapters["params"]}, X, c)
    assert_trees_close(TwoLayer().apply(lora.merge(base, exact), X), y, rtol=1e-4, atol=1e-4)
    assert_trees_close(TwoLayer().apply(lora.merge(base, cat), X), y, rtol=1e-4, atol=1e-4)


def test_svd_is_the_best_low_rank_approximation(setup):
    _, lib, c = setup
    out = lora.combine(lib.adapters, c, "svd", rank=3)
    for path, pair in lora.flatten(lib.adapters).items():
        ref = np_dense_delta(pair, np.asarray(c))
        u, s, vt = np.linalg.svd(ref, full_matrices=False)
        best = (u[:, :3] * s[:3]) @ vt[:3]
        got = lora.flatten(out)[path]
        assert got.a.shape[-1] == 3 and got.b.shape[0] == 3
        assert_trees_close(got.a @ got.b, best.astype(np.float32), rtol=1e-4, atol=1e-4)
    full = lora.combine(lib.adapters, c, "svd", rank=64)  # capped at each kernel's smaller dim: exact
    for path, pair in lora.flatten(lib.adapters).items():
        got = lora.flatten(full)[path]
        assert_trees_close(got.a @ got.b, np_dense_delta(pair, np.asarray(c)).astype(np.float32), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("density", [0.2, 0.5, 1.0])
def test_ties_matches_the_numpy_reference(setup, density):
    _, lib, c = setup
    out = lora.combine(lib.adapters, c, "ties", density=density)
    for path, pair in lora.flatten(lib.adapters).items():
        ref = _np_ties(_np_tasks(pair, np.asarray(c)), density)
        assert_trees_close(lora.flatten(out)[path], ref.astype(np.float32), rtol=1e-5, atol=1e-5)


def test_ties_with_one_skill_and_full_density_is_that_skill(setup):
    _, lib, c = setup
    out = lora.combine(lib.select(["s1"]).adapters, c[1:2], "ties", density=1.0)
    for path, pair in lora.flatten(lib.select(["s1"]).adapters).items():
        assert_trees_close(lora.flatten(out)[path], np_dense_delta(pair, np.asarray(c[1:2])).astype(np.float32))


def test_dare(setup):
    _, lib, c = setup
    key = jax.random.key(3)
    full = lora.combine(lib.adapters, c, "dare", density=1.0, key=key)
    exact = lora.combine(lib.adapters, c, "exact")
    assert_trees_close(full, exact, rtol=1e-5, atol=1e-5)
    out = lora.combine(lib.adapters, c, "dare", density=0.5, key=key)
    for i, (path, pair) in enumerate(lora.flatten(lib.adapters).items()):
        tasks = np.stack([np.asarray(pair.a[k] @ pair.b[k], np.float64) for k in range(3)])
        keep = np.asarray(jax.random.bernoulli(jax.random.fold_in(key, i), 0.5, tasks.shape))
        kept_fraction = keep.mean()
        assert 0.4 < kept_fraction < 0.6
        ref = np.tensordot(np.asarray(c, np.float64), np.where(keep, tasks, 0) / 0.5, axes=1)
        assert_trees_close(lora.flatten(out)[path], ref.astype(np.float32), rtol=1e-5, atol=1e-5)


def test_bad_arguments(setup):
    _, lib, c = setup
    with pytest.raises(ValueError, match="unknown composition method"):
        lora.combine(lib.adapters, c, "linear")
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        lora.combine(lib.adapters, c[:2], "exact")
    with pytest.raises(ValueError, match="target rank"):
        lora.combine(lib.adapters, c, "svd")
    with pytest.raises(ValueError, match="density"):
        lora.combine(lib.adapters, c, "ties", density=0.0)
    with pytest.raises(ValueError, match="PRNG key"):
        lora.combine(lib.adapters, c, "dare")
