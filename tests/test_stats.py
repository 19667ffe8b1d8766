"""Paired statistics over seeds (`psec_jax.stats.paired_difference`, `one_sample`,
`detectable_difference`) against scipy and statsmodels on hand-made data."""

import numpy as np
import pytest
from scipy import stats as sps

from psec_jax import stats

# per-seed values of two arms sharing seeds: differences 0.5, 0.3, 0.9, 0.1, 1.0
X = np.array([3.0, 2.5, 4.1, 3.3, 2.0])
Y = np.array([2.5, 2.2, 3.2, 3.2, 1.0])


def test_paired_difference_matches_scipy():
    out = stats.paired_difference(X, Y)
    d = X - Y
    assert out["n"] == 5 and out["mean"] == pytest.approx(0.56)  # (0.5 + 0.3 + 0.9 + 0.1 + 1.0) / 5
    assert out["x_mean"] == pytest.approx(X.mean()) and out["y_mean"] == pytest.approx(Y.mean())
    assert out["sd"] == pytest.approx(d.std(ddof=1))
    assert out["t_p"] == pytest.approx(sps.ttest_rel(X, Y).pvalue)
    # all five differences positive, no ties: the exact signed-rank p is 2 / 2^5
    assert out["wilcoxon_p"] == pytest.approx(sps.wilcoxon(X, Y).pvalue) == pytest.approx(0.0625)
    # the interval of the t-test beside it, so the two agree about 0
    assert out["ci"] == pytest.approx(list(sps.t.interval(0.95, 4, loc=d.mean(), scale=sps.sem(d))))
    lo, hi = out["ci_bootstrap"]
    assert d.min() <= lo < out["mean"] < hi <= d.max()
    assert stats.paired_difference(X, Y) == out  # seeded: the same interval every time
    assert stats.paired_difference(Y, X)["mean"] == pytest.approx(-0.56)


def test_paired_bootstrap_interval_is_the_percentile_interval_of_seed_resamples():
    out = stats.paired_difference(X, Y, reps=4000, seed=3)
    means = (X - Y)[np.random.default_rng(3).integers(0, 5, (4000, 5))].mean(1)
    assert out["ci_bootstrap"] == pytest.approx(np.quantile(means, [0.025, 0.975]).tolist())


def test_paired_edge_cases():
    same = stats.paired_difference(X, X)
    assert same["mean"] == 0 and same["ci"] == [0, 0] and same["t_p"] == same["wilcoxon_p"] == 1.0
    assert same["detectable"] == 0.0
    shifted = stats.paired_difference(X + 1.0, X)  # every difference 1: no spread, t infinite
    assert shifted["t_p"] == 0.0 and shifted["sd"] == 0.0
    one = stats.paired_difference([1.0], [0.5])
    assert one["mean"] == 0.5 and np.isnan(one["t_p"]) and np.isnan(one["detectable"])
    with pytest.raises(ValueError, match="same seeds"):
        stats.paired_difference(X, Y[:4])
    with pytest.raises(ValueError, match="NaN"):
        stats.paired_difference(X, np.where(Y > 3, np.nan, Y))


@pytest.mark.parametrize("n", [3, 5, 10, 30])
def test_detectable_difference_is_the_paired_t_tests_power(n):
    power = pytest.importorskip("statsmodels.stats.power")
    effect = power.TTestPower().solve_power(nobs=n, alpha=0.05, power=0.8, alternative="two-sided")
    assert stats.detectable_difference(n, 2.0) == pytest.approx(2.0 * effect, rel=1e-5)
    # and by definition: a true difference of that size is detected 80% of the time
    nc = stats.detectable_difference(n, 1.0) * np.sqrt(n)
    crit = sps.t.ppf(0.975, n - 1)
    assert sps.nct.sf(crit, n - 1, nc) + sps.nct.cdf(-crit, n - 1, nc) == pytest.approx(0.8)


