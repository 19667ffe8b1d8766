"""Tests of named PRNG streams."""

import jax
import numpy as np
import pytest

from psec_jax import prng


def test_streams_are_stable_distinct_and_independent_of_other_names():
    key = jax.random.key(0)
    a = prng.streams(key, ["params", "data"])
    b = prng.streams(key, ["data", "dropout", "params"])
    data = lambda k: np.asarray(jax.random.key_data(k))
    np.testing.assert_array_equal(data(a["params"]), data(b["params"]))
    np.testing.assert_array_equal(data(a["data"]), data(b["data"]))
    assert not np.array_equal(data(a["params"]), data(a["data"]))
    assert prng.name_to_int("params") == prng.name_to_int("params") < 2**31


def test_stream_works_under_jit_and_vmap():
    keys = jax.random.split(jax.random.key(1), 4)
    out = jax.jit(jax.vmap(lambda k: jax.random.normal(prng.stream(k, "x"))))(keys)
    assert len(set(np.asarray(out).tolist())) == 4
    with pytest.raises(ValueError, match="unique"):
        prng.streams(keys[0], ["a", "a"])
