"""Tests of the within-token regression of experts on difficulty (difficulty.py): hand-derived values,
statsmodels' dummy-variable OLS as a reference, planted slopes with a confounded token identity, and
interval coverage with and without correlated errors within sequences."""

import numpy as np
import pytest

from psec_jax.models import difficulty as df

# Two identities seen twice and one singleton (dropped):
#   A: x = (0, 2), y = (1, 5)  ->  x~ = (-1, 1), y~ = (-2, 2)
#   B: x = (1, 3), y = (0, 2)  ->  x~ = (-1, 1), y~ = (-1, 1)
# b = sum x~ y~ / sum x~^2 = (2 + 2 + 1 + 1) / 4 = 1.5; residuals e~ = y~ - 1.5 x~ = A (-.5, .5), B (.5, -.5)
X = np.array([0.0, 2.0, 1.0, 3.0, 9.0])
Y = np.array([1.0, 5.0, 0.0, 2.0, 9.0])
T = np.array([7, 7, 3, 3, 11])


def _synthetic(rng, slope, *, num_identities=150, seq_shocks=0.0, num_seqs=60):
    """Positions of token identities whose mean difficulty also raises their experts (the confound):
    y = a_t + slope * x + heteroscedastic noise, a_t = 2 mu_t + small, x = mu_t + noise; 1 to 39
    positions per identity (singletons included), each in one of `num_seqs` sequences. `seq_shocks`
    adds a per-sequence shock to both x and the error: errors correlated within a sequence."""
    mu = rng.normal(0.0, 1.0, num_identities)
    a = 2.0 * mu + rng.normal(0.0, 0.3, num_identities)
    t = np.repeat(np.arange(num_identities), rng.integers(1, 40, num_identities))
    rng.shuffle(t)
    n = t.size
    seq = rng.integers(0, num_seqs, n)
    u, v = (seq_shocks * rng.normal(0.0, 1.0, num_seqs) for _ in range(2))
    within = rng.normal(0.0, 0.7, n)
    x = mu[t] + within + u[seq]
    y = a[t] + slope * x + rng.normal(0.0, 1.0, n) * (0.3 + 0.5 * np.abs(within)) + v[seq]
    return y, x, t, seq


class TestByHand:
    def test_hc1(self):
        # meat sum x~^2 e~^2 = 4 * .25 = 1; n = 4, k = 2 identities + 1: V = 4 / (4 - 3) * 1 / 4^2 = 1/4
        r = df.token_fixed_effects_slope(Y, X, T)
        assert (r.slope, r.se, r.num_tokens, r.num_identities, r.num_clusters) == (1.5, 0.5, 4, 2, None)
        # pooled, the four kept positions: x - 1.5 = (-1.5, .5, -.5, 1.5), y - 2 = (-1, 3, -2, 0): 4 / 5
        assert r.pooled_slope == pytest.approx(0.8)
        t = 12.7062047361747  # Student t, 0.975 quantile, 1 degree of freedom
        np.testing.assert_allclose(r.ci, (1.5 - t * 0.5, 1.5 + t * 0.5))

    def test_clustered(self):
        # clusters A and B: scores sum x~ e~ = (-1)(-.5) + (1)(.5) = 1 and (-1)(.5) + (1)(-.5) = -1, meat 2;
        # V = C/(C-1) (n-1)/(n-k) * 2 / 16 = 2 * 3 * 2 / 16 = 3/4 (the singleton's cluster is dropped with it)
        r = df.token_fixed_effects_slope(Y, X, T, groups=np.array([0, 0, 1, 1, 2]))
        assert r.slope == 1.5 and r.se == pytest.approx(0.75**0.5) and r.num_clusters == 2
        # clusters that pair A's and B's positions cancel: (-1)(-.5) + (-1)(.5) = 0, likewise the other
        assert df.token_fixed_effects_slope(Y, X, T, groups=np.array([0, 1, 0, 1, 1])).se == 0.0

    def test_binned(self):
        # kept means x 1.5, y 2; x~ ranks: A1 and B1 tie at -1 (input order: A1 first), then A2, B2
        # 2 bins: {A1, B1}: x~ -1, y~ (-2, -1): difficulty -1 + 1.5, experts -1.5 + 2;
        #         {A2, B2}: x~ 1, y~ (2, 1): difficulty 1 + 1.5, experts 1.5 + 2
        b = df.binned(Y, X, T, num_bins=2)
        np.testing.assert_allclose(b.difficulty, [0.5, 2.5])
        np.testing.assert_allclose(b.experts, [0.5, 3.5])
        np.testing.assert_allclose(b.experts_se, [0.5, 0.5])  # sample std of (-2, -1) / sqrt 2
        assert b.count.tolist() == [2, 2]