def test_detectable_difference_shrinks_as_one_over_sqrt_n():
    z = sps.norm.ppf(0.975) + sps.norm.ppf(0.8)  # 2.8016: the large-sample constant
    scaled = [stats.detectable_difference(n, 1.0) * np.sqrt(n) for n in (5, 10, 20, 80, 320, 1280)]
    assert all(a > b for a, b in zip(scaled, scaled[1:]))  # the t correction fades...
    assert scaled[-1] == pytest.approx(z, rel=2e-3)  # ...down to z sd / sqrt(n)
    # quadrupling the seeds halves it, once n is large
    assert stats.detectable_difference(4000, 1.0) / stats.detectable_difference(1000, 1.0) == pytest.approx(
        0.5, rel=1e-3
    )
    d = stats.paired_difference(X, Y)
    assert d["detectable"] == pytest.approx(stats.detectable_difference(5, d["sd"]))


def test_one_sample_matches_scipy():
    v = np.array([0.12, 0.30, -0.05, 0.21, 0.18])
    out = stats.one_sample(v)
    assert out["mean"] == pytest.approx(v.mean()) and out["n"] == 5
    assert out["ci"] == pytest.approx(list(sps.t.interval(0.95, 4, loc=v.mean(), scale=sps.sem(v))))
    assert out["t_p"] == pytest.approx(sps.ttest_1samp(v, 0.0).pvalue)
    assert out["positive"] == 4 and out["sign_p"] == pytest.approx(sps.binomtest(4, 5).pvalue)  # 12 / 32
    assert out["sign_p"] == pytest.approx(0.375)
    assert stats.one_sample(np.ones(5))["sign_p"] == pytest.approx(2 / 2**5)


def test_t_interval_and_t_p_agree_where_the_bootstrap_does_not():
    d = np.array([0.0123, -0.0031, 0.0102, -0.0049, 0.0155, 0.0021, 0.0093, -0.0072, 0.0144, 0.0008, 0.0061, -0.0012])
    out = stats.paired_difference(d, np.zeros_like(d))
    assert (out["ci"][0] < 0) == (out["t_p"] > 0.05)  # the t-interval holds 0 exactly when t p > 0.05


def test_non_inferiority_is_a_one_sided_test_against_the_margin():
    d = np.array([0.01, -0.02, 0.0, 0.015, -0.005, 0.012, -0.01, 0.003])
    out = stats.non_inferiority(d, 0.025)
    t = (d.mean() - 0.025) / sps.sem(d)
    assert out["p"] == pytest.approx(sps.t.cdf(t, d.size - 1))
    assert out["p"] == pytest.approx(sps.ttest_1samp(d, 0.025, alternative="less").pvalue)
    assert out["upper"] == pytest.approx(d.mean() + sps.t.ppf(0.95, d.size - 1) * sps.sem(d))
    assert out["shown"] and out["p"] < 0.05
    worse = stats.non_inferiority(d + 0.02, 0.025)  # 0.02 worse on average: not shown within 0.025
    assert not worse["shown"] and worse["p"] > 0.05 and worse["upper"] > 0.025
    assert not stats.non_inferiority([0.0], 0.025)["shown"]
    for bad in (0.0, True, float("nan")):
        with pytest.raises(ValueError, match="margin"):
            stats.non_inferiority(d, bad)
    assert stats.non_inferiority(d, np.float32(0.025))["margin"] == pytest.approx(0.025)
    # resolution: shown with 80% power up to largest_shown, and the power when the truth is 0, by simulation
    sd, n = 0.029, 12
    out = stats.non_inferiority(np.random.default_rng(0).normal(0, sd, n), 0.025)
    shift = stats.detectable_difference(n, out["sd"], two_sided=False)
    assert out["largest_shown"] == pytest.approx(0.025 - shift)
    rng = np.random.default_rng(1)
    sims = rng.normal(0, out["sd"], (20_000, n))
    upper = sims.mean(1) + sps.t.ppf(0.95, n - 1) * sims.std(1, ddof=1) / np.sqrt(n)
    assert np.mean(upper < 0.025) == pytest.approx(out["power_at_zero"], abs=0.01)
    sims = sims + out["largest_shown"]
    upper = sims.mean(1) + sps.t.ppf(0.95, n - 1) * sims.std(1, ddof=1) / np.sqrt(n)
    assert np.mean(upper < 0.025) == pytest.approx(0.8, abs=0.01)


def test_one_sample_reports_the_detectable_mean():
    v = np.array([0.3, -0.1, 0.5, 0.2, 0.4])
    assert stats.one_sample(v)["detectable"] == pytest.approx(stats.detectable_difference(5, v.std(ddof=1)))
