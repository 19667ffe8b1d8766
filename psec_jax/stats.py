"""Statistics over training seeds, shared by the RL and LM experiments.

Independent arms, with rliable (Agarwal et al. 2021): the mean and the interquartile mean (IQM) over
runs with stratified-bootstrap 95% confidence intervals, and the probability of improvement; beside
them an exact rank test (Mann-Whitney U) of two methods' runs, and whether their runs are completely
separated (then a bootstrap interval of P(X > Y) is [0, 0] or [1, 1] by construction).

Paired arms (seed i of both shares its initialisation and data): `paired_difference` (t-interval and
bootstrap interval, paired t and Wilcoxon signed-rank tests, the smallest detectable difference),
`one_sample` (t-interval and sign test of per-seed values, e.g. a slope per seed) and `non_inferiority`
(a one-sided test that per-seed differences stay below a margin: "no worse than").

A *run* is one training seed; its score is e.g. the mean return of its evaluation episodes (episodes of
one seed share its policy, so they are not independent runs). One task per table, so the bootstrap
resamples seeds. Fixed ``seed`` => the same intervals every time (``_estimates``).
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Callable, Mapping

import numpy as np

# bootstrap replications: 5 seeds have only 126 distinct resamples, and rliable calls the aggregate once
# per replication in Python (20k replications of 6 methods took over a minute here)
REPS = 2_000
CONFIDENCE = 0.95


def _check(name: str, scores: np.ndarray) -> np.ndarray:
    x = np.asarray(scores, np.float64)
    if x.ndim != 1 or x.size < 1:
        raise ValueError(f"{name}: per-seed scores must be a non-empty 1-D array, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name}: per-seed scores contain NaN or Inf: {x.tolist()}")
    return x


def _estimates(scores: Mapping, func: Callable, reps: int, seed: int) -> tuple[dict, dict]:
    """rliable's estimates, each entry bootstrapped on its own from ``seed``: the same numbers every
    time, and an entry's interval does not depend on which others share the table."""
    from rliable import library as rly

    point, ci = {}, {}
    state = np.random.get_state()
    try:
        for name, x in scores.items():
            # rliable's StratifiedBootstrap draws from numpy's global generator, not the random_state
            # it is given (rliable 1.2.0), so both are seeded, and the global state restored after
            np.random.seed(seed)
            with warnings.catch_warnings():  # arch deprecates the RandomState rliable passes; still seeded
                warnings.simplefilter("ignore", FutureWarning)
                p, c = rly.get_interval_estimates(
                    {name: x},
                    func,
                    reps=reps,
                    confidence_interval_size=CONFIDENCE,
                    random_state=np.random.RandomState(seed),
                )
            point[name], ci[name] = p[name], c[name]
    finally:
        np.random.set_state(state)
    return point, ci


def intervals(
    per_seed: Mapping[str, np.ndarray], *, reps: int = REPS, seed: int = 0
) -> dict[str, dict[str, float | list[float]]]:
    """Per method: ``mean``, ``iqm`` and their 95% stratified-bootstrap intervals ``mean_ci`` /
    ``iqm_ci`` ([low, high]) from per-seed scores ``per_seed[m]`` [seeds]."""
    from rliable import metrics

    scores = {m: _check(m, x)[:, None] for m, x in per_seed.items()}  # rliable: [runs, tasks]
    agg = lambda x: np.array([metrics.aggregate_mean(x), metrics.aggregate_iqm(x)])
    point, ci = _estimates(scores, agg, reps, seed)
    return {
        m: {
            "mean": float(point[m][0]),
            "mean_ci": [float(ci[m][0, 0]), float(ci[m][1, 0])],
            "iqm": float(point[m][1]),
            "iqm_ci": [float(ci[m][0, 1]), float(ci[m][1, 1])],
        }
        for m in per_seed
    }


def probability_of_improvement(
    per_seed: Mapping[str, np.ndarray], pairs: list[tuple[str, str]], *, reps: int = REPS, seed: int = 0
) -> dict[str, dict[str, float | list[float]]]:
    """``{"x>y": {"p": P(X > Y), "ci": [low, high]}}`` for each pair (x, y): the probability that a run
    of x scores above a run of y (ties count half), with its 95% bootstrap interval (runs of x and y
    resampled independently)."""
    from rliable import metrics

    if not pairs:
        return {}
    scores = {f"{x}>{y}": [_check(x, per_seed[x])[:, None], _check(y, per_seed[y])[:, None]] for x, y in pairs}
    point, ci = _estimates(scores, lambda a, b: np.array([metrics.probability_of_improvement(a, b)]), reps, seed)
    return {k: {"p": float(point[k][0]), "ci": [float(ci[k][0, 0]), float(ci[k][1, 0])]} for k in scores}


