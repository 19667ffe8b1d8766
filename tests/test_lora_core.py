"""Tests of adapters, the factored forward pass, merge/unmerge and training helpers."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st
from lora_helpers import TwoLayer, np_dense_delta, random_library

from psec_jax import lora
from psec_jax.testing import assert_trees_close, tolerance

X = jax.random.normal(jax.random.key(42), (6, 8))


@pytest.fixture(scope="module")
def base():
    return TwoLayer().init(jax.random.key(0), X)


@pytest.mark.parametrize("jit", [False, True])
def test_fresh_adapter_is_an_exact_no_op(base, jit):
    cfg = lora.LoRAConfig(rank=4)
    lib = lora.SkillLibrary.create(base, "new", lora.init(jax.random.key(1), base, cfg), cfg)
    apply = jax.jit(TwoLayer().apply) if jit else TwoLayer().apply
    y0 = apply(base, X)
    y1 = apply({"params": base["params"], "lora": lib.adapters["params"]}, X, lib.coefficients(jnp.ones(1)))
    np.testing.assert_array_equal(np.asarray(y0), np.asarray(y1))
    merged = lora.merge(base, lib.skill("new"), cfg.scale)
    assert_trees_close(merged, base, rtol=0, atol=0)


@pytest.mark.parametrize("jit", [False, True])
def test_single_skill_forward_is_x_w0_plus_b_plus_s_x_a_b(jit):
    rng = np.random.default_rng(0)
    x, w, b = rng.normal(size=(7, 5)), rng.normal(size=(5, 3)), rng.normal(size=(3,))
    a, bb = rng.normal(size=(5, 2)), rng.normal(size=(2, 3))
    s = 0.75
    f = jax.jit(lora.lora_dense) if jit else lora.lora_dense
    pair = lora.LoRAPair(jnp.asarray(a[None], jnp.float32), jnp.asarray(bb[None], jnp.float32))
    y = f(jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32), jnp.asarray(b, jnp.float32), pair, jnp.array([s]))
    assert_trees_close(y, x @ w + b + s * (x @ a) @ bb)


def test_one_hot_weights_equal_the_single_skill(base):
    lib = random_library(base, [2, 4, 3])
    for i, name in enumerate(lib.names):
        one_hot = jnp.zeros(3).at[i].set(1.0)
        y = TwoLayer().apply({"params": base["params"], "lora": lib.adapters["params"]}, X, lib.coefficients(one_hot))
        alone = lib.select([name])
        y_alone = TwoLayer().apply({"params": base["params"], "lora": alone.adapters["params"]}, X, alone.scales)
        y_merged = TwoLayer().apply(lora.merge(base, lib.skill(name), lib.skills[i].scale), X)
        assert_trees_close(y, y_alone)
        assert_trees_close(y, y_merged)


@pytest.mark.parametrize(
    "lead, weight_shape",
    [
        ((6,), (3,)),  # global
        ((6,), (6, 3)),  # per example
        ((2, 4), (2, 3)),  # per example, broadcast over tokens
        ((2, 4), (2, 4, 3)),  # per token
    ],
)
def test_factored_forward_equals_per_example_merged_weights(lead, weight_shape):
    rng = np.random.default_rng(1)
    d_in, d_out, k, r = 8, 5, 3, 2
    x = rng.normal(size=lead + (d_in,)).astype(np.float32)
    w0, b0 = rng.normal(size=(d_in, d_out)).astype(np.float32), rng.normal(size=(d_out,)).astype(np.float32)
    pair = lora.LoRAPair(
        jnp.asarray(rng.normal(size=(k, d_in, r)), jnp.float32),
        jnp.asarray(rng.normal(size=(k, r, d_out)), jnp.float32),
    )
    weights = rng.normal(size=weight_shape).astype(np.float32)
    y = jax.jit(lora.lora_dense)(jnp.asarray(x), jnp.asarray(w0), jnp.asarray(b0), pair, jnp.asarray(weights))
    full_w = np.broadcast_to(
        weights.reshape(weights.shape[:-1] + (1,) * (len(lead) + 1 - weights.ndim) + (k,)), lead + (k,)
    )
    ref = np.empty(lead + (d_out,))
    for idx in np.ndindex(*lead):
        merged = w0 + np_dense_delta(pair, full_w[idx])  # this example's (token's) merged kernel
        ref[idx] = x[idx] @ merged + b0
    assert_trees_close(y, ref.astype(np.float32), rtol=1e-4, atol=1e-4)


def test_vmap_over_the_skill_axis(base):
    lib = random_library(base, [3, 3, 3])
    kernel = lib.adapters["params"]["LoRADense_0"]["kernel"]
    w, b = base["params"]["LoRADense_0"]["kernel"], base["params"]["LoRADense_0"]["bias"]
    per_skill = jax.vmap(lambda p, s: lora.lora_dense(X, w, b, lora.LoRAPair(p.a[None], p.b[None]), s[None]))(
        kernel, lib.scales
    )
    for i in range(3):
        ref = X @ (w + lib.skills[i].scale * kernel.a[i] @ kernel.b[i]) + b
        assert_trees_close(per_skill[i], ref, rtol=1e-4, atol=1e-4)
    # vmapping merge over the skill axis gives each skill's merged model.
    merged = jax.vmap(lambda p, s: lora.merge(base, p, s))(lib.adapters, lib.scales)
    assert_trees_close(jax.tree.map(lambda m: m[1], merged), lora.merge(base, lib.skill("s1"), lib.skills[1].scale))


def test_gradients_reach_only_adapter_leaves(base):
    cfg = lora.LoRAConfig(rank=4)
    lib = lora.SkillLibrary.create(base, "new", lora.init(jax.random.key(1), base, cfg), cfg)
    tree = {"base": base["params"], "lora": lib.adapters["params"]}

    def loss(t):
        y = TwoLayer().apply({"params": t["base"], "lora": t["lora"]}, X, lib.scales)
        return jnp.mean(y**2)

    tx = lora.partition_optimizer(optax.adam(1e-2), tree, trainable=[r"^lora/"])
    state = tx.init(tree)
    updates, _ = tx.update(jax.grad(loss)(tree), state, tree)
    new = optax.apply_updates(tree, updates)
    assert_trees_close(new["base"], tree["base"], rtol=0, atol=0)
    moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), new["lora"], tree["lora"])
    assert all(p.b for p in jax.tree.leaves(moved, is_leaf=lambda x: isinstance(x, lora.LoRAPair)))
    counts = lora.param_counts(base, lib)
    assert counts["per_skill"]["new"] == (8 * 4 + 4 * 12) + (12 * 4 + 4 * 5) == counts["library"]
    assert counts["base"] == 8 * 12 + 12 + 12 * 5 + 5
    with pytest.raises(ValueError, match="no leaf matches"):
        lora.partition_optimizer(optax.adam(1e-2), tree, trainable=[r"^nothing/"])


def test_merge_unmerge_round_trip_and_jit(base):
    lib = random_library(base, [4, 2])
    c = lib.coefficients(jnp.array([0.8, -1.3]))
    merged = jax.jit(lora.merge)(base, lib.adapters, c)
    assert_trees_close(lora.unmerge(merged, lib.adapters, c), base, rtol=1e-5, atol=1e-5)
    eager = lora.merge(base, lib.adapters, c)
    assert eager["params"]["LoRADense_0"]["bias"] is base["params"]["LoRADense_0"]["bias"]  # no copy
    y = TwoLayer().apply({"params": base["params"], "lora": lib.adapters["params"]}, X, c)
    assert_trees_close(TwoLayer().apply(merged, X), y, rtol=1e-4, atol=1e-4)


def test_dense_general_kernels():
    class Heads(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = nn.DenseGeneral((2, 3), name="qkv")(x)  # kernel [8, 2, 3]
            return nn.DenseGeneral(4, axis=(-2, -1), name="out")(h)  # kernel [2, 3, 4]

    params = Heads().init(jax.random.key(0), X)
    cfg = lora.LoRAConfig(rank=2, b_init="normal", init_std=0.5, in_axes=((r"out/kernel$", 2),))
    adapter = lora.init(jax.random.key(1), params, cfg)
    shapes = jax.tree.map(jnp.shape, adapter)
    assert shapes["params"]["qkv"]["kernel"] == lora.LoRAPair((8, 2), (2, 2, 3))
    assert shapes["params"]["out"]["kernel"] == lora.LoRAPair((2, 3, 2), (2, 4))
    merged = lora.merge(params, adapter, cfg.scale)
    pq, po = adapter["params"]["qkv"]["kernel"], adapter["params"]["out"]["kernel"]
    stack1 = lambda p: lora.LoRAPair(p.a[None], p.b[None])
    pm = params["params"]
    h = lora.lora_dense(X, pm["qkv"]["kernel"], pm["qkv"]["bias"], stack1(pq), jnp.array([cfg.scale]))
    y = lora.lora_dense(h, pm["out"]["kernel"], pm["out"]["bias"], stack1(po), jnp.array([cfg.scale]))
    assert_trees_close(y, Heads().apply(merged, X), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="need >= 2 dims"):
        lora.init(jax.random.key(0), params, lora.LoRAConfig(targets=(r"bias$",)))


def test_nnx_state():
    class Model(nnx.Module):
        def __init__(self, rngs):
            self.l1 = nnx.Linear(8, 6, rngs=rngs)
            self.l2 = nnx.Linear(6, 3, rngs=rngs)

        def __call__(self, x):
            return self.l2(jnp.tanh(self.l1(x)))

    model = Model(nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    cfg = lora.LoRAConfig(rank=2, b_init="normal", init_std=0.5)
    adapter = lora.init(jax.random.key(1), state, cfg)
    assert set(lora.flatten(adapter)) == {"l1/kernel", "l2/kernel"}
    merged = lora.merge(state, adapter, cfg.scale)
    assert type(merged) is type(state)
    y = nnx.merge(graphdef, merged)(X)
    k1 = state["l1"]["kernel"][...] + cfg.scale * adapter["l1"]["kernel"].a @ adapter["l1"]["kernel"].b
    k2 = state["l2"]["kernel"][...] + cfg.scale * adapter["l2"]["kernel"].a @ adapter["l2"]["kernel"].b
    ref = jnp.tanh(X @ k1 + state["l1"]["bias"][...]) @ k2 + state["l2"]["bias"][...]
    assert_trees_close(y, ref, rtol=1e-4, atol=1e-4)
    assert_trees_close(lora.unmerge(merged, adapter, cfg.scale), state, rtol=1e-5, atol=1e-5)


def test_config_scaling_and_errors(base):
    assert lora.LoRAConfig(rank=8, alpha=16).scale == 2.0
    assert lora.LoRAConfig(rank=8, alpha=16, scaling="alpha").scale == 16.0
    assert lora.LoRAConfig(rank=4, alpha=16, scaling="rslora").scale == 8.0
    cfg = lora.LoRAConfig(rank=3, scaling="rslora", in_axes=((r"x", 2),), dtype=jnp.bfloat16)
    assert lora.LoRAConfig.from_dict(cfg.to_dict()) == lora.LoRAConfig(**{**cfg.__dict__, "dtype": "bfloat16"})
    with pytest.raises(ValueError, match="rank"):
        lora.LoRAConfig(rank=0)
    with pytest.raises(ValueError, match="scaling"):
        lora.LoRAConfig(scaling="alpha_over_r")
    with pytest.raises(ValueError, match="invalid regular expression"):
        lora.LoRAConfig(targets=("(",))
    with pytest.raises(ValueError, match="no parameter path matches"):
        lora.init(jax.random.key(0), base, lora.LoRAConfig(targets=("nothing",)))
    pair = lora.LoRAPair(jnp.zeros((2, 8, 1)), jnp.zeros((2, 1, 12)))
    w, b = base["params"]["LoRADense_0"]["kernel"], base["params"]["LoRADense_0"]["bias"]
    with pytest.raises(ValueError, match="skill weights"):
        lora.lora_dense(X, w, b, pair, jnp.ones((3,)))
    with pytest.raises(ValueError, match="leading dims"):
        lora.lora_dense(X, w, b, pair, jnp.ones((5, 2)))
    with pytest.raises(ValueError, match="does not end in the kernel's input dims"):
        lora.lora_dense(jnp.ones((6, 7)), w, b, pair)


@settings(max_examples=20, deadline=None)
@given(
    d_in=st.integers(1, 12),
    d_out=st.integers(1, 12),
    rank=st.integers(1, 4),
    k=st.integers(1, 4),
    batch=st.integers(1, 5),
    per_example=st.booleans(),
    dtype=st.sampled_from([jnp.float32, jnp.bfloat16]),
    seed=st.integers(0, 2**16),
)
def test_factored_forward_matches_merged_reference(d_in, d_out, rank, k, batch, per_example, dtype, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, d_in))
    w0, b0 = rng.normal(size=(d_in, d_out)) / np.sqrt(d_in), rng.normal(size=(d_out,))
    a, b = rng.normal(size=(k, d_in, rank)) / np.sqrt(d_in), rng.normal(size=(k, rank, d_out)) / np.sqrt(rank)
    weights = rng.normal(size=(batch, k) if per_example else (k,))
    cast = lambda v: jnp.asarray(v, dtype)
    y = lora.lora_dense(cast(x), cast(w0), cast(b0), lora.LoRAPair(cast(a), cast(b)), cast(weights))
    assert y.dtype == dtype
    # Reference from the values actually fed in (rounded to dtype), in float64.
    r = lambda v: np.asarray(cast(v), np.float64)
    wfull = np.broadcast_to(r(weights), (batch, k))
    ref = np.stack(
        [r(x)[i] @ (r(w0) + np_dense_delta(lora.LoRAPair(r(a), r(b)), wfull[i])) + r(b0) for i in range(batch)]
    )
    scale = 1.0 + np.abs(ref).max()  # bf16 rounds intermediates: tolerance relative to the output scale
    rtol, atol = tolerance(dtype)
    assert_trees_close(np.asarray(y, np.float64) / scale, ref / scale, rtol=rtol, atol=atol)
