"""Do harder tokens get more experts? Regressions of experts used on measured per-token difficulty.

The raw association between the experts a router gives a position and that position's difficulty
(e.g. a reference model's NLL of its target) is confounded by the token itself: some token
identities are both hard on average and routed to many experts for other reasons (frequency, a
router that keys on identity). `token_fixed_effects_slope` compares positions of the same token
identity only:

    y_i = a_{t(i)} + b x_i + e_i,

y_i the experts at position i, x_i its difficulty, a_t one free intercept per token identity t. The
fixed-effects (within) estimator demeans both variables within each identity,
x~_i = x_i - mean_{j: t(j) = t(i)} x_j (likewise y~), and regresses y~ on x~ through the origin:
b = sum x~ y~ / sum x~^2, which by Frisch-Waugh-Lovell equals OLS of y on x and one dummy per
identity. Identities seen once (singletons) carry no within variation and are dropped before
anything is counted (Correia 2015, "Singletons, cluster-robust standard errors and fixed effects").

A second fixed effect, `controls` (e.g. each position's index within its window: a router whose count
depends on position, and a reference NLL that falls along the window, would otherwise give a slope
with no difficulty in it), adds one intercept per level c: y_i = a_{t(i)} + g_{c(i)} + b x_i + e_i.
Two crossed effects have no closed-form demeaning; alternating projections (demean within identity,
then within control level, repeated until nothing moves: Guimaraes & Portugal 2010, the method of
Correia's reghdfe) converge to the residuals of both sets of dummies, and the slope on them is again
OLS with both sets of dummies (Frisch-Waugh-Lovell); k counts identities + control levels - 1 + 1.

Standard error, a sandwich around that regression (Cameron & Miller 2015, "A practitioner's guide to
cluster-robust inference", sections II-III), with e~ = y~ - b x~, n positions and k = identities + 1
parameters:

  - heteroscedasticity-robust (HC1): V = n / (n - k) * sum x~^2 e~^2 / (sum x~^2)^2;
  - clustered by `groups` (CR1, e.g. the sequence of a position, whose positions share a context and
    so correlated errors): V = C / (C - 1) * (n - 1) / (n - k) * sum_c (sum_{i in c} x~ e~)^2 / (sum x~^2)^2
    over the C clusters.

These are the factors of Stata's `areg, vce(robust | cluster)` and statsmodels' OLS with dummies
(cov_type "HC1" / "cluster"), against which the tests check. The 95% interval is b +- t * se with t
the Student quantile on n - k degrees of freedom (HC1) or C - 1 (clustered).

Everything here is host-side numpy over already collected arrays, e.g. per-position experts [G, N]
from `RouteOutput` stats and difficulties [N] from a reference model's evaluation.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy import stats as sps

CONFIDENCE = 0.95


class SlopeResult(NamedTuple):
    """`token_fixed_effects_slope`'s estimate: experts per unit of difficulty, within token identity."""

    slope: float  # b, the within-identity slope of experts on difficulty
    se: float  # robust (HC1) or cluster-robust (CR1) standard error of b
    ci: tuple[float, float]  # 95% interval, b -+ t * se
    num_tokens: int  # positions used: those of identities seen at least twice
    num_identities: int  # token identities used (each seen at least twice)
    num_clusters: int | None  # clusters among the positions used; None when not clustered
    pooled_slope: float  # OLS slope of experts on difficulty without identity effects, same positions
    num_control_levels: int | None = None  # levels of the second fixed effect used; None without one


class Bins(NamedTuple):
    """`binned`'s summary: B equal-count bins of within-identity difficulty, on the original scales."""

    difficulty: np.ndarray  # [B] float64, mean difficulty of a bin (x~ + mean x)
    experts: np.ndarray  # [B] float64, mean experts of a bin (y~ + mean y)
    experts_se: np.ndarray  # [B] float64, standard error of `experts` (std of y~ in the bin / sqrt(count))
    count: np.ndarray  # [B] int64, positions in a bin


class _Within(NamedTuple):
    x: np.ndarray  # [n] demeaned difficulty
    y: np.ndarray  # [n] or [G, n] demeaned experts
    x_mean: float  # mean difficulty of the positions kept
    y_mean: np.ndarray  # [] or [G] mean experts of the positions kept
    keep: np.ndarray  # [N] bool, positions of identities (and control levels) seen at least twice
    num_identities: int
    num_control_levels: int | None  # None without a second fixed effect