def rank_test(x: np.ndarray, y: np.ndarray) -> dict[str, float | bool]:
    """Two-sided Mann-Whitney U test of per-seed scores ``x`` [n] against ``y`` [m]: ``{"u": U of x,
    "p": p-value, "exact": bool, "separated": bool}``. The p-value is exact (the permutation distribution
    of U) when there are no ties and n, m <= 50; otherwise the normal approximation with tie correction.
    ``separated``: every run of one method scores above every run of the other (U = 0 or n m), where the
    smallest p-value the test can give is 2 / C(n + m, n) (0.0079 for 5 vs 5 seeds, 1.1e-5 for 10 vs 10)."""
    from scipy import stats as sps

    a, b = _check("x", x), _check("y", y)
    exact = len(np.unique(np.concatenate([a, b]))) == a.size + b.size and max(a.size, b.size) <= 50
    res = sps.mannwhitneyu(a, b, alternative="two-sided", method="exact" if exact else "asymptotic")
    u = float(res.statistic)
    return {"u": u, "p": float(res.pvalue), "exact": bool(exact), "separated": u in (0.0, float(a.size * b.size))}


def variance_split(scores: np.ndarray) -> dict[str, float]:
    """How much of the spread of per-seed means comes from episodes, for ``scores`` [seeds, episodes]
    (one-way random-effects ANOVA): ``episode_sd``, the pooled standard deviation between episodes of one
    seed; ``seed_sd``, the standard deviation of the seeds' true means (``var(seed means) - episode_var /
    episodes``, floored at 0); ``episode_share``, the fraction of the variance of a seed's mean that its
    finite episodes add (``episode_var / episodes / var(seed means)``, capped at 1). A share near 1 says
    more episodes, not more seeds, would narrow the intervals."""
    x = np.asarray(scores, np.float64)
    if x.ndim != 2 or x.shape[0] < 2 or x.shape[1] < 2:
        raise ValueError(f"variance_split: scores must be [seeds >= 2, episodes >= 2], got shape {x.shape}")
    episode_var = float(np.mean(np.var(x, axis=1, ddof=1)))
    means_var = float(np.var(x.mean(axis=1), ddof=1))
    noise = episode_var / x.shape[1]
    share = 1.0 if means_var <= noise else noise / means_var
    return {"episode_sd": episode_var**0.5, "seed_sd": max(means_var - noise, 0.0) ** 0.5, "episode_share": share}


