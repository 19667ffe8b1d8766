"""Results of an evaluation as JSON, a markdown table and a bar plot in the workdir, with rliable's
95% intervals over seeds (``psec_jax.stats``)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from psec_jax import runs, stats


def summarize(
    results: Mapping[str, Mapping[str, Any]],
    normalizers: Mapping[str, float] | None = None,
    offsets: Mapping[str, float] | None = None,
    *,
    reps: int = stats.REPS,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Per method and field ("return", "cost"): the per-seed scores (each the mean over that seed's
    episodes; ``results[m][field]`` is [seeds, episodes]) as ``{field}_per_seed``, their mean and std,
    the split of their variance between seeds and episodes (``{field}_variance``,
    ``stats.variance_split``; with >= 2 seeds and episodes), and with ``reps`` > 0 rliable's 95%
    stratified-bootstrap intervals of the mean (``{field}_ci``) and
    the interquartile mean (``{field}_iqm``, ``{field}_iqm_ci``). ``normalizers`` / ``offsets``:
    optional ``{"return": ..., "cost": ...}``; each per-seed score becomes ``(x - offset) / scale``
    first (e.g. normalised scores, see ``reference_normalization``)."""
    normalizers, offsets = normalizers or {}, offsets or {}
    out: dict[str, dict[str, Any]] = {name: {} for name in results}
    for field in ("return", "cost"):
        per_seed = {
            name: (np.asarray(r[field], np.float64).mean(axis=-1) - offsets.get(field, 0.0))
            / normalizers.get(field, 1.0)
            for name, r in results.items()
        }
        est = stats.intervals(per_seed, reps=reps, seed=seed) if reps else {}
        for name, x in per_seed.items():
            row = out[name]
            row[field], row[f"{field}_std"] = float(x.mean()), float(x.std())
            row[f"{field}_per_seed"] = [float(v) for v in x]
            episodes = (np.asarray(results[name][field], np.float64) - offsets.get(field, 0.0)) / normalizers.get(
                field, 1.0
            )
            if episodes.ndim == 2 and min(episodes.shape) >= 2:
                row[f"{field}_variance"] = stats.variance_split(episodes)
            if name in est:
                row[f"{field}_ci"] = est[name]["mean_ci"]
                row[f"{field}_iqm"], row[f"{field}_iqm_ci"] = est[name]["iqm"], est[name]["iqm_ci"]
    return out