def test_matches_statsmodels_ols_with_dummies():
    sm = pytest.importorskip("statsmodels.api")
    rng = np.random.default_rng(0)
    y, x, t, seq = _synthetic(rng, 0.7, num_identities=12, num_seqs=9)
    keep = np.bincount(t)[t] >= 2  # statsmodels sees the identities seen twice, one dummy each
    ids = np.unique(t[keep])
    design = np.column_stack([x[keep]] + [(t[keep] == i).astype(float) for i in ids])
    model = sm.OLS(y[keep], design)
    for groups, fit in (
        (None, model.fit(cov_type="HC1")),
        (seq, model.fit(cov_type="cluster", cov_kwds={"groups": seq[keep]})),
    ):
        r = df.token_fixed_effects_slope(y, x, t, groups=groups)
        assert r.slope == pytest.approx(fit.params[0], rel=1e-10)
        assert r.se == pytest.approx(fit.bse[0], rel=1e-10)
        assert r.num_tokens == keep.sum() and r.num_identities == ids.size


def test_two_way_fixed_effects_match_ols_with_both_sets_of_dummies():
    rng = np.random.default_rng(8)
    y, x, t, seq = _synthetic(rng, 0.7, num_identities=12, num_seqs=9)
    pos = rng.integers(0, 6, t.size)
    y = y + 0.4 * pos  # a position effect the dummies absorb
    keep = np.bincount(t)[t] >= 2
    tk, pk = t[keep], pos[keep]
    design = np.column_stack(
        [x[keep]] + [(tk == i).astype(float) for i in np.unique(tk)] + [(pk == j).astype(float) for j in range(1, 6)]
    )
    coef, *_ = np.linalg.lstsq(design, y[keep], rcond=None)
    e = y[keep] - design @ coef
    n, k = design.shape
    bread = np.linalg.inv(design.T @ design)
    hc1 = n / (n - k) * bread @ (design.T * e**2) @ design @ bread
    r = df.token_fixed_effects_slope(y, x, t, controls=pos)
    assert r.slope == pytest.approx(coef[0], rel=1e-8)
    assert r.se == pytest.approx(np.sqrt(hc1[0, 0]), rel=1e-6)
    assert (r.num_identities, r.num_control_levels) == (np.unique(tk).size, 6)


def test_position_effect_alone_gives_no_slope_once_position_is_absorbed():
    # difficulty falls along the window and the router uses more experts early, but at a given position
    # experts do not depend on difficulty: token-only effects find a slope, token + position none
    rng = np.random.default_rng(9)
    windows, length = 400, 32
    pos = np.tile(np.arange(length), windows)
    t = rng.integers(0, 50, pos.size)
    x = 5.0 - 1.5 * np.log1p(pos) + rng.normal(0.0, 1.0, pos.size)
    y = (rng.random(pos.size) < np.where(pos < 16, 0.6, 0.4)).astype(float) + 1.0
    groups = np.repeat(np.arange(windows), length)
    token_only = df.token_fixed_effects_slope(y, x, t, groups=groups)
    both = df.token_fixed_effects_slope(y, x, t, groups=groups, controls=pos)
    assert token_only.ci[0] > 0  # a spurious "harder needs more experts"
    assert both.ci[0] < 0 < both.ci[1] and abs(both.slope) < 0.01


class TestPlanted:
    def test_recovers_a_slope_the_pooled_regression_misses(self):
        y, x, t, seq = _synthetic(np.random.default_rng(1), 0.5)
        r = df.token_fixed_effects_slope(y, x, t, groups=seq)
        assert r.ci[0] < 0.5 < r.ci[1] and r.se < 0.05
        # the identity effect a_t = 2 mu_t leaks into the pooled slope: ~ 0.5 + 2 / (1 + 0.49)
        assert r.pooled_slope > 1.5

    def test_zero_slope(self):
        y, x, t, seq = _synthetic(np.random.default_rng(2), 0.0)
        r = df.token_fixed_effects_slope(y, x, t, groups=seq)
        assert r.ci[0] < 0.0 < r.ci[1] and abs(r.slope) < 0.1 and r.pooled_slope > 1.0

    def test_interval_coverage(self):
        # errors shared within a sequence: the clustered interval keeps ~95% coverage, the HC1 one,
        # which treats positions as independent, falls well short
        covered = {"cluster": [], "hc1": []}
        for seed in range(150):
            y, x, t, seq = _synthetic(np.random.default_rng(100 + seed), 0.5, seq_shocks=0.5, num_seqs=40)
            for kind, groups in (("cluster", seq), ("hc1", None)):
                lo, hi = df.token_fixed_effects_slope(y, x, t, groups=groups).ci
                covered[kind].append(lo < 0.5 < hi)
        assert 0.88 < np.mean(covered["cluster"]) <= 1.0
        assert np.mean(covered["hc1"]) < 0.75

    def test_per_layer_and_binned(self):
        rng = np.random.default_rng(3)
        y, x, t, seq = _synthetic(rng, 0.0)
        counts = np.stack([y, y + 1.0 * x, np.round(y + 2.0 * x)])  # layers of slope 0, 1, ~2
        results = df.per_layer(counts, x, t, groups=seq)
        for r, c in zip(results, counts):
            one = df.token_fixed_effects_slope(c, x, t, groups=seq)
            values = lambda r: [r.slope, r.se, *r.ci, r.pooled_slope]
            np.testing.assert_allclose(values(r), values(one), rtol=1e-12)  # up to summation order
            assert r[3:6] == one[3:6]  # tokens, identities, clusters
        assert [round(r.slope) for r in results] == [0, 1, 2]
        b = df.binned(counts[2], x, t)
        assert b.count.sum() == results[2].num_tokens and b.count.max() - b.count.min() <= 1
        assert (np.diff(b.difficulty) > 0).all()
        # the bins' mean is the kept positions' mean; a line through them has about the slope
        keep = np.bincount(t)[t] >= 2
        assert np.average(b.experts, weights=b.count) == pytest.approx(counts[2][keep].mean())
        assert np.polyfit(b.difficulty, b.experts, 1, w=np.sqrt(b.count))[0] == pytest.approx(results[2].slope, abs=0.1)


