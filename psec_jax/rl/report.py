"""Results of an evaluation as JSON, a markdown table and a bar plot in the workdir."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from psec_jax import runs


def summarize(results: Mapping[str, Mapping[str, Any]], normalizers: Mapping[str, float] | None = None
              ) -> dict[str, dict[str, Any]]:
    """Per method: mean and std over seeds of the per-seed mean return (and cost), plus the raw
    per-seed means. ``results[m]["return"]`` is [seeds, episodes]. ``normalizers``: optional
    ``{"return": scale, "cost": scale}`` applied before averaging (e.g. normalised scores)."""
    normalizers = normalizers or {}
    out = {}
    for name, r in results.items():
        row = {}
        for field in ("return", "cost"):
            per_seed = np.asarray(r[field], np.float64).mean(axis=-1) / normalizers.get(field, 1.0)
            row[field] = float(per_seed.mean())
            row[f"{field}_std"] = float(per_seed.std())
            row[f"{field}_per_seed"] = [float(x) for x in per_seed]
        out[name] = row
    return out


def write(workdir: str | os.PathLike, summary: Mapping[str, Mapping[str, Any]], *, title: str,
          fields: tuple[str, ...] = ("return",), extra: Mapping[str, Any] | None = None) -> str:
    """Writes ``results.json``, ``results.md`` and ``results.png``; returns the markdown table."""
    workdir = Path(workdir)
    runs.write_json_atomic(workdir / "results.json", {"title": title, "methods": summary, **(extra or {})})
    header = "| method | " + " | ".join(f"{f} (mean ± std over seeds) | {f} per seed" for f in fields) + " |"
    lines = [f"### {title}", "", header, "|" + "---|" * (1 + 2 * len(fields))]
    for name, row in summary.items():
        cells = []
        for f in fields:
            cells.append(f"{row[f]:.1f} ± {row[f + '_std']:.1f}" if abs(row[f]) >= 10 else
                         f"{row[f]:.3f} ± {row[f + '_std']:.3f}")
            cells.append(", ".join(f"{x:.3g}" for x in row[f"{f}_per_seed"]))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    table = "\n".join(lines) + "\n"
    (workdir / "results.md").write_text(table)
    _plot(workdir / "results.png", summary, fields, title)
    return table


def _plot(path: Path, summary: Mapping[str, Mapping[str, Any]], fields: tuple[str, ...], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary)
    fig, axes = plt.subplots(1, len(fields), figsize=(1.4 * len(names) + 2, 3.5), squeeze=False)
    for ax, f in zip(axes[0], fields):
        ax.bar(names, [summary[n][f] for n in names], yerr=[summary[n][f + "_std"] for n in names], capsize=4)
        ax.set_ylabel(f)
        ax.tick_params(axis="x", rotation=30)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