def improvements(
    summary: Mapping[str, Mapping[str, Any]],
    pairs: list[tuple[str, str]],
    field: str = "return",
    *,
    reps: int = stats.REPS,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """``{"x>y": {"p", "ci", "rank_p", "separated"}}`` for the pairs whose methods are both in
    ``summary``: rliable's probability that a seed of x scores above a seed of y on ``field`` (of
    ``summarize``'s per-seed scores) with its bootstrap interval, and the two-sided Mann-Whitney p-value
    of the same per-seed scores (``stats.rank_test``, exact without ties) with its complete-separation
    flag (where the interval [0, 0] or [1, 1] says only that, not a 95% bound)."""
    pairs = [(x, y) for x, y in pairs if x in summary and y in summary]
    per_seed = {m: np.asarray(summary[m][f"{field}_per_seed"]) for m in {*sum(pairs, ())}}
    if not reps:
        return {}
    out = stats.probability_of_improvement(per_seed, pairs, reps=reps, seed=seed)
    for x, y in pairs:
        test = stats.rank_test(per_seed[x], per_seed[y])
        out[f"{x}>{y}"].update(rank_p=test["p"], rank_exact=test["exact"], separated=test["separated"])
    return out


def improvement_lines(improvement: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The markdown table of ``improvements`` and, where a pair is completely separated, the sentence
    saying what its interval means."""
    lines = [
        "| probability of improvement (per seed, on the first column) | P [95% CI] | Mann-Whitney p |",
        "|---|---|---|",
    ]
    for k, v in improvement.items():
        rank = (f"{v['rank_p']:.2g}" + ("" if v.get("rank_exact", True) else " (approx.)")) if "rank_p" in v else "-"
        lines.append(f"| P({k.replace('>', ' > ')}) | {v['p']:.2f} [{v['ci'][0]:.2f}, {v['ci'][1]:.2f}] | {rank} |")
    separated = [k.replace(">", " > ") for k, v in improvement.items() if v.get("separated")]
    if separated:
        lines += [
            "",
            f"Complete separation in {', '.join(f'P({k})' for k in separated)}: every seed of one method "
            "scores above every seed of the other, so the bootstrap interval collapses to [0, 0] or [1, 1]; "
            "that is the separation, not a 95% bound. The Mann-Whitney p-value is the evidence.",
        ]
    return lines


def reference_normalization(
    reference: tuple[float, float], episode_length: int, *, reference_length: int = 1000, scale: float = 1.0
) -> tuple[float, float]:
    """``(offset, normalizer)`` for ``summarize`` giving ``scale * (R - random) / (expert - random)``.

    ``reference``: (random, expert) returns of ``reference_length``-step episodes (e.g. from
    ``scores.policy_references()``); they are scaled linearly to ``episode_length``-step episodes, so
    a shortened evaluation is compared per step (exact when the lengths are equal). ``scale`` 100
    gives D4RL-style scores, 1 DSRL-style normalised rewards."""
    random, expert = (float(x) * episode_length / reference_length for x in reference)
    if not (np.isfinite(random) and np.isfinite(expert)) or random == expert:
        raise ValueError(f"bad reference returns (random={reference[0]}, expert={reference[1]})")
    return random, (expert - random) / scale


def _cell(x: float, ci: list[float] | None = None) -> str:
    fmt = (lambda v: f"{v:.1f}") if abs(x) >= 10 else (lambda v: f"{v:.3f}")
    return fmt(x) + (f" [{fmt(ci[0])}, {fmt(ci[1])}]" if ci else "")


def write(
    workdir: str | os.PathLike,
    summary: Mapping[str, Mapping[str, Any]],
    *,
    title: str,
    fields: tuple[str, ...] = ("return",),
    extra: Mapping[str, Any] | None = None,
    labels: Mapping[str, str] | None = None,
    note: str = "",
    improvement: Mapping[str, Mapping[str, Any]] | None = None,
) -> str:
    """Writes ``results.json``, ``results.md`` (the table, then ``note``) and ``results.png``; returns
    the markdown table: per field the mean and IQM over seeds with their 95% intervals (when
    ``summarize`` computed them) and the per-seed scores; then ``improvement`` (``improvements``) if
    given. ``labels``: optional display names of ``fields`` (table header and plot axes)."""
    workdir = Path(workdir)
    runs.write_json_atomic(
        workdir / "results.json",
        {"title": title, "methods": summary, **({"improvement": improvement} if improvement else {}), **(extra or {})},
    )
    label = lambda f: (labels or {}).get(f, f)
    has_ci = all(f"{f}_ci" in row for row in summary.values() for f in fields)
    cols = [
        f"{label(f)} mean [95% CI]"
        + (f" | {label(f)} IQM [95% CI]" if has_ci else " ± std")
        + f" | {label(f)} per seed"
        for f in fields
    ]
    lines = [
        f"### {title}",
        "",
        "| method | " + " | ".join(cols) + " |",
        "|" + "---|" * (1 + (3 if has_ci else 2) * len(fields)),
    ]
    for name, row in summary.items():
        cells = []
        for f in fields:
            if has_ci:
                cells += [_cell(row[f], row[f"{f}_ci"]), _cell(row[f"{f}_iqm"], row[f"{f}_iqm_ci"])]
            else:
                cells.append(f"{_cell(row[f])} ± {_cell(row[f + '_std'])}")
            cells.append(", ".join(f"{x:.3g}" for x in row[f"{f}_per_seed"]))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if improvement:
        lines += ["", *improvement_lines(improvement)]
    table = "\n".join(lines) + "\n"
    (workdir / "results.md").write_text(table + note)
    _plot(workdir / "results.png", summary, fields, title, label)
    return table


def _plot(
    path: Path, summary: Mapping[str, Mapping[str, Any]], fields: tuple[str, ...], title: str, label: Any = str
) -> None:
    """Bars: the mean over seeds, whiskers its 95% interval (or the std without one), dots the seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary)
    fig, axes = plt.subplots(1, len(fields), figsize=(1.4 * len(names) + 2, 3.5), squeeze=False)
    for ax, f in zip(axes[0], fields):
        mean = np.array([summary[n][f] for n in names])
        if all(f"{f}_ci" in summary[n] for n in names):
            ci = np.array([summary[n][f"{f}_ci"] for n in names])
            err = np.stack([mean - ci[:, 0], ci[:, 1] - mean])
        else:
            err = np.array([summary[n][f + "_std"] for n in names])
        ax.bar(names, mean, yerr=err, capsize=4, alpha=0.7)
        for i, n in enumerate(names):
            seeds = summary[n][f"{f}_per_seed"]
            ax.plot([i] * len(seeds), seeds, "k.", ms=4)
        ax.set_ylabel(label(f) + " (mean, 95% CI)")
        ax.tick_params(axis="x", rotation=30)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
