"""The LM's conventions as config (issue: the paper's conventions): the official initialisation, the
load-balance normalisations, padding left out of every aux loss and routing statistic, renormalised
top-k baselines, aux losses over layers, and each member's own data order."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from psec_jax import moe, routing
from psec_jax.configs import lm_moe as lm_config
from psec_jax.models import pipeline
from psec_jax.models import train as lm_train
from psec_jax.models import transformer as tf

TINY = dict(
    vocab_size=64, d_model=32, num_layers=2, num_heads=4, num_experts=4, d_ff_expert=48, d_ff=40, dtype="float32"
)


def test_official_initialisation_is_normal_0_02_everywhere_but_the_norms():
    spec = tf.Spec(**{**TINY, "vocab_size": 512, "d_model": 64, "d_ff_expert": 128})
    params = tf.init(jax.random.key(0), spec)
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    for path, leaf in flat:
        name = jax.tree_util.keystr(path)
        x = np.asarray(leaf)
        if "norm" in name:
            np.testing.assert_array_equal(x, 1.0)
            continue
        assert abs(x.mean()) < 3 * 0.02 / np.sqrt(x.size) + 1e-4, name
        assert abs(x.std() - 0.02) < 0.02 * 0.1, (name, x.std())  # every leaf has >= 256 entries
    # the leaves are independent draws, not one draw reshaped
    g = params["groups"]["moe"]["moe"]["experts"]
    assert not np.allclose(np.asarray(g["gate"]), np.asarray(g["up"]))
    fan_in = tf.init(jax.random.key(0), dataclasses.replace(spec, init="fan_in"))
    assert float(jnp.std(fan_in["embed"])) == pytest.approx(1.0, rel=0.05)  # the other scheme is still there
    # a fresh official router is near uniform: at p = 0.4 a 4-expert top-p uses 2 experts almost everywhere
    out = tf.apply(params, jax.random.randint(jax.random.key(1), (2, 16), 0, 512), spec, 0.4)
    assert float(out.stats["experts_per_token_mean"].mean()) > 1.8


def test_load_balance_under_each_normalisation_by_hand():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3]])
    r = moe.top_p(jnp.log(jnp.asarray(probs, jnp.float32)), 0.75)  # keeps {0, 1} and {1, 2}
    p_mean = probs.mean(0)
    counts = np.array([1.0, 2.0, 1.0])
    np.testing.assert_allclose(moe.load_balance(r, norm="assignments"), 3 * np.sum(counts / 4 * p_mean), rtol=1e-6)
    np.testing.assert_allclose(moe.load_balance(r, norm="tokens"), 3 * np.sum(counts / 2 * p_mean), rtol=1e-6)
    assert float(moe.expert_fractions(r, norm="tokens").sum()) == pytest.approx(2.0)  # sum f = k
    with pytest.raises(ValueError, match="unknown load-balance normalisation"):
        moe.load_balance(r, norm="experts")
    with pytest.raises(ValueError, match="load_balance_norm"):
        moe.MoEConfig(load_balance_norm="experts")


def test_masked_tokens_change_no_aux_loss_or_statistic():
    key = jax.random.key(0)
    params = moe.init_moe(key, 8, 16, 4)
    x = jax.random.normal(jax.random.key(1), (2, 6, 8))
    mask = jnp.arange(6)[None, :] < jnp.array([[4], [6]])  # row 0: its last two tokens are padding
    config = moe.MoEConfig(router="top_p", p=0.5, backend="dense", load_balance_norm="tokens")
    _, aux, stats = moe.moe_apply(params, x, config, mask=mask)
    # the same losses from the kept tokens alone
    kept = jnp.concatenate([x[0, :4], x[1]])[None]
    _, aux_kept, stats_kept = moe.moe_apply(params, kept, config)
    for k in aux:
        np.testing.assert_allclose(aux[k], aux_kept[k], rtol=1e-5, err_msg=k)
    for k in ("experts_per_token_mean", "experts_per_token_max", "expert_load", "truncated_fraction"):
        np.testing.assert_allclose(stats[k], stats_kept[k], rtol=1e-5, err_msg=k)
    # and garbage in the padded tokens changes nothing
    noisy = x.at[0, 4:].set(100.0 * jax.random.normal(jax.random.key(2), (2, 8)))
    _, aux_noisy, _ = moe.moe_apply(params, noisy, config, mask=mask)
    for k in aux:
        np.testing.assert_allclose(aux_noisy[k], aux[k], rtol=1e-5, err_msg=k)
    with pytest.raises(ValueError, match="mask has shape"):
        moe.moe_apply(params, x, config, mask=mask[0])


def test_padded_positions_change_no_model_loss_or_statistic():
    spec = tf.Spec(**TINY)
    params = tf.init(jax.random.key(0), spec)
    toks = jax.random.randint(jax.random.key(1), (2, 10), 2, 64)
    targets = jnp.roll(toks, -1, 1)
    weights = jnp.ones((2, 10)).at[0, 6:].set(0.0)  # row 0 padded from position 6

    def total_and_stats(t, s):
        total, (out, _) = tf.loss(params, t, targets, weights, s, 0.4)
        return total, out

    base, out = total_and_stats(toks, spec)
    other, out2 = total_and_stats(toks.at[0, 6:].set(1), spec)  # other tokens at the padded positions
    assert float(base) == pytest.approx(float(other), rel=1e-6)
    np.testing.assert_allclose(out.stats["experts_per_token_mean"], out2.stats["experts_per_token_mean"], rtol=1e-6)
    # without the mask they do change: the convention is what makes them irrelevant
    unmasked = dataclasses.replace(spec, mask_padding=False)
    assert float(total_and_stats(toks, unmasked)[0]) != pytest.approx(
        float(total_and_stats(toks.at[0, 6:].set(1), unmasked)[0]), rel=1e-7
    )


def test_aux_over_layers_mean_or_sum():
    spec = tf.Spec(**TINY)
    per_layer = jnp.array([1.0, 3.0])
    assert float(tf.layer_aux(per_layer, spec)) == 2.0
    assert float(tf.layer_aux(per_layer, dataclasses.replace(spec, aux_layers="sum"))) == 4.0
    with pytest.raises(ValueError, match="aux_layers"):
        tf.Spec(**TINY, aux_layers="max")


@pytest.mark.parametrize("renormalize", [True, False])
def test_top_k_stages_renormalise_as_configured_and_top_p_and_top1_never(renormalize):
    config = lm_config.get_config("tiny")
    with config.unlocked():
        config.router.renormalize_top_k = renormalize
    for stage in ("top2", "top3"):
        assert lm_train.moe_config(config, stage).renormalize is renormalize
    assert lm_train.moe_config(config, "top_p").renormalize is False
    assert lm_train.moe_config(config, "top1").renormalize is False  # its one weight would be 1: no router gradient
    logits = jax.random.normal(jax.random.key(0), (16, 4))
    r = moe.route(logits, lm_train.moe_config(config, "top2"))
    sums = np.asarray(r.weights.sum(-1))
    if renormalize:
        np.testing.assert_allclose(sums, 1.0, rtol=1e-6)
    else:
        assert np.all(sums < 1.0)


def test_every_router_gets_a_gradient_from_the_lm_loss():
    # renormalised top-1 (w / w = 1) would leave the router to the aux losses alone
    config = lm_config.get_config("tiny")
    params = moe.init_moe(jax.random.key(0), 8, 16, 4)
    x = jax.random.normal(jax.random.key(1), (32, 8))
    for stage in ("top1", "top2", "top3", "top_p"):
        c = dataclasses.replace(
            lm_train.moe_config(config, stage), load_balance_weight=0.0, dynamic_weight=0.0, z_weight=0.0
        )
        g = jax.grad(lambda p: jnp.sum(moe.moe_apply(p, x, c)[0] ** 2))(params)
        assert float(jnp.abs(g["router"]).max()) > 1e-3, stage


def test_each_member_has_its_own_data_order_shared_across_stages():
    class Data:  # the fields Batches reads
        train = np.arange(10_000, dtype=np.uint16)
        tasks_train_tokens = np.zeros((0, 17), np.uint16)

    shared = pipeline.Batches(Data, 4, 16, 0, seed=3)
    m0, m1 = (pipeline.Batches(Data, 4, 16, 0, seed=3, member=m) for m in (0, 1))
    a, b = m0.draws(5)[1], m1.draws(5)[1]
    assert not np.array_equal(a, b)  # members differ in data order
    np.testing.assert_array_equal(a, pipeline.Batches(Data, 4, 16, 0, seed=3, member=0).draws(5)[1])  # pure
    assert not np.array_equal(shared.draws(0)[1], m0.draws(0)[1])
    assert not np.array_equal(shared.draws(1)[1], m0.draws(0)[1])  # no zero-padding collision of seed lists
    with pytest.raises(ValueError, match="member"):
        pipeline.Batches(Data, 4, 16, 0, seed=3, member=-1)


def test_with_counts_keeps_each_tokens_most_probable_experts():
    probs = jnp.array([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]])
    r = moe.top_p(jnp.log(probs), 0.4)  # counts 1 and 2
    got = routing.with_counts(r, jnp.array([3, 0]))  # 0 is clipped to 1
    np.testing.assert_array_equal(got.experts_per_token, [3, 1])
    np.testing.assert_allclose(got.combine_weights(), [[0.5, 0.3, 0.2], [0.0, 0.6, 0.0]], rtol=1e-6)
    with pytest.raises(ValueError, match="counts has shape"):
        routing.with_counts(r, jnp.array([1]))


def test_count_roll_gives_each_sequence_the_previous_ones_counts_causally():
    config = lm_config.get_config("tiny")
    moe_cfg = lm_train.moe_config(config, "top_p_rolled")
    assert moe_cfg.count_roll == config.data.seq_len and moe_cfg.router == "top_p"
    spec = tf.Spec(**{**TINY, "moe": dataclasses.replace(moe_cfg, count_roll=10, backend="dense")})
    own = dataclasses.replace(spec, moe=dataclasses.replace(spec.moe, count_roll=0))
    params = tf.init(jax.random.key(0), spec)
    toks = jax.random.randint(jax.random.key(1), (3, 10), 0, 64)
    counts = np.asarray(tf.apply(params, toks, own, 0.4).stats["experts_per_token"][0])  # [B, T], layer 0
    rolled = np.asarray(tf.apply(params, toks, spec, 0.4).stats["experts_per_token"][0])
    np.testing.assert_array_equal(rolled, np.roll(counts, 1, axis=0))  # row b has row b-1's counts
    # causal within every row: a change at position j moves no earlier position of any row
    apply = jax.jit(lambda t: tf.apply(params, t, spec, 0.4).logits)
    base, changed = apply(toks), apply(toks.at[0, 6].set((toks[0, 6] + 5) % 64))
    np.testing.assert_allclose(changed[:, :6], base[:, :6], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="count_roll"):
        moe.MoEConfig(count_roll=-1)