def _check(counts: np.ndarray, difficulty: np.ndarray, token_ids: np.ndarray, groups, counts_ndim: int, controls=None):
    """The inputs as float64 / integer-coded arrays, or ValueError naming the first problem."""
    counts, difficulty, token_ids = np.asarray(counts), np.asarray(difficulty), np.asarray(token_ids)
    if counts.ndim != counts_ndim:
        want = "[N]" if counts_ndim == 1 else "[G, N]"
        raise ValueError(f"counts must be {want}, got shape {counts.shape}")
    n = counts.shape[-1]
    named = {"difficulty": difficulty, "token_ids": token_ids}
    if groups is not None:
        named["groups"] = groups = np.asarray(groups)
    if controls is not None:
        named["controls"] = controls = np.asarray(controls)
    for name, a in named.items():
        if a.shape != (n,):
            raise ValueError(f"{name} must be [N] with N = {n} as counts [..., N], got shape {a.shape}")
    for name, a in {"counts": counts, "difficulty": difficulty}.items():
        if not np.issubdtype(a.dtype, np.number) or np.issubdtype(a.dtype, np.complexfloating):
            raise ValueError(f"{name} must be real numbers, got dtype {a.dtype}")
        bad = int(np.size(a) - np.isfinite(a).sum())
        if bad:
            raise ValueError(f"{name} has {bad} non-finite value(s) (NaN or inf)")
    for name in ("token_ids", "groups", "controls"):
        a = named.get(name)
        if a is not None and not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"{name} must be integers, got dtype {a.dtype}")
    return counts.astype(np.float64), difficulty.astype(np.float64), token_ids, groups, controls


def _drop_singletons(factors: list[np.ndarray]) -> np.ndarray:
    """[N] bool: positions left once every level of every factor [N] seen once is dropped (repeatedly,
    as dropping a singleton of one factor can leave one of another)."""
    keep = np.ones(factors[0].shape, bool)
    while True:
        ok = keep.copy()
        for f in factors:
            _, inverse, sizes = np.unique(f[keep], return_inverse=True, return_counts=True)
            ok[keep] &= sizes[inverse] >= 2
        if np.array_equal(ok, keep):
            return keep
        keep = ok


def _demean(v: np.ndarray, codes: list[np.ndarray], tol: float = 1e-12, max_sweeps: int = 10_000) -> np.ndarray:
    """Rows of v [R, n] less their projection on the dummies of every factor in ``codes`` ([n] codes
    0..L-1): one pass for one factor, alternating projections to convergence for more."""
    sizes = [np.bincount(c).astype(np.float64) for c in codes]
    scale = max(float(np.abs(v).max()), 1e-300)
    for _ in range(max_sweeps):
        before = v
        for c, n in zip(codes, sizes):
            means = np.stack([np.bincount(c, weights=row, minlength=n.size) / n for row in v])
            v = v - means[:, c]
        if len(codes) == 1 or float(np.abs(v - before).max()) <= tol * scale:
            return v
    raise ValueError(f"demeaning by {len(codes)} fixed effects did not converge in {max_sweeps} sweeps")


def _within(counts: np.ndarray, difficulty: np.ndarray, token_ids: np.ndarray, controls=None) -> _Within:
    """Drop singleton identities (and control levels) and demean difficulty [N] and counts [..., N]
    within identity, and within control level when ``controls`` [N] is given."""
    factors = [token_ids] if controls is None else [token_ids, controls]
    keep = _drop_singletons(factors)
    if not keep.any():
        raise ValueError("no token identity occurs twice: the fixed-effects slope has no within-token variation")
    codes = [np.unique(f[keep], return_inverse=True)[1] for f in factors]
    x, y = difficulty[keep], counts[..., keep]
    rows = np.concatenate([x[None], y.reshape(-1, y.shape[-1])])
    out = _demean(rows, codes)
    levels = [int(c.max()) + 1 for c in codes]
    return _Within(
        out[0],
        out[1:].reshape(y.shape),
        float(x.mean()),
        y.mean(-1),
        keep,
        levels[0],
        None if controls is None else levels[1],
    )


def _slope(x: np.ndarray, y: np.ndarray, x_raw: np.ndarray, y_raw: np.ndarray, w: _Within, clusters):
    """SlopeResult of demeaned y [n] on demeaned x [n]; clusters [n] integer codes or None."""
    num_identities = w.num_identities
    n, k = x.size, num_identities + (w.num_control_levels or 1)
    sxx = float(x @ x)
    if sxx <= 1e-12 * max(float(x_raw @ x_raw), 1e-300):
        raise ValueError("difficulty is constant within every token identity: no within-token variation to regress on")
    if n <= k:
        raise ValueError(f"{n} positions of {num_identities} identities leave no residual degrees of freedom")
    b = float(x @ y) / sxx
    e = y - b * x
    if clusters is None:
        meat, factor, dof, num_clusters = float((x * x) @ (e * e)), n / (n - k), n - k, None
    else:
        _, codes = np.unique(clusters, return_inverse=True)
        num_clusters = int(codes.max()) + 1
        if num_clusters < 2:
            raise ValueError("groups put every position used in one cluster; a clustered error needs >= 2")
        scores = np.bincount(codes, weights=x * e, minlength=num_clusters)
        meat = float(scores @ scores)
        factor, dof = num_clusters / (num_clusters - 1) * (n - 1) / (n - k), num_clusters - 1
    se = float(np.sqrt(factor * meat) / sxx)
    half = float(sps.t.ppf(0.5 + CONFIDENCE / 2, dof)) * se
    xc = x_raw - x_raw.mean()
    pooled = float(xc @ (y_raw - y_raw.mean()) / (xc @ xc)) if xc @ xc > 0 else float("nan")
    return SlopeResult(b, se, (b - half, b + half), n, num_identities, num_clusters, pooled, w.num_control_levels)


