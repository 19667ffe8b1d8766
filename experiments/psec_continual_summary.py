"""The sweep's ablation tables and their plot, built from the committed results of
``experiments.psec_continual_sweep`` (one JSON per run in ``experiments/results/psec_continual``).

    python -m experiments.psec_continual_sweep summary   # prints the tables, writes summary.png

Each table and plot panel appears once at least two of its runs are finished; every cell is the
run's own mean and rliable 95% interval over seeds, P(row > scratch) across runs from their per-seed
returns (the runs share seeds and evaluation start states).
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path("experiments/results/psec_continual")


def load(results: Path = RESULTS) -> dict[str, dict]:
    """Run name -> its results JSON, for every finished run in ``results``."""
    return {p.stem: json.loads(p.read_text()) for p in sorted(results.glob("*.json")) if p.stem != "expansion_cost"}


def _row(saved: dict, method: str) -> str:
    r = saved["methods"][method]
    return (f"{r['return']:.0f} [{r['return_ci'][0]:.0f}, {r['return_ci'][1]:.0f}] | "
            f"{r['return_iqm']:.0f} [{r['return_iqm_ci'][0]:.0f}, {r['return_iqm_ci'][1]:.0f}]")


ORDER = ("scratch", "asec", "nsec", "psec_mlp", "psec_fixed", "psec")  # the paper's table


def _fmt_p(p: dict | None) -> str:
    return f"{p['p']:.2f} [{p['ci'][0]:.2f}, {p['ci'][1]:.2f}]" if p else "-"


def _p(saved: dict, method: str) -> str:
    return _fmt_p(saved.get("improvement", {}).get(f"psec>{method}"))


def _p_across(saved: dict, method: str, other: dict, against: str = "scratch") -> str:
    """P(``method`` of run ``saved`` > ``against`` of run ``other``) from their per-seed returns: the runs
    share seeds and evaluation start states, so their seeds compare as within one table."""
    from psec_jax.rl import report

    rows = {"x": saved["methods"][method], "y": other["methods"][against]}
    return _fmt_p(report.improvements(rows, [("x", "y")], reps=other["config"]["eval"]["bootstrap_reps"]).get("x>y"))


def _task_tables(done: dict) -> list[str]:
    """One table per task: every method, the paper and default protocols side by side."""
    out = []
    for short, title in (("s2w", "stand -> walk"), ("s2r", "stand -> run"), ("sw2r", "stand + walk -> run")):
        got = [(p, done[f"{short}_{p}"]) for p in ("paper", "default") if f"{short}_{p}" in done]
        if got:
            out += [f"#### {title}: return, mean [95% CI] | IQM [95% CI] over seeds | P(PSEC > method)", "",
                    "| method | " + " | ".join(f"{p} protocol mean | IQM | P(PSEC >)" for p, _ in got) + " |",
                    "|---|" + "---|---|---|" * len(got)]
            for m in [m for m in ORDER if m in got[0][1]["methods"]]:
                out.append(f"| {m} | " + " | ".join(f"{_row(s, m)} | {_p(s, m)}" for _, s in got) + " |")
            out.append("")
    return out


def _data_tables(done: dict) -> list[str]:
    """Scratch and PSEC vs the number of target trajectories, per protocol (10 = the s2w run)."""
    out = []
    for protocol in ("paper", "default"):
        rows = [(n, done.get(f"data{n}_{protocol}" if n != 10 else f"s2w_{protocol}")) for n in (1, 3, 10, 30, 50, 100)]
        rows = [(n, s) for n, s in rows if s is not None]
        if len(rows) > 1:
            out += [f"#### target data, {protocol} protocol (stand -> walk)", "",
                    "| trajectories | scratch mean | IQM | PSEC mean | IQM | P(PSEC > scratch) |", "|---|---|---|---|---|---|"]
            out += [f"| {n} | {_row(s, 'scratch')} | {_row(s, 'psec')} | {_p(s, 'scratch')} |" for n, s in rows]
            out.append("")
    return out


def _rank_table(done: dict) -> list[str]:
    """PSEC vs LoRA rank under the paper protocol (8 = the s2w run)."""
    ranks = [(r, done.get(f"rank{r}_paper" if r != 8 else "s2w_paper")) for r in (4, 8, 16, 32)]
    if sum(s is not None for _, s in ranks) < 2:
        return []
    s2w = done.get("s2w_paper")
    return ["#### LoRA rank, paper protocol (stand -> walk)", "",
            "| rank | PSEC mean | IQM | P(PSEC > scratch) |", "|---|---|---|---|",
            *[f"| {r} | {_row(s, 'psec')} | {_p_across(s, 'psec', s2w) if s2w else '-'} |" for r, s in ranks if s is not None],
            ""]


def _regulariser_table(done: dict) -> list[str]:
    """Fixed weights vs the context composer with and without its alpha regulariser (the same skill)."""
    if "noreg_paper" not in done or "s2w_paper" not in done:
        return []
    s2w, noreg = done["s2w_paper"], done["noreg_paper"]
    return ["#### composer alpha regulariser, paper protocol (stand -> walk; the same skill in every row)", "",
            "| composition | mean | IQM | P(row > scratch) |", "|---|---|---|---|",
            f"| fixed weight (no composer) | {_row(s2w, 'psec_fixed')} | {_p_across(s2w, 'psec_fixed', s2w)} |",
            f"| context composer, alpha_reg 1 (official) | {_row(s2w, 'psec')} | {_p_across(s2w, 'psec', s2w)} |",
            f"| context composer, alpha_reg 0 | {_row(noreg, 'psec')} | {_p_across(noreg, 'psec', s2w)} |", ""]


def _steps_table(done: dict) -> list[str]:
    """Return vs gradient steps of the new skill (make demo is the 2000-step point for scratch and PSEC:
    the same pi_0, config and seeds)."""
    runs_at = {1000: done.get("steps1000_paper"), 2000: done.get("steps2000_paper") or done.get("demo"),
               6000: done.get("s2w_paper")}
    curve = [(k, s) for k, s in runs_at.items() if s is not None]
    if len(curve) < 2:
        return []
    ms = ("scratch", "psec_mlp", "psec_fixed", "psec")

    def cell(s: dict, m: str) -> str:
        return "{:.0f} [{:.0f}, {:.0f}]".format(s["methods"][m]["return"], *s["methods"][m]["return_ci"]) \
            if m in s["methods"] else "-"

    return ["#### return vs gradient steps of the new skill, paper protocol (stand -> walk)", "",
            "| steps | " + " | ".join(f"{m} mean [95% CI]" for m in ms) + " |", "|---|" + "---|" * len(ms),
            *[f"| {k} | " + " | ".join(cell(s, m) for m in ms) + " |" for k, s in curve], ""]


def _norm_pi0_table(done: dict) -> list[str]:
    """Observation normalisation x pi_0 strength, each cell against the scratch of its normalisation
    (scratch does not depend on pi_0)."""
    cells = {("raw", "strong"): "s2w_paper", ("norm", "strong"): "norm_strong_paper",
             ("raw", "weak"): "raw_weak_paper", ("norm", "weak"): "norm_weak_paper"}
    if sum(v in done for v in cells.values()) < 2:
        return []
    scratch = {"raw": done.get("s2w_paper"), "norm": done.get("norm_strong_paper")}
    out = ["#### observation normalisation x pi_0 strength (paper protocol otherwise; stand -> walk)", "",
           "| observations | pi_0 | scratch mean | IQM | PSEC-fixed mean | IQM | P(fixed > scratch) "
           "| PSEC mean | IQM | P(PSEC > scratch) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for (obs, pi0), name in cells.items():
        if name in done and scratch[obs] is not None:
            s = done[name]
            fixed = (f"{_row(s, 'psec_fixed')} | {_p_across(s, 'psec_fixed', scratch[obs])}"
                     if "psec_fixed" in s["methods"] else "- | - | -")
            out.append(f"| {obs} | {pi0} | {_row(scratch[obs], 'scratch')} | {fixed} | {_row(s, 'psec')} | "
                       f"{_p_across(s, 'psec', scratch[obs])} |")
    return out + [""]


def summary(results: Path = RESULTS) -> str:
    """Markdown tables of every finished run in ``results``: the method tables side by side per task,
    and each ablation as one table (runs not yet made are left out)."""
    done = load(results)
    tables = (_task_tables, _data_tables, _rank_table, _regulariser_table, _steps_table, _norm_pi0_table)
    return "\n".join(line for table in tables for line in table(done))


def _ci(s: dict | None, method: str) -> tuple[float, float, float] | None:
    """(mean, low, high) of ``method`` in run ``s``, or None where the run or method is missing."""
    if s is None or method not in s["methods"]:
        return None
    r = s["methods"][method]
    return r["return"], r["return_ci"][0], r["return_ci"][1]


def _lines(ax, xs: list, runs: list, methods: tuple[str, ...]) -> None:
    """One line per method over ``xs`` (runs[i] made at xs[i]), its 95% interval as whiskers."""
    for m in methods:
        pts = [(x, c) for x, s in zip(xs, runs) if (c := _ci(s, m)) is not None]
        if pts:
            mean = [c[0] for _, c in pts]
            err = [[c[0] - c[1] for _, c in pts], [c[2] - c[0] for _, c in pts]]
            ax.errorbar([x for x, _ in pts], mean, yerr=err, fmt="o-", capsize=4, label=m)


def plot(done: dict, path: Path) -> bool:
    """Writes the ablations with at least two finished runs to ``path`` as one figure (mean, 95% CI
    whiskers); False (nothing written) when there are none."""
    data = {p: [(n, done.get(f"data{n}_{p}" if n != 10 else f"s2w_{p}")) for n in (1, 3, 10, 30, 50, 100)]
            for p in ("paper", "default")}
    ranks = [(r, done.get(f"rank{r}_paper" if r != 8 else "s2w_paper")) for r in (4, 8, 16, 32)]
    steps = [(1000, done.get("steps1000_paper")), (2000, done.get("steps2000_paper") or done.get("demo")),
             (6000, done.get("s2w_paper"))]
    panels = [(f"target data, {p} protocol", "target trajectories", rows, ("scratch", "psec"), True)
              for p, rows in data.items()]
    panels += [("LoRA rank, paper protocol", "rank", ranks, ("psec",), True),
               ("gradient steps of the new skill, paper", "steps", steps,
                ("scratch", "psec_mlp", "psec_fixed", "psec"), False)]
    panels = [(t, xl, [(x, s) for x, s in rows if s is not None], ms, log) for t, xl, rows, ms, log in panels]
    panels = [p for p in panels if len(p[2]) > 1]
    if not panels:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, (title, xlabel, rows, methods, log) in zip(axes[0], panels):
        _lines(ax, [x for x, _ in rows], [s for _, s in rows], methods)
        if log:
            ax.set_xscale("log")
        ax.set_xticks([x for x, _ in rows], [str(x) for x, _ in rows])
        ax.minorticks_off()
        ax.set(title=title, xlabel=xlabel, ylabel="walker return (mean, 95% CI)")
        ax.legend(fontsize=8)
    fig.suptitle("PSEC continual ablations (stand -> walk), 5 seeds x 10 episodes per point")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
