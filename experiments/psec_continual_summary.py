"""The sweep's tables and ablation plot, built from the committed results of
``experiments.psec_continual_sweep`` (one JSON per run in ``experiments/results/psec_continual``).

    python -m experiments.psec_continual_sweep summary   # prints the tables, writes summary.png

A task table appears once one of its runs is finished, an ablation table or plot panel once two of its
points are. Every cell is the run's own mean and rliable 95% interval over seeds; P(PSEC > method) compares
seeds within one run, P(row > scratch) across runs (they share seeds and evaluation start states, so
their seeds compare as within one table). A method a run did not train reads "-".
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path("experiments/results/psec_continual")
ORDER = ("scratch", "asec", "nsec", "psec_mlp", "psec_fixed", "psec")  # the paper's table
STEPS_METHODS = ("scratch", "psec_mlp", "psec_fixed", "psec")  # the methods of the steps runs


def load(results: Path = RESULTS) -> dict[str, dict]:
    """Run name -> its results JSON, for every finished run in ``results``."""
    return {p.stem: json.loads(p.read_text()) for p in sorted(results.glob("*.json")) if p.stem != "expansion_cost"}


# ------------------------------------------------------------------------------- the ablations' points


def data_runs(done: dict, protocol: str) -> list[tuple[int, dict]]:
    """(target trajectories, run) of the finished target-data runs of ``protocol`` (10 = its s2w run)."""
    runs = [(n, done.get(f"data{n}_{protocol}" if n != 10 else f"s2w_{protocol}")) for n in (1, 3, 10, 30, 50, 100)]
    return [(n, s) for n, s in runs if s is not None]


def rank_runs(done: dict) -> list[tuple[int, dict]]:
    """(LoRA rank, run) of the finished rank runs, paper protocol (8 = the s2w run)."""
    runs = [(r, done.get(f"rank{r}_paper" if r != 8 else "s2w_paper")) for r in (4, 8, 16, 32)]
    return [(r, s) for r, s in runs if s is not None]


def steps_runs(done: dict) -> list[tuple[int, dict]]:
    """(gradient steps of the new skill, run), paper protocol; `make demo` is the 2000-step point for
    scratch and PSEC (the same pi_0, config and seeds), 6000 the s2w run."""
    runs = [(1000, done.get("steps1000_paper")), (2000, done.get("steps2000_paper") or done.get("demo")),
            (6000, done.get("s2w_paper"))]
    return [(k, s) for k, s in runs if s is not None]


# --------------------------------------------------------------------------------------------- cells


def _ci(s: dict | None, method: str) -> tuple[float, float, float] | None:
    """(mean, low, high) of ``method`` in run ``s``, or None where the run or method is missing."""
    if s is None or method not in s["methods"]:
        return None
    r = s["methods"][method]
    return r["return"], r["return_ci"][0], r["return_ci"][1]


def _mean(s: dict, method: str) -> str:
    """'mean [low, high]' of ``method`` in run ``s``, '-' where it was not trained."""
    c = _ci(s, method)
    return "{:.0f} [{:.0f}, {:.0f}]".format(*c) if c else "-"


def _row(s: dict, method: str) -> str:
    """'mean [CI] | IQM [CI]' of ``method`` in run ``s`` (two table cells), '- | -' where it was not trained."""
    if method not in s["methods"]:
        return "- | -"
    r = s["methods"][method]
    return f"{_mean(s, method)} | {r['return_iqm']:.0f} [{r['return_iqm_ci'][0]:.0f}, {r['return_iqm_ci'][1]:.0f}]"


def _fmt_p(p: dict | None) -> str:
    return f"{p['p']:.2f} [{p['ci'][0]:.2f}, {p['ci'][1]:.2f}]" if p else "-"


def _p_psec_over(s: dict, method: str) -> str:
    """P(PSEC > ``method``) within run ``s`` (its own rliable estimate), '-' where it has none."""
    return _fmt_p(s.get("improvement", {}).get(f"psec>{method}"))


def _p_across(saved: dict, method: str, other: dict | None, against: str = "scratch") -> str:
    """P(``method`` of run ``saved`` > ``against`` of run ``other``) from their per-seed returns; '-' where
    either is missing."""
    from psec_jax.rl import report

    if other is None or method not in saved["methods"] or against not in other["methods"]:
        return "-"
    rows = {"x": saved["methods"][method], "y": other["methods"][against]}
    return _fmt_p(report.improvements(rows, [("x", "y")], reps=other["config"]["eval"]["bootstrap_reps"]).get("x>y"))


# -------------------------------------------------------------------------------------------- tables


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
                out.append(f"| {m} | " + " | ".join(f"{_row(s, m)} | {_p_psec_over(s, m)}" for _, s in got) + " |")
            out.append("")
    return out


def _data_tables(done: dict) -> list[str]:
    """Scratch and PSEC vs the number of target trajectories, per protocol."""
    out = []
    for protocol in ("paper", "default"):
        rows = data_runs(done, protocol)
        if len(rows) > 1:
            out += [f"#### target data, {protocol} protocol (stand -> walk)", "",
                    "| trajectories | scratch mean | IQM | PSEC mean | IQM | P(PSEC > scratch) |", "|---|---|---|---|---|---|"]
            out += [f"| {n} | {_row(s, 'scratch')} | {_row(s, 'psec')} | {_p_psec_over(s, 'scratch')} |" for n, s in rows]
            out.append("")
    return out


def _rank_table(done: dict) -> list[str]:
    """PSEC vs LoRA rank, each against the s2w run's scratch."""
    rows = rank_runs(done)
    if len(rows) < 2:
        return []
    return ["#### LoRA rank, paper protocol (stand -> walk)", "",
            "| rank | PSEC mean | IQM | P(PSEC > scratch) |", "|---|---|---|---|",
            *[f"| {r} | {_row(s, 'psec')} | {_p_across(s, 'psec', done.get('s2w_paper'))} |" for r, s in rows], ""]


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
    """Return vs gradient steps of the new skill."""
    rows = steps_runs(done)
    if len(rows) < 2:
        return []
    return ["#### return vs gradient steps of the new skill, paper protocol (stand -> walk)", "",
            "| steps | " + " | ".join(f"{m} mean [95% CI]" for m in STEPS_METHODS) + " |",
            "|---|" + "---|" * len(STEPS_METHODS),
            *[f"| {k} | " + " | ".join(_mean(s, m) for m in STEPS_METHODS) + " |" for k, s in rows], ""]


