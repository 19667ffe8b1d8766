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
    from psec_jax.routing.routers import sort_descending

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


def numpy_kept_counts(probs: np.ndarray, p: float) -> np.ndarray:
    """Kept slots per token by the rule on float32 cumulative sums, summed one slot at a time."""
    order = np.argsort(-probs, axis=-1, kind="stable")
    c = np.cumsum(np.take_along_axis(probs, order, -1), axis=-1, dtype=np.float32)
    over = c > np.float32(p)
    return np.where(over.any(-1), over.argmax(-1) + 1, probs.shape[-1])


@pytest.mark.parametrize("e, max_k", [(8, None), (64, None), (64, 20)])
def test_top_p_at_exact_float32_boundaries(e, max_k):
    """p equal to a token's own cumulative sum: that slot's sum is not > p, so one more is kept.

    `cumsum_j - p_j` (the old rule) differs from cumsum_{j-1} in float32 for some of these tokens and
    keeps too few or too many experts; the shifted cumulative sum cannot.
    """
    rng = np.random.default_rng(e)
    logits = (rng.normal(size=(600, e)) * 1.5).astype(np.float32)
    route = jax.jit(lambda l, p: moe.top_p(l, p, max_k))  # one shape: the router's probs are the same every call
    probs = np.asarray(route(logits, 0.5).probs)
    c = np.cumsum(-np.sort(-probs, -1), -1, dtype=np.float32)
    k = e if max_k is None else max_k
    at_boundary = 0
    for j in (0, 1, 2, 4):
        for t in rng.choice(len(logits), 12, replace=False):
            p = c[t, j]
            r = route(logits, p)
            np.testing.assert_array_equal(r.probs, probs)
            want = numpy_kept_counts(probs, float(p))
            assert want[t] >= j + 2  # the boundary slot's sum is not > p: at least one more is kept
            np.testing.assert_array_equal(r.experts_per_token, np.minimum(want, k))
            np.testing.assert_array_equal(r.truncated, want > k)
            at_boundary += int(np.sum(c[:, j] == p))
    assert at_boundary >= 48


@pytest.mark.parametrize("router", ["top_k", "top_p"])
def test_non_finite_tokens_get_one_nan_slot_and_valid_ids(router):
    """NaN logit, +inf logit, all -inf: one slot at expert 0 with weight NaN; other tokens untouched."""
    e = 6
    good = np.random.default_rng(0).normal(size=(4, e)).astype(np.float32)
    bad = np.zeros((3, e), np.float32)
    bad[0, 2], bad[1, 4], bad[2] = np.nan, np.inf, -np.inf
    logits = np.concatenate([good[:2], bad, good[2:]])
    part = np.full((1, e), -np.inf, np.float32)
    part[0, 3] = 1.0  # some -inf logits are fine: those experts get probability 0
    logits = np.concatenate([logits, part])
    make = (lambda l: moe.top_k(l, 3)) if router == "top_k" else (lambda l: moe.top_p(l, 0.9))
    r = jax.jit(make)(logits)
    ids, mask, w = np.asarray(r.expert_ids), np.asarray(r.mask), np.asarray(r.weights)
    assert ids.min() >= 0 and ids.max() < e
    is_bad = np.array([0, 0, 1, 1, 1, 0, 0, 0], bool)
    np.testing.assert_array_equal(mask[is_bad], np.eye(1, mask.shape[1], dtype=bool).repeat(3, 0))
    assert np.all(ids[is_bad, 0] == 0) and np.all(np.isnan(w[is_bad, 0])) and np.all(w[is_bad, 1:] == 0)
    assert np.all(np.isnan(np.asarray(r.probs)[is_bad])) and not np.any(np.asarray(r.truncated)[is_bad])
    np.testing.assert_array_equal(r.experts_per_token, mask.sum(-1))
    alone = make(logits[~is_bad])
    for field in ("expert_ids", "weights", "mask", "probs"):
        np.testing.assert_array_equal(np.asarray(getattr(r, field))[~is_bad], getattr(alone, field))
    assert ids[-1, 0] == 3 and (router == "top_k" or r.experts_per_token[-1] == 1)
    assert np.all(np.isnan(np.asarray(moe.aux_losses(r)["total"])))  # the fault reaches the loss


@pytest.mark.parametrize("router", ["top_k", "top_p"])
def test_zero_tokens_route_to_an_empty_result(router):
    logits = jnp.zeros((0, 8))
    r = moe.top_k(logits, 2) if router == "top_k" else jax.jit(lambda l: moe.top_p(l, 0.4, 3))(logits)
    assert r.expert_ids.shape == r.weights.shape == r.mask.shape == (0, 2 if router == "top_k" else 3)
    assert r.experts_per_token.shape == r.truncated.shape == (0,)


def test_bad_logits_and_thresholds_fail_clearly():
    for shape in ((), (8,), (2, 3, 4)):
        with pytest.raises(ValueError, match=r"must be \[tokens, E\], got shape"):
            moe.top_p(jnp.zeros(shape), 0.4)
        with pytest.raises(ValueError, match=r"must be \[tokens, E\], got shape"):
            moe.top_k(jnp.zeros(shape), 1)
    with pytest.raises(TypeError, match="floating point, got dtype int32"):
        moe.top_p(jnp.zeros((4, 8), jnp.int32), 0.4)
    with pytest.raises(TypeError, match="floating point, got dtype int32"):
        moe.top_k(jnp.zeros((4, 8), jnp.int32), 2)
    logits = jnp.zeros((4, 8))
    for p in (np.float32(1.5), jnp.asarray(0.0), np.float64(np.nan), jnp.asarray(-0.2)):
        with pytest.raises(ValueError, match=r"p must be in \(0, 1\]"):
            moe.top_p(logits, p)
    with pytest.raises(ValueError, match=r"p must be a scalar, got shape \(2,\)"):
        moe.top_p(logits, jnp.asarray([0.4, 0.5]))
    with pytest.raises(TypeError, match="got a bool"):
        moe.top_p(logits, True)
    traced = jax.jit(lambda p: moe.top_p(logits, p).experts_per_token)(jnp.float32(0.3))  # not checkable
    np.testing.assert_array_equal(traced, moe.top_p(logits, 0.3).experts_per_token)