def detectable_improvement(n: int, m: int, *, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest probability of improvement P(X > Y) that a two-sided Mann-Whitney test of ``n`` vs
    ``m`` seeds detects at level ``alpha`` with probability ``power`` (Noether's approximation:
    (P - 1/2)^2 = (z_{1-alpha/2} + z_power)^2 / (12 c (1 - c) N), N = n + m, c = n / N); above 1 means
    no effect is detectable that reliably. 10 vs 10 seeds: 0.86, about 1.5 seed standard deviations
    between two normal means."""
    from scipy import stats as sps

    total, c = n + m, n / (n + m)
    z = sps.norm.ppf(1 - alpha / 2) + sps.norm.ppf(power)
    return 0.5 + float(np.sqrt(z**2 / (12 * c * (1 - c) * total)))


# ------------------------------------------------------------------------------------- paired seeds


def _t_half_width(n: int, sd: float, quantile: float) -> float:
    """t_{quantile, n-1} sd / sqrt(n): the half-width of a t-interval (two-sided 95%: quantile 0.975;
    a one-sided 95% bound: 0.95). NaN for n < 2."""
    from scipy import stats as sps

    return float(sps.t.ppf(quantile, n - 1) * sd / np.sqrt(n)) if n > 1 else float("nan")


def detectable_difference(
    n: int, sd: float, *, alpha: float = 0.05, power: float = 0.8, two_sided: bool = True
) -> float:
    """The smallest true mean difference that a two-sided paired t-test of ``n`` seeds at level ``alpha``
    detects with probability ``power`` when the per-seed differences have standard deviation ``sd``
    (``two_sided=False``: the shift a one-sided test at level ``alpha`` detects in its direction).

    Exact for normal differences: the delta solving P(|T| > t_{1-alpha/2, n-1}) = power with T noncentral
    t on n - 1 degrees of freedom and noncentrality delta sqrt(n) / sd. About (t_{1-alpha/2, n-1} +
    t_{power, n-1}) sd / sqrt(n), tending to (z_{1-alpha/2} + z_power) sd / sqrt(n) = 2.80 sd / sqrt(n)
    for many seeds, so it shrinks as 1 / sqrt(n) up to the small-sample t correction (5 seeds: 1.68 sd,
    10 seeds: 1.00 sd; 2.80 / sqrt(n) would say 1.25 and 0.89). NaN for n < 2 or a non-finite sd; 0 for sd = 0."""
    from scipy import optimize
    from scipy import stats as sps

    if n < 2 or not np.isfinite(sd):
        return float("nan")
    if sd == 0:
        return 0.0
    dof, crit = n - 1, sps.t.ppf(1 - (alpha / 2 if two_sided else alpha), n - 1)

    def shortfall(effect: float) -> float:  # power at a standardised effect, less the power asked for
        nc = effect * np.sqrt(n)
        wrong_side = sps.nct.cdf(-crit, dof, nc) if two_sided else 0.0  # below 1e-9 scipy may give NaN
        return sps.nct.sf(crit, dof, nc) + np.nan_to_num(wrong_side) - power

    high = 2 * (crit + sps.t.ppf(power, dof)) / np.sqrt(n)  # twice the usual approximation: power above target
    return float(optimize.brentq(shortfall, 1e-9, high, xtol=1e-10)) * float(sd)


def paired_difference(
    x: np.ndarray, y: np.ndarray, *, reps: int = REPS, seed: int = 0, alpha: float = 0.05, power: float = 0.8
) -> dict[str, float | int | list[float]]:
    """Paired comparison of two arms' per-seed values ``x`` [n] and ``y`` [n] (seed i of both arms shares its
    initialisation and data), on the differences d = x - y:

      - ``n``; ``mean`` of d and ``x_mean``, ``y_mean``; ``sd``, the standard deviation of d (ddof 1);
      - ``ci``: the 95% paired t-interval of mean(d), mean +- t_{0.975, n-1} sd / sqrt(n): the interval
        of the t-test whose ``t_p`` stands beside it, so the two never disagree about 0;
      - ``ci_bootstrap``: the 95% percentile-bootstrap interval of mean(d) over seeds (``reps`` resamples
        of the n differences drawn from ``seed``: the same interval every time); with few seeds it is
        narrower than the t-interval, as the bootstrap of a few values is (it knows no t correction);
      - ``t_p``: two-sided paired t-test p-value (1 when every difference is 0, 0 when they are all equal
        and nonzero);
      - ``wilcoxon_p``: two-sided Wilcoxon signed-rank p-value (exact without ties or zero differences;
        1 when every difference is 0). Its smallest value is 2 / 2^n: 0.0625 for 5 seeds, so with 5 seeds
        it can never reach 0.05;
      - ``detectable``: the smallest true mean difference a paired t-test detects at two-sided level
        ``alpha`` with probability ``power`` if the differences' true sd were ``sd``
        (`detectable_difference`; ~ 2.80 sd / sqrt(n) for large n). NaN for n < 2.

    NaN entries for a statistic that n < 2 seeds cannot give.
    """
    from scipy import stats as sps

    a, b = _check("x", x), _check("y", y)
    if a.shape != b.shape:
        raise ValueError(f"paired_difference: x and y must hold the same seeds, got shapes {a.shape} and {b.shape}")
    d, n = a - b, a.size
    mean = float(d.mean())
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, n, (reps, n))].mean(1)
    boot = [float(np.quantile(means, (1 - CONFIDENCE) / 2)), float(np.quantile(means, (1 + CONFIDENCE) / 2))]
    sd = float(d.std(ddof=1)) if n > 1 else float("nan")
    half = _t_half_width(n, sd, 0.5 + CONFIDENCE / 2)
    if n < 2:
        t_p = w_p = float("nan")
    elif not np.any(d):
        t_p = w_p = 1.0
    else:
        # all-equal nonzero differences: t is infinite; scipy would warn and give NaN
        t_p = 0.0 if sd == 0 else float(sps.ttest_1samp(d, 0.0).pvalue)
        w_p = float(sps.wilcoxon(d).pvalue)
    return {
        "n": int(n),
        "mean": mean,
        "ci": [mean - half, mean + half],
        "ci_bootstrap": boot,
        "x_mean": float(a.mean()),
        "y_mean": float(b.mean()),
        "sd": sd,
        "t_p": t_p,
        "wilcoxon_p": w_p,
        "detectable": detectable_difference(n, sd, alpha=alpha, power=power),
    }


def one_sample(x: np.ndarray) -> dict[str, float | int | list[float]]:
    """Is the mean of per-seed values ``x`` [n] (e.g. a regression slope per seed) away from 0? ``n``,
    ``mean``, ``sd`` (ddof 1), ``ci`` the 95% t-interval mean +- t_{0.975, n-1} sd / sqrt(n), ``t_p`` its
    two-sided p-value, ``positive`` the count of values above 0, and ``sign_p`` the two-sided exact sign
    test of that count among the nonzero values (binomial, 1/2; smallest value 2 / 2^n), ``detectable`` the
    smallest true mean a two-sided t-test at level 0.05 detects with power 0.8 at this sd
    (`detectable_difference`). NaN where n < 2 seeds cannot give a statistic."""
    from scipy import stats as sps

    v = _check("x", x)
    n, mean = v.size, float(v.mean())
    sd = float(v.std(ddof=1)) if n > 1 else float("nan")
    half = _t_half_width(n, sd, 0.5 + CONFIDENCE / 2)
    if n < 2:
        t_p = float("nan")
    elif sd == 0:
        t_p = 1.0 if mean == 0 else 0.0
    else:
        t_p = float(sps.ttest_1samp(v, 0.0).pvalue)
    positive, nonzero = int((v > 0).sum()), int((v != 0).sum())
    sign_p = float(sps.binomtest(positive, nonzero, 0.5).pvalue) if nonzero else 1.0
    return {
        "n": n,
        "mean": mean,
        "sd": sd,
        "ci": [mean - half, mean + half],
        "t_p": t_p,
        "positive": positive,
        "sign_p": sign_p,
        "detectable": detectable_difference(n, sd),
    }


def non_inferiority(d: np.ndarray, margin: float) -> dict[str, float | int | bool]:
    """Is the true mean of per-seed differences ``d`` [n] (new minus reference, lower is better, e.g. a
    loss) below ``margin`` > 0, i.e. the new arm no worse than the reference by more than the margin?
    A one-sided t-test of H0 mean >= margin against H1 mean < margin: ``n``, ``mean``, ``sd``, ``margin``,
    ``upper`` the one-sided 95% upper bound mean + t_{0.95, n-1} sd / sqrt(n), ``p`` its p-value
    P(T_{n-1} <= (mean - margin) / (sd / sqrt(n))), and ``shown`` (upper < margin, the same as p < 0.05).
    Its resolution at this sd: ``power_at_zero``, the chance of showing it when the true mean is 0, and
    ``largest_shown``, the largest true mean it shows with 80% power (margin less the one-sided
    detectable shift). A two-sided test of mean = 0 cannot show "no worse": failing to reject is not
    evidence of no difference. NaN (and ``shown`` False) for n < 2."""
    from scipy import stats as sps

    v = _check("d", d)
    if isinstance(margin, bool) or not isinstance(margin, numbers.Real) or not np.isfinite(margin) or margin <= 0:
        raise ValueError(f"non_inferiority: margin must be a finite number > 0, got {margin!r}")
    margin = float(margin)
    n, mean = v.size, float(v.mean())
    sd = float(v.std(ddof=1)) if n > 1 else float("nan")
    if n < 2:
        upper = p = power_at_zero = largest = float("nan")
    elif sd == 0:
        upper, p, power_at_zero, largest = mean, (0.0 if mean < margin else 1.0), 1.0, margin
    else:
        se = sd / np.sqrt(n)
        upper = mean + _t_half_width(n, sd, CONFIDENCE)
        p = float(sps.t.cdf((mean - margin) / se, n - 1))
        power_at_zero = float(sps.nct.sf(sps.t.ppf(CONFIDENCE, n - 1), n - 1, margin / se))
        largest = margin - detectable_difference(n, sd, two_sided=False)
    return {
        "n": n,
        "mean": mean,
        "sd": sd,
        "margin": margin,
        "upper": upper,
        "p": p,
        "shown": bool(upper < margin),
        "power_at_zero": power_at_zero,
        "largest_shown": largest,
    }
