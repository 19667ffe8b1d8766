"""The sweep's tables and ablation plot, built from the committed results of
``experiments.psec_continual_sweep`` (one JSON per run in ``experiments/results/psec_continual``).

    python -m experiments.psec_continual_sweep summary   # prints the tables, writes summary.png

A table appears once one of its runs is finished. Every cell is the run's own mean and rliable 95%
interval over seeds. P(PSEC > method) and the Mann-Whitney p-value compare the seeds of one run; across
runs (a baseline another run trained) they compare seed sets that share seeds, data and evaluation start
states. A method a run did not train reads "-".
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

RESULTS = Path("experiments/results/psec_continual")
ORDER = ("scratch", "asec", "nsec", "psec_mlp", "psec_fixed", "psec", "psec_routed")  # the paper's table, then ours
TASKS = (
    ("s2w_paper", "stand -> walk, paper protocol"),
    ("s2r_paper", "stand -> run, paper protocol"),
    ("sw2r_paper", "stand + walk -> run, paper protocol"),
    ("s2w_default", "stand -> walk, default protocol"),
)
# a run without its own scratch compares with this run's (the same target data and seeds)
SCRATCH_FROM = {"s2r_paper": "sw2r_paper"}
COMPOSE_STEPS = (1000, 5000, 20000)
SCRATCH_STEPS, SCRATCH_DATA = (1000, 2000, 6000, 20000), (1, 10)


def load(results: Path = RESULTS) -> dict[str, dict]:
    """Run name -> its results JSON, for every finished run in ``results``."""
    return {
        p.stem: json.loads(p.read_text())
        for p in sorted(results.glob("*.json"))
        if p.stem not in ("expansion_cost", "composer_weights")
    }


# --------------------------------------------------------------------------------------------- cells


def _ci(s: dict | None, method: str) -> tuple[float, float, float] | None:
    """(mean, low, high) of ``method`` in run ``s``, or None where the run or method is missing."""
    if s is None or method not in s["methods"]:
        return None
    r = s["methods"][method]
    return r["return"], r["return_ci"][0], r["return_ci"][1]


def _mean(s: dict | None, method: str) -> str:
    """'mean [low, high]' of ``method`` in run ``s``, '-' where it was not trained."""
    c = _ci(s, method)
    return "{:.0f} [{:.0f}, {:.0f}]".format(*c) if c else "-"


def _row(s: dict | None, method: str) -> str:
    """'mean [CI] | IQM [CI]' of ``method`` in run ``s`` (two table cells), '- | -' where it was not trained."""
    if s is None or method not in s["methods"]:
        return "- | -"
    r = s["methods"][method]
    return f"{_mean(s, method)} | {r['return_iqm']:.0f} [{r['return_iqm_ci'][0]:.0f}, {r['return_iqm_ci'][1]:.0f}]"


def _compare(x: dict, method: str, y: dict | None, against: str) -> dict | None:
    """P(``method`` of run ``x`` > ``against`` of run ``y``), its interval, Mann-Whitney p and separation
    (``report.improvements``); the run's own estimate where x is y; None where either is missing."""
    from psec_jax.rl import report

    if y is None or method not in x["methods"] or against not in y["methods"]:
        return None
    if x is y and f"{method}>{against}" in x.get("improvement", {}):
        return x["improvement"][f"{method}>{against}"]
    rows = {"x": x["methods"][method], "y": y["methods"][against]}
    return report.improvements(rows, [("x", "y")], reps=y["config"]["eval"]["bootstrap_reps"]).get("x>y")


def _fmt(p: dict | None) -> str:
    """'P [low, high] | Mann-Whitney p' (two cells); a '*' marks complete separation."""
    if not p:
        return "- | -"
    rank = f"{p['rank_p']:.2g}" if "rank_p" in p else "-"
    return f"{p['p']:.2f} [{p['ci'][0]:.2f}, {p['ci'][1]:.2f}]{'*' if p.get('separated') else ''} | {rank}"


SEPARATION = (
    "`*`: complete separation, every seed of one method above every seed of the other; the interval "
    "[0, 0] or [1, 1] says only that, and the Mann-Whitney p-value is the evidence."
)