def token_fixed_effects_slope(
    counts: np.ndarray,
    difficulty: np.ndarray,
    token_ids: np.ndarray,
    *,
    groups: np.ndarray | None = None,
    controls: np.ndarray | None = None,
) -> SlopeResult:
    """The slope of experts on difficulty within token identity (see the module docstring).

    Args:
      counts: [N] experts used at each position (one layer), any real dtype.
      difficulty: [N] difficulty of each position, e.g. a reference model's NLL of its target.
      token_ids: [N] integer identity of each position's token (the input token, or the target,
        whichever the question holds fixed).
      groups: optional [N] integer cluster of each position (e.g. its sequence index); the
        standard error is then clustered by it, else heteroscedasticity-robust.
      controls: optional [N] integer level of a second fixed effect (e.g. the position's index within
        its sequence), absorbed beside the identities.

    Returns:
      SlopeResult: slope, se, 95% ci, the positions, identities (and clusters, control levels) used
      after dropping singletons, and the pooled slope without fixed effects for comparison.

    Raises ValueError (one line) on shapes, dtypes, NaN/inf, or data with no within-identity
    variation in difficulty.
    """
    counts, difficulty, token_ids, groups, controls = _check(counts, difficulty, token_ids, groups, 1, controls)
    w = _within(counts, difficulty, token_ids, controls)
    clusters = None if groups is None else groups[w.keep]
    return _slope(w.x, w.y, difficulty[w.keep], counts[w.keep], w, clusters)


def per_layer(
    counts: np.ndarray,
    difficulty: np.ndarray,
    token_ids: np.ndarray,
    *,
    groups: np.ndarray | None = None,
    controls: np.ndarray | None = None,
) -> list[SlopeResult]:
    """`token_fixed_effects_slope` for every layer of counts [G, N] (experts per position per layer)
    against the same difficulty [N], token_ids [N], groups [N] and controls [N]: G results, layer order."""
    counts, difficulty, token_ids, groups, controls = _check(counts, difficulty, token_ids, groups, 2, controls)
    w = _within(counts, difficulty, token_ids, controls)
    clusters = None if groups is None else groups[w.keep]
    x_raw = difficulty[w.keep]
    return [_slope(w.x, y, x_raw, raw[w.keep], w, clusters) for y, raw in zip(w.y, counts)]


def binned(counts: np.ndarray, difficulty: np.ndarray, token_ids: np.ndarray, num_bins: int = 10) -> Bins:
    """Mean experts by bin of within-identity difficulty, for a plot ("binscatter" with identity
    effects absorbed).

    Both variables are demeaned within token identity (singletons dropped, as in
    `token_fixed_effects_slope`) and the overall means of the positions kept added back, so the bins
    are on the original scales; positions are then split by rank of demeaned difficulty into
    `num_bins` bins of equal count (sizes differ by at most one; ties split in input order). A line
    through the bin means has about the fixed-effects slope.

    Args:
      counts: [N] experts used at each position (one layer).
      difficulty: [N] difficulty of each position.
      token_ids: [N] integer identity of each position's token.
      num_bins: B, e.g. 10 for deciles; at most the number of positions kept.

    Returns:
      Bins of [B] arrays, lowest difficulty first.
    """
    counts, difficulty, token_ids, _, _ = _check(counts, difficulty, token_ids, None, 1)
    w = _within(counts, difficulty, token_ids)
    n = w.x.size
    if not 1 <= num_bins <= n:
        raise ValueError(f"num_bins must be in [1, {n}] (the positions of identities seen twice), got {num_bins}")
    rank = np.empty(n, np.int64)
    rank[np.argsort(w.x, kind="stable")] = np.arange(n)
    bins = rank * num_bins // n
    count = np.bincount(bins, minlength=num_bins)
    mean = lambda v: np.bincount(bins, weights=v, minlength=num_bins) / count
    experts = mean(w.y)
    spread = mean(w.y * w.y) - experts**2
    se = np.sqrt(np.maximum(spread, 0.0) * count / np.maximum(count - 1, 1) / count)
    return Bins(mean(w.x) + w.x_mean, experts + float(w.y_mean), se, count)
