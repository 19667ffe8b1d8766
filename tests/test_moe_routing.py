"""Routers and aux losses against a numpy statement of the rules and hand-computed values."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from psec_jax import moe


def numpy_top_p(logits: np.ndarray, p: float) -> list[list[int]]:
    """The paper's rule, token by token: sort descending, keep through the first cumsum > p."""
    z = logits.astype(np.float64)
    probs = np.exp(z - z.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    kept = []
    for row in probs:
        order = sorted(range(len(row)), key=lambda i: (-row[i], i))
        c, chosen = 0.0, []
        for i in order:
            chosen.append(i)
            c += row[i]
            if c > p:
                break
        kept.append(chosen)  # all experts when no prefix exceeds p
    return kept


def adversarial_logits(e: int) -> np.ndarray:
    rng = np.random.default_rng(e)
    rows = [np.zeros(e), np.full(e, 3.0), rng.normal(size=e) * 3, rng.normal(size=e) * 0.1]
    dominant = np.zeros(e)
    dominant[e // 2] = 20.0
    rows.append(dominant)
    if e >= 2:
        tie = np.zeros(e)
        tie[:2] = 5.0  # two equal leaders
        rows.append(tie)
    return np.stack(rows + list(rng.normal(size=(20, e)) * 2)).astype(np.float32)


@pytest.mark.parametrize("e", [1, 2, 8, 64])
@pytest.mark.parametrize("p", [0.1, 0.4, 0.9, 1.0])
def test_top_p_follows_the_rule(e, p):
    logits = adversarial_logits(e)
    r = jax.jit(lambda l: moe.top_p(l, p))(logits)
    want = numpy_top_p(logits, p)
    probs = np.asarray(r.probs, np.float64)
    for t, chosen in enumerate(want):
        got = np.asarray(r.expert_ids[t])[np.asarray(r.mask[t])]
        if len(chosen) != len(got):  # only a float32-vs-float64 cumsum rounding at the threshold
            c32 = np.cumsum(np.sort(np.asarray(r.probs[t]))[::-1])
            assert np.min(np.abs(c32 - p)) < 1e-6, (t, chosen, got)
            continue
        # same set; tie order may differ only between equal probabilities
        assert sorted(probs[t, got]) == pytest.approx(sorted(probs[t, chosen]), abs=1e-6)
        np.testing.assert_allclose(np.asarray(r.weights[t])[: len(got)], probs[t, got], rtol=1e-6)
    assert np.all(np.asarray(r.weights)[~np.asarray(r.mask)] == 0)
    assert np.all(np.asarray(r.mask[:, 0]))  # top-1 always kept
    np.testing.assert_array_equal(r.experts_per_token, np.asarray(r.mask).sum(-1))
    if p == 1.0:
        assert np.all(np.asarray(r.experts_per_token) == e)  # no prefix exceeds 1: keep all


def test_top_p_edge_cases_and_truncation():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8], [1 / 3, 1 / 3, 1 / 3]]))
    r = moe.top_p(logits, 0.5)
    np.testing.assert_array_equal(r.experts_per_token, [2, 1, 2])  # 0.5 is not > 0.5
    cut = moe.top_p(logits, 0.85, max_k=2)
    assert cut.expert_ids.shape == (3, 2)
    np.testing.assert_array_equal(cut.truncated, [True, False, True])
    np.testing.assert_array_equal(cut.experts_per_token, [2, 2, 2])
    renorm = moe.top_p(logits, 0.5, renormalize=True)
    np.testing.assert_allclose(np.asarray(renorm.weights).sum(-1), 1.0, rtol=1e-6)


def test_tiny_p_is_top_1_and_top_k_matches_sorting():
    logits = jax.random.normal(jax.random.PRNGKey(0), (50, 8))
    tiny, one = moe.top_p(logits, 1e-6), moe.top_k(logits, 1)
    np.testing.assert_array_equal(tiny.expert_ids[:, 0], one.expert_ids[:, 0])
    np.testing.assert_array_equal(tiny.experts_per_token, 1)
    np.testing.assert_allclose(tiny.weights[:, 0], one.weights[:, 0])
    two = moe.top_k(logits, 2)
    order = np.argsort(-np.asarray(two.probs), axis=-1, kind="stable")[:, :2]
    np.testing.assert_array_equal(two.expert_ids, order)
    np.testing.assert_allclose(moe.top_k(logits, 2, renormalize=True).weights.sum(-1), 1.0, rtol=1e-6)


def test_kept_count_does_not_grow_as_the_router_grows_confident():
    logits = jax.random.normal(jax.random.PRNGKey(1), (200, 16))
    counts = [np.asarray(moe.top_p(logits * s, 0.4).experts_per_token) for s in (0.1, 0.5, 1, 2, 5, 100)]
    for a, b in zip(counts, counts[1:]):
        assert np.all(b <= a)
    assert counts[0].mean() > counts[-1].mean() == 1.0