# -------------------------------------------------------------------------------------------- tables


def _task_tables(done: dict) -> list[str]:
    """Per headline run: every method's return, P(PSEC > method) with its rank test, and how much of
    the spread of seed means the finite episodes add."""
    from psec_jax import stats

    out = []
    for name, title in TASKS:
        s = done.get(name)
        if s is None:
            continue
        c, n = s["config"], s["config"]["num_seeds"]
        out += [
            f"#### {title}: return over {n} independent seeds x {c['eval']['episodes']} episodes (smallest P(PSEC > "
            f"method) a Mann-Whitney test of {n} vs {n} seeds detects at 80% power: "
            f"{stats.detectable_improvement(n, n):.2f})",
            "",
            "| method | mean [95% CI] | IQM [95% CI] | P(PSEC > method) [95% CI] | Mann-Whitney p "
            "| seed sd | episode sd | episode share |",
            "|---|---|---|---|---|---|---|---|",
        ]
        base = done.get(SCRATCH_FROM.get(name, name))
        for m in ORDER:
            owner = s if m in s["methods"] else base if m == "scratch" else None
            if owner is None or m not in owner["methods"]:
                continue
            var = owner["methods"][m].get("return_variance")
            spread = (
                f"{var['seed_sd']:.0f} | {var['episode_sd']:.0f} | {var['episode_share']:.2f}" if var else "- | - | -"
            )
            label = m if owner is s else f"{m} (of {SCRATCH_FROM[name]})"
            cmp = _fmt(_compare(s, "psec", owner, m)) if m != "psec" else "- | -"
            out.append(f"| {label} | {_row(owner, m)} | {cmp} | {spread} |")
        out.append("")
    return out + ([SEPARATION, ""] if any("]* |" in line for line in out) else [])