def _norm_pi0_table(done: dict) -> list[str]:
    """Observation normalisation x pi_0 strength, each cell against its own scratch where it trained one,
    else (raw observations only: raw scratch does not depend on pi_0) raw strong's. A standardised cell
    without its own scratch is left out: its scratch's normaliser would come from another pi_0's data."""
    cells = {("raw", "strong"): "s2w_paper", ("norm", "strong"): "norm_strong_paper",
             ("raw", "weak"): "raw_weak_paper", ("norm", "weak"): "norm_weak_paper"}
    own = lambda s, obs: s if "scratch" in s["methods"] else done.get("s2w_paper") if obs == "raw" else None
    rows = [(obs, pi0, done[name], own(done[name], obs)) for (obs, pi0), name in cells.items() if name in done]
    rows = [row for row in rows if row[3] is not None]
    if len(rows) < 2:
        return []
    return ["#### observation normalisation x pi_0 strength (paper protocol otherwise; stand -> walk)", "",
            "| observations | pi_0 | scratch mean | IQM | PSEC-fixed mean | IQM | P(fixed > scratch) "
            "| PSEC mean | IQM | P(PSEC > scratch) |", "|---|---|---|---|---|---|---|---|---|---|",
            *[f"| {obs} | {pi0} | {_row(sc, 'scratch')} | {_row(s, 'psec_fixed')} | "
              f"{_p_across(s, 'psec_fixed', sc)} | {_row(s, 'psec')} | {_p_across(s, 'psec', sc)} |"
              for obs, pi0, s, sc in rows], ""]


def tables(done: dict) -> str:
    """Markdown tables of the finished runs ``done`` (``load``): the method tables side by side per
    task, then each ablation as one table (runs not yet made are left out)."""
    parts = (_task_tables, _data_tables, _rank_table, _regulariser_table, _steps_table, _norm_pi0_table)
    return "\n".join(line for part in parts for line in part(done))


def summary(results: Path = RESULTS) -> str:
    """``tables`` of every finished run in ``results``."""
    return tables(load(results))


# ---------------------------------------------------------------------------------------------- plot


def panels(done: dict) -> list[tuple[str, str, list[tuple[int, dict]], tuple[str, ...], bool]]:
    """The plot's panels with at least two finished points: (title, x label, [(x, run)], methods, log x):
    target data per protocol, LoRA rank and gradient steps (the regulariser and normalisation x pi_0
    ablations are tables only: their rows are not on one axis)."""
    out = [(f"target data, {p} protocol", "target trajectories", data_runs(done, p), ("scratch", "psec"), True)
           for p in ("paper", "default")]
    out += [("LoRA rank, paper protocol", "rank", rank_runs(done), ("psec",), True),
            ("gradient steps of the new skill, paper", "steps", steps_runs(done), STEPS_METHODS, False)]
    return [p for p in out if len(p[2]) > 1]


def plot(done: dict, path: Path) -> bool:
    """Writes ``panels`` to ``path`` as one figure (per method the mean over seeds, whiskers its 95%
    interval, methods set slightly apart on x); False (nothing written) when there are none."""
    chosen = panels(done)
    if not chosen:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(chosen), figsize=(4.2 * len(chosen), 3.6), squeeze=False)
    for ax, (title, xlabel, rows, methods, log) in zip(axes[0], chosen):
        xs = [x for x, _ in rows]
        for i, m in enumerate(methods):
            pts = [(x, c) for x, s in rows if (c := _ci(s, m)) is not None]
            shift = (i - (len(methods) - 1) / 2) * 0.04  # keep overlapping whiskers apart
            x = [p * (1 + shift) if log else p + shift * (max(xs) - min(xs)) / 4 for p, _ in pts]
            err = [[c[0] - c[1] for _, c in pts], [c[2] - c[0] for _, c in pts]]
            ax.errorbar(x, [c[0] for _, c in pts], yerr=err, fmt="o-", capsize=4, label=m)
        if log:
            ax.set_xscale("log")
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.minorticks_off()
        ax.set(title=title, xlabel=xlabel, ylabel="walker return (mean, 95% CI)")
        ax.legend(fontsize=8)
    c = chosen[0][2][0][1]["config"]
    fig.suptitle(f"PSEC continual ablations (stand -> walk), {c['num_seeds']} seeds x {c['eval']['episodes']} "
                 "episodes per point")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