def test_bf16_logits_route_in_float32():
    logits = jax.random.normal(jax.random.PRNGKey(2), (64, 8)).astype(jnp.bfloat16)
    r = moe.top_p(logits, 0.4)
    assert r.probs.dtype == jnp.float32 and r.weights.dtype == jnp.float32
    ref = moe.top_p(logits.astype(jnp.float32), 0.4)
    np.testing.assert_array_equal(r.mask, ref.mask)


def test_router_arguments_are_validated():
    logits = jnp.zeros((4, 8))
    for p in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=r"p must be in \(0, 1\]"):
            moe.top_p(logits, p)
    for k in (0, 9):
        with pytest.raises(ValueError, match=r"k must be in \[1, E=8\]"):
            moe.top_k(logits, k)
    with pytest.raises(ValueError, match=r"max_k must be in \[1, E=8\]"):
        moe.top_p(logits, 0.4, max_k=0)
    with pytest.raises(TypeError, match="Python int"):
        moe.top_k(logits, 2.0)
    with pytest.raises(ValueError, match=r"\[tokens, E\]"):
        moe.top_p(jnp.zeros((2, 3, 4)), 0.4)


def test_aux_losses_against_hand_computed_values():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3]])
    r = moe.top_p(jnp.log(jnp.asarray(probs, jnp.float32)), 0.75)
    # token 0 keeps {0, 1}, token 1 keeps {1, 2}: f = [1, 2, 1] / 4; P = mean probs
    np.testing.assert_allclose(moe.expert_fractions(r), [0.25, 0.5, 0.25], rtol=1e-6)
    p_mean = probs.mean(0)
    np.testing.assert_allclose(moe.load_balance(r), 3 * np.sum(np.array([0.25, 0.5, 0.25]) * p_mean), rtol=1e-5)
    entropy = -np.sum(probs * np.log(probs), -1).mean()
    np.testing.assert_allclose(moe.dynamic_loss(r), entropy, rtol=1e-5)
    np.testing.assert_allclose(moe.z_loss(r), 0.0, atol=1e-10)  # log-probs: logsumexp = 0
    shifted = moe.top_k(jnp.log(jnp.asarray(probs, jnp.float32)) + 2.0, 1)
    np.testing.assert_allclose(moe.z_loss(shifted), 4.0, rtol=1e-5)
    aux = moe.aux_losses(r, {"dynamic": 1.0})
    want = 1e-2 * aux["load_balance"] + 1.0 * aux["dynamic"] + 1e-3 * aux["z"]
    np.testing.assert_allclose(aux["total"], want, rtol=1e-6)
    with pytest.raises(ValueError, match="unknown aux loss weights"):
        moe.aux_losses(r, {"balance": 1.0})


def test_balanced_routing_has_load_balance_one():
    logits = jnp.log(jnp.full((8, 4), 0.25))
    r = moe.top_k(logits + jnp.eye(4)[jnp.arange(8) % 4] * 1e-3, 1)
    np.testing.assert_allclose(moe.load_balance(r), 1.0, rtol=1e-3)


@pytest.mark.parametrize("e", [3, 16, 32])
def test_pairwise_sort_equals_top_k_including_ties(e):
    from psec_jax.moe.routing import sort_descending

    probs = jax.nn.softmax(jnp.asarray(adversarial_logits(e)), -1)
    probs = probs.at[0].set(jnp.full((e,), 1.0 / e))  # all tied
    got_p, got_i = sort_descending(probs)
    want_p, want_i = jax.lax.top_k(probs, e)
    np.testing.assert_array_equal(got_i, want_i)
    np.testing.assert_array_equal(got_p, want_p)


@pytest.mark.parametrize("max_k", [None, 20, 4])
def test_many_experts_partial_sort_and_its_fallback(max_k):
    """E=64 sorts only the top 16 when every token's kept prefix ends there, else all of them."""
    rng = np.random.default_rng(0)
    confident = (rng.normal(size=(40, 64)) * 4).astype(np.float32)  # prefixes end within 16
    mixed = np.concatenate([confident, np.zeros((1, 64), np.float32)])  # a uniform row needs 26
    for logits in (confident, mixed):
        r = jax.jit(lambda l: moe.top_p(l, 0.4, max_k))(logits)
        k = 64 if max_k is None else max_k
        assert r.expert_ids.shape == (len(logits), k)
        for t, chosen in enumerate(numpy_top_p(logits, 0.4)):
            got = np.asarray(r.expert_ids[t])[np.asarray(r.mask[t])]
            np.testing.assert_array_equal(got, chosen[:k])  # no ties here: the exact order
            assert bool(r.truncated[t]) == (len(chosen) > k)
        assert np.all(np.asarray(r.weights)[~np.asarray(r.mask)] == 0)
