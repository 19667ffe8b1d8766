"""Tests of psec_jax.testing: the tolerance table, tree comparison and recompile detection."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from psec_jax import testing


def test_tolerance_uses_the_loosest_dtype():
    assert testing.tolerance(jnp.float32) == testing.TOLERANCES[np.dtype(np.float32)]
    assert testing.tolerance(jnp.float32, jnp.bfloat16) == testing.TOLERANCES[np.dtype(jnp.bfloat16)]
    assert testing.tolerance(jnp.int32, jnp.bool_) == (0.0, 0.0)
    with pytest.raises(KeyError, match="float8"):
        testing.tolerance(jnp.float8_e4m3fn)


def test_close_trees_pass_and_far_trees_fail_naming_the_leaf():
    a = {"w": jnp.ones((3, 4)), "b": [jnp.zeros(2), jnp.arange(3)]}
    testing.assert_trees_close(a, jax.tree.map(lambda x: x + 1e-7 if x.dtype == jnp.float32 else x, a))
    bad = {"w": a["w"].at[1, 2].add(1e-3), "b": a["b"]}
    with pytest.raises(AssertionError, match=r"\['w'\].*worst at \(1, 2\)"):
        testing.assert_trees_close(bad, a)
    testing.assert_trees_close(bad, a, atol=1e-2)  # explicit tolerance overrides the table


def test_nan_and_inf_fail_before_value_or_shape_checks():
    a = jnp.array([1.0, jnp.nan, 3.0])
    with pytest.raises(AssertionError, match="actual has 1 NaN/Inf"):
        testing.assert_trees_close(a, jnp.array([100.0, 2.0, 3.0]))
    with pytest.raises(AssertionError, match="expected has 1 NaN/Inf"):
        testing.assert_trees_close(jnp.zeros(3), jnp.array([0.0, jnp.inf, 0.0]))
    with pytest.raises(AssertionError, match="NaN/Inf"):  # NaN reported even though shapes differ too
        testing.assert_trees_close(jnp.array([jnp.nan]), jnp.zeros(2))
    inf = jnp.array([1.0, -jnp.inf])
    testing.assert_trees_close(inf, inf, allow_nonfinite=True)
    with pytest.raises(AssertionError, match="positions or signs"):
        testing.assert_trees_close(inf, -inf, allow_nonfinite=True)


def test_structure_shape_and_integer_mismatches():
    with pytest.raises(AssertionError, match="structures differ"):
        testing.assert_trees_close({"a": 1.0}, {"b": 1.0})
    with pytest.raises(AssertionError, match=r"shape \(2,\) != expected \(3,\)"):
        testing.assert_trees_close(jnp.zeros(2), jnp.zeros(3))
    with pytest.raises(AssertionError, match="1 element"):
        testing.assert_trees_close(jnp.array([1, 2, 3]), jnp.array([1, 2, 4]))


def test_bf16_uses_bf16_tolerance():
    x = jnp.linspace(-2, 2, 64, dtype=jnp.float32)
    testing.assert_trees_close(x.astype(jnp.bfloat16), x)  # rounding error of bf16 is inside its entry
    with pytest.raises(AssertionError):
        testing.assert_trees_close(x.astype(jnp.bfloat16), x, rtol=1e-6, atol=1e-6)


def test_count_compilations_and_assert_no_recompile():
    f = jax.jit(lambda x: x * 2 + 1)
    with testing.count_compilations() as log:
        f(jnp.ones(3)).block_until_ready()
    assert log.count >= 1
    testing.assert_no_recompile(f, jnp.ones(3))
    testing.assert_no_recompile(f, jnp.ones(5), next_args=lambda out: (out,))
    # Feeding back an output of another shape forces a new trace, which must be reported.
    grow = jax.jit(lambda x: jnp.concatenate([x, x]))
    with pytest.raises(AssertionError, match="recompiled"):
        testing.assert_no_recompile(grow, jnp.ones(2), next_args=lambda out: (out,))
    # A Python scalar that changes value is a static-looking input that retraces under static_argnums.
    g = jax.jit(lambda x, n: x * n, static_argnums=1)
    calls = iter([1, 2, 3])
    with pytest.raises(AssertionError, match="recompiled"):
        testing.assert_no_recompile(lambda x: g(x, next(calls)), jnp.ones(2))