class TestDegenerate:
    def test_singletons_drop_out(self):
        y, x, t, seq = _synthetic(np.random.default_rng(4), 0.5)
        r = df.token_fixed_effects_slope(y, x, t, groups=seq)
        rng = np.random.default_rng(5)
        m = 20  # new identities seen once each, in existing sequences
        y2, x2 = np.r_[y, rng.normal(size=m)], np.r_[x, rng.normal(size=m)]
        t2, seq2 = np.r_[t, 10_000 + np.arange(m)], np.r_[seq, rng.integers(0, 60, m)]
        assert df.token_fixed_effects_slope(y2, x2, t2, groups=seq2) == r

    def test_constant_difficulty_identity_only_adds_degrees_of_freedom(self):
        y, x, t, _ = _synthetic(np.random.default_rng(6), 0.5)
        r = df.token_fixed_effects_slope(y, x, t)
        m = 30  # an identity whose positions all have difficulty 1.0: no within variation in x
        y2, x2, t2 = np.r_[y, np.arange(m) % 7], np.r_[x, np.ones(m)], np.r_[t, np.full(m, -1)]
        r2 = df.token_fixed_effects_slope(y2, x2, t2)
        assert r2.slope == pytest.approx(r.slope, rel=1e-12)
        assert (r2.num_tokens, r2.num_identities) == (r.num_tokens + m, r.num_identities + 1)
        assert r2.se == pytest.approx(r.se, rel=0.02)  # only the factor n / (n - k) moves

    @pytest.mark.parametrize(
        "y, x, t, groups, match",
        [
            (Y, X, np.arange(5), None, "no token identity occurs twice"),
            (Y, np.array([1.0, 1.0, 2.0, 2.0, 3.0]), T, None, "constant within every token identity"),
            (Y, X, T, np.array([4, 4, 4, 4, 0]), "one cluster"),
            (Y[:4], X[:4], np.array([0, 0, 1, 2]), None, "no residual degrees of freedom"),
        ],
    )
    def test_no_estimate_raises(self, y, x, t, groups, match):
        with pytest.raises(ValueError, match=match):
            df.token_fixed_effects_slope(y, x, t, groups=groups)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(counts=Y[:, None]), r"counts must be \[N\], got shape \(5, 1\)"),
        (dict(difficulty=X[:4]), r"difficulty must be \[N\] with N = 5 as counts \[..., N\], got shape \(4,\)"),
        (dict(groups=np.zeros((5, 1), int)), r"groups must be \[N\]"),
        (dict(difficulty=np.r_[X[:4], np.nan]), r"difficulty has 1 non-finite value\(s\) \(NaN or inf\)"),
        (dict(counts=np.r_[np.inf, Y[1:]]), "counts has 1 non-finite"),
        (dict(token_ids=T.astype(float)), "token_ids must be integers, got dtype float64"),
        (dict(groups=np.zeros(5)), "groups must be integers"),
        (dict(counts=Y.astype(str)), "counts must be real numbers"),
    ],
)
def test_bad_inputs_raise_one_line(kwargs, match):
    args = {"counts": Y, "difficulty": X, "token_ids": T, "groups": None, **kwargs}
    with pytest.raises(ValueError, match=match) as info:
        df.token_fixed_effects_slope(args["counts"], args["difficulty"], args["token_ids"], groups=args["groups"])
    assert "\n" not in str(info.value)


def test_per_layer_and_binned_argument_errors():
    with pytest.raises(ValueError, match=r"counts must be \[G, N\], got shape \(5,\)"):
        df.per_layer(Y, X, T)
    with pytest.raises(ValueError, match=r"num_bins must be in \[1, 4\]"):
        df.binned(Y, X, T, num_bins=5)
