"""The MoE transformer (psec_jax.models.transformer): reference forward, causality, routing statistics,
overfitting with each router, parameter counts of the paper's model."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from psec_jax import testing
from psec_jax.models import transformer as tf
from psec_jax.moe import MoEConfig

TINY = dict(
    vocab_size=64,
    d_model=32,
    num_layers=4,
    num_heads=4,
    num_experts=4,
    d_ff_expert=48,
    d_ff=40,
    moe_every=2,
    dtype="float32",
)


def tokens(shape=(2, 12), vocab=64, seed=1):
    return jax.random.randint(jax.random.key(seed), shape, 0, vocab)


def reference_apply(params, toks, spec, p):
    """Loop over layers in Python (no scan): in each group the MoE layer, then its dense layers (or the
    dense layers first, for moe_position "last")."""
    x = tf.embed(params, toks, spec)
    at = lambda tree, *i: jax.tree.map(lambda a: a[i], tree)
    stats = []
    for g in range(spec.num_groups):
        dense = [at(params["groups"]["dense"], g, j) for j in range(spec.moe_every - 1)]
        for layer in dense if spec.moe_position == "last" else []:
            x = tf.dense_layer(layer, x, spec)
        x, _, s = tf.moe_block(at(params["groups"]["moe"], g), x, spec, p)
        for layer in dense if spec.moe_position == "first" else []:
            x = tf.dense_layer(layer, x, spec)
        stats.append(s["experts_per_token"])
    return tf.logits_of(params, x), jnp.stack(stats)


@pytest.mark.parametrize(
    "moe_every,scan_unroll,position", [(1, 1, "first"), (2, 1, "first"), (2, 1, "last"), (1, 4, "first")]
)
def test_forward_equals_loop_over_layers(moe_every, scan_unroll, position):
    spec = tf.Spec(**{**TINY, "moe_every": moe_every, "scan_unroll": scan_unroll, "moe_position": position})
    params = tf.init(jax.random.key(0), spec)
    toks = tokens()
    out = jax.jit(lambda p, t: tf.apply(p, t, spec, 0.4))(params, toks)
    logits, experts = reference_apply(params, toks, spec, 0.4)
    testing.assert_trees_close(out.logits, logits)
    np.testing.assert_array_equal(out.stats["experts_per_token"], experts)
    assert out.logits.shape == (2, 12, 64) and out.aux["total"].shape == (spec.num_groups,)


@pytest.mark.parametrize("backend", tf.BACKENDS[:2])  # ragged is the same sort as dropless, slow on CPU
def test_changing_a_future_token_never_changes_earlier_logits(backend):
    spec = tf.Spec(**TINY, moe=dataclasses.replace(tf.Spec.moe, backend=backend))
    params = tf.init(jax.random.key(0), spec)
    toks = tokens((1, 16))
    apply = jax.jit(lambda t: tf.apply(params, t, spec).logits)
    base = apply(toks)
    for j in (5, 15):
        changed = apply(toks.at[0, j].set((toks[0, j] + 7) % 64))
        testing.assert_trees_close(changed[:, :j], base[:, :j])
        assert float(jnp.abs(changed[:, j] - base[:, j]).max()) > 1e-3  # the change itself is seen


def test_routing_statistics_equal_what_the_router_probabilities_imply():
    # One MoE layer: recompute the router input by hand, then apply the top-p rule in numpy:
    # keep the sorted experts whose preceding cumulative probability is <= p (the first always).
    spec = tf.Spec(**{**TINY, "num_layers": 1, "moe_every": 1, "num_experts": 6})
    params = tf.init(jax.random.key(3), spec)
    toks = tokens((3, 10))
    p = 0.45
    out = tf.apply(params, toks, spec, p)
    layer = jax.tree.map(lambda a: a[0], params["groups"]["moe"])
    x = tf._attend(layer, tf.embed(params, toks, spec), spec)
    h = np.asarray(tf.rms_norm(layer["ffn_norm"], x)).reshape(-1, spec.d_model)
    probs = np.asarray(jax.nn.softmax(h @ np.asarray(layer["moe"]["router"]), -1))
    order = np.argsort(-probs, -1, kind="stable")
    sorted_p = np.take_along_axis(probs, order, -1)
    keep = (np.cumsum(sorted_p, -1) - sorted_p) <= p
    keep[:, 0] = True
    counts = keep.sum(-1)
    np.testing.assert_array_equal(np.asarray(out.stats["experts_per_token"][0]).reshape(-1), counts)
    np.testing.assert_allclose(float(out.stats["experts_per_token_mean"][0]), counts.mean(), rtol=1e-6)
    assert float(out.stats["experts_per_token_max"][0]) == counts.max()
    load = np.bincount(order[keep], minlength=6) / keep.sum()
    np.testing.assert_allclose(np.asarray(out.stats["expert_load"][0]), load, rtol=1e-6)
    assert float(out.stats["truncated_fraction"][0]) == 0.0 and float(out.stats["dropped_fraction"][0]) == 0.0
    assert 1.0 < counts.mean() < 6.0  # the example exercises a dynamic number of experts


@pytest.mark.parametrize("router,k", [("top_k", 1), ("top_k", 2), ("top_p", 2)])
def test_overfits_a_tiny_batch_with_each_router(router, k):
    spec = tf.Spec(**TINY, moe=dataclasses.replace(tf.Spec.moe, router=router, k=k))
    params = tf.init(jax.random.key(0), spec)
    toks = tokens((2, 17))
    inputs, targets, weights = toks[:, :-1], toks[:, 1:], jnp.ones((2, 16))
    tx = optax.adam(3e-3)

    def step(carry, _):
        params, opt = carry
        (_, (_, lm)), grads = jax.value_and_grad(tf.loss, has_aux=True)(params, inputs, targets, weights, spec)
        updates, opt = tx.update(grads, opt, params)
        return (optax.apply_updates(params, updates), opt), lm

    _, losses = jax.jit(lambda c: jax.lax.scan(step, c, None, length=200))((params, tx.init(params)))
    assert float(losses[0]) > 3.0  # about log(64) = 4.16 at init
    assert float(losses[-1]) < 0.05, f"{router}: final loss {float(losses[-1]):.3f}"


def test_bf16_activations_fp32_parameters_and_router():
    spec = tf.Spec(**{**TINY, "dtype": "bfloat16"})
    params = tf.init(jax.random.key(0), spec)
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(params))
    out = tf.apply(params, tokens(), spec)
    assert out.logits.dtype == jnp.float32 and not bool(jnp.isnan(out.logits).any())
    reference = tf.apply(params, tokens(), tf.Spec(**TINY))
    assert float(jnp.abs(out.logits - reference.logits).max()) < 0.3  # bf16 rounding, not a different model


def test_the_paper_model_has_3_5b_parameters_and_374m_active_with_one_expert():
    spec = tf.Spec(vocab_size=32000, d_model=1024, num_layers=24, num_heads=16, num_experts=16, d_ff_expert=2816)
    counts = tf.parameter_counts(spec)  # eval_shape: nothing is allocated
    assert 3.45e9 < counts["total"] < 3.55e9, counts
    assert 3.70e8 < counts["active_top1"] < 3.78e8, counts


@pytest.mark.parametrize(
    "change,message",
    [
        (dict(num_layers=3), "multiple of moe_every"),
        (dict(num_heads=5), "heads"),
        (dict(moe=dict(router="top3")), "router"),
        (dict(moe=dict(max_k=9)), "max_k"),
        (dict(d_ff=0), "d_ff"),
        (dict(dtype="float33"), "float33"),
        (dict(scan_unroll=0), "scan_unroll"),
        (dict(moe=dict(backend="capacity")), "causality"),
        (dict(moe=dict(p=0.0)), "threshold"),
        (dict(moe=dict(router="top_k", k=5)), "k <= num_experts=4"),
        (dict(moe=dict(k=5)), None),
    ],
)
def test_bad_spec_is_rejected_in_one_line(change, message):
    make = lambda: tf.Spec(**{**TINY, **change, **({"moe": MoEConfig(**change["moe"])} if "moe" in change else {})})
    if message is None:  # k is only checked for routers that use it
        make()
        return
    with pytest.raises(Exception, match=message):
        make()


def test_bad_tokens_are_rejected():
    spec = tf.Spec(**TINY)
    params = tf.init(jax.random.key(0), spec)
    with pytest.raises(ValueError, match="batch, seq_len"):
        tf.apply(params, jnp.zeros((12,), jnp.int32), spec)
    with pytest.raises(TypeError, match="integer"):
        tf.apply(params, jnp.zeros((2, 12)), spec)


def test_cross_entropy_equals_log_softmax_at_the_target_with_its_gradient():
    logits = 3.0 * jax.random.normal(jax.random.key(0), (2, 5, 11))
    targets = jax.random.randint(jax.random.key(1), (2, 5), 0, 11)
    weights = jnp.ones((2, 5)).at[1, 3:].set(0.0)

    def reference(z):
        nll = -jnp.take_along_axis(jax.nn.log_softmax(z, -1), targets[..., None], -1)[..., 0]
        return jnp.sum(nll * weights) / jnp.sum(weights), nll

    testing.assert_trees_close(tf.cross_entropy(logits, targets, weights), reference(logits))
    grad = lambda f: jax.grad(lambda z: f(z)[0])(logits)
    testing.assert_trees_close(grad(lambda z: tf.cross_entropy(z, targets, weights)), grad(reference))
