"""Results of an evaluation as JSON, a markdown table and a bar plot in the workdir."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from psec_jax import runs


def summarize(results: Mapping[str, Mapping[str, Any]], normalizers: Mapping[str, float] | None = None,
              offsets: Mapping[str, float] | None = None) -> dict[str, dict[str, Any]]:
    """Per method: mean and std over seeds of the per-seed mean return (and cost), plus the raw
    per-seed means. ``results[m]["return"]`` is [seeds, episodes]. ``normalizers`` / ``offsets``:
    optional ``{"return": ..., "cost": ...}``; each per-seed mean becomes ``(x - offset) / scale``
    before averaging (e.g. normalised scores, see ``reference_normalization``)."""
    normalizers, offsets = normalizers or {}, offsets or {}
    out = {}
    for name, r in results.items():
        row = {}
        for field in ("return", "cost"):
            per_seed = ((np.asarray(r[field], np.float64).mean(axis=-1) - offsets.get(field, 0.0))
                        / normalizers.get(field, 1.0))
            row[field] = float(per_seed.mean())
            row[f"{field}_std"] = float(per_seed.std())
            row[f"{field}_per_seed"] = [float(x) for x in per_seed]
        out[name] = row
    return out


def reference_normalization(reference: tuple[float, float], episode_length: int, *,
                            reference_length: int = 1000, scale: float = 1.0) -> tuple[float, float]:
    """``(offset, normalizer)`` for ``summarize`` giving ``scale * (R - random) / (expert - random)``.

    ``reference``: (random, expert) returns of ``reference_length``-step episodes (e.g. from
    ``scores.policy_references()``); they are scaled linearly to ``episode_length``-step episodes, so
    a shortened evaluation is compared per step (exact when the lengths are equal). ``scale`` 100
    gives D4RL-style scores, 1 DSRL-style normalised rewards."""
    random, expert = (float(x) * episode_length / reference_length for x in reference)
    if not (np.isfinite(random) and np.isfinite(expert)) or random == expert:
        raise ValueError(f"bad reference returns (random={reference[0]}, expert={reference[1]})")
    return random, (expert - random) / scale


def write(workdir: str | os.PathLike, summary: Mapping[str, Mapping[str, Any]], *, title: str,
          fields: tuple[str, ...] = ("return",), extra: Mapping[str, Any] | None = None,
          labels: Mapping[str, str] | None = None, note: str = "") -> str:
    """Writes ``results.json``, ``results.md`` (the table, then ``note``) and ``results.png``; returns
    the markdown table. ``labels``: optional display names of ``fields`` (table header and plot axes)."""
    workdir = Path(workdir)
    runs.write_json_atomic(workdir / "results.json", {"title": title, "methods": summary, **(extra or {})})
    label = lambda f: (labels or {}).get(f, f)
    header = "| method | " + " | ".join(f"{label(f)} (mean ± std over seeds) | {label(f)} per seed"
                                        for f in fields) + " |"
    lines = [f"### {title}", "", header, "|" + "---|" * (1 + 2 * len(fields))]
    for name, row in summary.items():
        cells = []
        for f in fields:
            cells.append(f"{row[f]:.1f} ± {row[f + '_std']:.1f}" if abs(row[f]) >= 10 else
                         f"{row[f]:.3f} ± {row[f + '_std']:.3f}")
            cells.append(", ".join(f"{x:.3g}" for x in row[f"{f}_per_seed"]))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    table = "\n".join(lines) + "\n"
    (workdir / "results.md").write_text(table + note)
    _plot(workdir / "results.png", summary, fields, title, label)
    return table


def _plot(path: Path, summary: Mapping[str, Mapping[str, Any]], fields: tuple[str, ...], title: str,
          label: Any = str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary)
    fig, axes = plt.subplots(1, len(fields), figsize=(1.4 * len(names) + 2, 3.5), squeeze=False)
    for ax, f in zip(axes[0], fields):
        ax.bar(names, [summary[n][f] for n in names], yerr=[summary[n][f + "_std"] for n in names], capsize=4)
        ax.set_ylabel(label(f))
        ax.tick_params(axis="x", rotation=30)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