def _compose_table(done: dict) -> list[str]:
    """PSEC on stand + walk -> run vs the composer's gradient steps (batch 256), against sw2r's scratch
    and fixed weights."""
    rows = [(k, done.get(f"compose{k}_paper")) for k in COMPOSE_STEPS]
    rows = [(k, s) for k, s in rows if s is not None]
    if not rows:
        return []
    sw2r = done.get("sw2r_paper")
    out = [
        "#### composer gradient steps, stand + walk -> run, paper protocol (batch 256; the headline run: 1000 "
        "at batch 2048)",
        "",
        "| composer steps | seeds | PSEC mean [95% CI] | IQM [95% CI] | P(PSEC > scratch) | Mann-Whitney p "
        "| P(PSEC > fixed) | Mann-Whitney p |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for k, s in rows:
        out.append(
            f"| {k} | {s['config']['num_seeds']} | {_row(s, 'psec')} | {_fmt(_compare(s, 'psec', sw2r, 'scratch'))} "
            f"| {_fmt(_compare(s, 'psec', sw2r, 'psec_fixed'))} |"
        )
    return out + [""] + ([SEPARATION, ""] if any("]* |" in line for line in out) else [])


def _weights_table(weights: dict | None) -> list[str]:
    """Where each run's PSEC composer put its weight (``psec_continual_sweep weights``): per skill the mean
    composition scale over the target states, its range over seeds and its spread over states."""
    if not weights or not weights.get("runs"):
        return []
    out = [
        "#### where the PSEC composer puts its weight: composition scale alpha over the target data's states "
        "(the regulariser's optimum: newest skill 16, older skills 0; fixed weights: 16 each)",
        "",
        "| run | skill | alpha, mean over seeds | range over seeds | sd over states (mean over seeds) |",
        "|---|---|---|---|---|",
    ]
    for name, w in weights["runs"].items():
        alpha, sd = np.asarray(w["alpha_per_seed"]), np.asarray(w["alpha_sd_over_states_per_seed"])
        for k, skill in enumerate(w["skills"]):
            out.append(
                f"| {name} | {skill} | {alpha[:, k].mean():.1f} | {alpha[:, k].min():.1f} - {alpha[:, k].max():.1f} "
                f"| {sd[:, k].mean():.1f} |"
            )
    return out + [""]


def scratch_cells(done: dict) -> dict[tuple[int, int], dict]:
    """(gradient steps, target trajectories) -> the run holding that scratch (6000 steps on 10
    trajectories is the s2w_paper run's)."""
    cells = {}
    for steps in SCRATCH_STEPS:
        for n in SCRATCH_DATA:
            s = done.get(f"scratch{steps}_data{n}_paper") or (
                done.get("s2w_paper") if (steps, n) == (6000, 10) else None
            )
            if s is not None:
                cells[steps, n] = s
    return cells


def _scratch_table(done: dict) -> list[str]:
    """Scratch's return vs its gradient steps and target data, beside the skill (s2w_paper)."""
    cells = scratch_cells(done)
    if not cells:
        return []
    s2w = done.get("s2w_paper")
    seeds = lambda s: s["config"]["num_seeds"]
    out = [
        "#### scratch at matched budgets, stand -> walk, paper protocol: return, mean [95% CI] (seeds)",
        "",
        "| scratch steps | " + " | ".join(f"{n} target trajectories" for n in SCRATCH_DATA) + " |",
        "|---|" + "---|" * len(SCRATCH_DATA),
    ]
    for steps in SCRATCH_STEPS:
        row = [
            f"{_mean(cells[steps, n], 'scratch')} ({seeds(cells[steps, n])})" if (steps, n) in cells else "-"
            for n in SCRATCH_DATA
        ]
        out.append(f"| {steps} | " + " | ".join(row) + " |")
    if s2w is not None:
        out += [
            "",
            f"The skill beside it (s2w_paper, 6000 steps on 10 trajectories, {seeds(s2w)} seeds): "
            f"PSEC-fixed {_mean(s2w, 'psec_fixed')}, PSEC {_mean(s2w, 'psec')}; the paper's scratch: 58.9.",
        ]
    return out + [""]


def tables(done: dict) -> str:
    """Markdown tables of the finished runs ``done`` (``load``): the headline runs, then each ablation
    (runs not yet made are left out)."""
    parts = (_task_tables, _compose_table, _scratch_table)
    return "\n".join(line for part in parts for line in part(done))


def summary(results: Path = RESULTS) -> str:
    """``tables`` of every finished run in ``results``, then where the composers put their weight (its
    ``composer_weights.json``, when written)."""
    weights = results / "composer_weights.json"
    extra = _weights_table(json.loads(weights.read_text()) if weights.is_file() else None)
    return "\n".join([tables(load(results)), *extra])


# ---------------------------------------------------------------------------------------------- plot


def plot(done: dict, path: Path) -> bool:
    """Writes the ablations to ``path`` as one figure: scratch's return vs its steps per target-data
    size, and PSEC's vs the composer's steps (mean over seeds, whiskers the 95% interval); False
    (nothing written) when neither has two points."""
    cells = scratch_cells(done)
    scratch = {n: [(k, _ci(cells[k, n], "scratch")) for k in SCRATCH_STEPS if (k, n) in cells] for n in SCRATCH_DATA}
    compose = [(k, _ci(done.get(f"compose{k}_paper"), "psec")) for k in COMPOSE_STEPS]
    compose = [(k, c) for k, c in compose if c is not None]
    panels = [
        (title, lines)
        for title, lines in (
            ("scratch vs its gradient steps", {f"{n} target traj.": pts for n, pts in scratch.items() if len(pts) > 1}),
            ("PSEC vs composer steps (stand + walk -> run)", {"psec": compose} if len(compose) > 1 else {}),
        )
        if lines
    ]
    if not panels:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4.8 * len(panels), 3.6), squeeze=False)
    for ax, (title, lines) in zip(axes[0], panels):
        for label, pts in lines.items():
            x, c = np.array([k for k, _ in pts]), np.array([c for _, c in pts])
            ax.errorbar(x, c[:, 0], yerr=[c[:, 0] - c[:, 1], c[:, 2] - c[:, 0]], fmt="o-", capsize=4, label=label)
            ax.set_xticks(x, [str(k) for k in x])
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set(title=title, xlabel="gradient steps", ylabel="walker return (mean, 95% CI)")
        ax.legend(fontsize=8)
    fig.suptitle("PSEC continual ablations, paper protocol")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
