"""The safe-composition and dynamics-shift runs behind docs/psec.md's round-two tables (issue 31): every run
is one `psec-jax psec_safe` / `psec_dynamics` command (``RUNS``), resumable, its results copied to
experiments/results/psec_safe_dynamics/<name>.{json,md,png}; ``summary`` writes the tables built from them
(summary.md: each method's mean with its rliable interval, PSEC minus each method paired by seed with its
t and Wilcoxon tests and the smallest difference those seeds detect).

    python -m experiments.psec_safe_dynamics list
    python -m experiments.psec_safe_dynamics run safe_hopper safe_hopper_project --root=runs/safe_dynamics
    python -m experiments.psec_safe_dynamics summary

Each body's ``_project`` run (the project's feasible-then-reward rule) builds on the pi_0s of its run with
the official argmin-Qc rule (``--config.pretrained``): they differ only in how methods act and in the
skills and composers, which are trained again from the same keys.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import numpy as np

from experiments import sweeps

RESULTS = Path("experiments/results/psec_safe_dynamics")
SAFE_BODIES = ("halfcheetah", "hopper", "walker2d", "ant")
DYNAMICS_BODIES = ("halfcheetah", "walker2d")
VARIANTS = ("friction_0.25", "friction_0.5", "gravity_2", "thigh_2")


class Run(NamedTuple):
    experiment: str  # psec_safe or psec_dynamics
    preset: str  # of the experiment's config
    flags: tuple[str, ...] = ()  # --config.* overrides
    after: str = ""  # the run whose pi_0s this one builds on


def _runs() -> dict[str, Run]:
    runs: dict[str, Run] = {}
    for body in SAFE_BODIES:
        runs[f"safe_{body}"] = Run("psec_safe", "small", (f"--config.env={body}",))
        runs[f"safe_{body}_project"] = Run("psec_safe", "small_project", (f"--config.env={body}",), f"safe_{body}")
    for body in DYNAMICS_BODIES:
        for variant in VARIANTS:
            flags = (f"--config.env={body}", f"--config.variant={variant}", "--config.kind=medium")
            runs[f"dynamics_{body}_{variant}"] = Run("psec_dynamics", "small", flags)
    return runs


RUNS = _runs()


def command(name: str, root: Path) -> list[str]:
    """The `psec-jax` command line of run ``name`` with its workdir under ``root``."""
    run = RUNS[name]
    given = [f"--config.pretrained={root / run.after / 'policies' / 'pi0'}"] if run.after else []
    return [
        "psec-jax",
        run.experiment,
        f"--config={run.experiment}:{run.preset}",
        *run.flags,
        *given,
        f"--workdir={root / name}",
    ]


def load(results: Path = RESULTS) -> dict[str, dict]:
    """Run name -> its results JSON, for every finished run in ``results``."""
    return {p.stem: json.loads(p.read_text()) for p in sorted(results.glob("*.json")) if p.stem in RUNS}


def _cell(row: dict, field: str) -> str:
    lo, hi = row[f"{field}_ci"]
    digits = 0 if abs(row[field]) >= 10 else 2
    return f"{row[field]:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def _paired(x: dict, y: dict, field: str) -> str:
    """'PSEC - method [95% CI], t p, Wilcoxon p, detectable' over the seeds both share (one run: seed i of
    every method builds on the same pi_0 and evaluates from the same start states)."""
    from psec_jax import stats

    d = stats.paired_difference(np.asarray(x[f"{field}_per_seed"]), np.asarray(y[f"{field}_per_seed"]))
    digits = 0 if abs(d["mean"]) >= 10 else 2
    return (
        f"{d['mean']:+.{digits}f} [{d['ci'][0]:+.{digits}f}, {d['ci'][1]:+.{digits}f}] | {d['t_p']:.2g} | "
        f"{d['wilcoxon_p']:.2g} | {d['detectable']:.{digits}f}"
    )


def table(name: str, saved: dict) -> list[str]:
    """One run's table: every method's fields, and PSEC minus the method, paired by seed."""
    methods, fields = saved["methods"], [f for f in ("return", "cost") if f in next(iter(saved["methods"].values()))]
    c = saved["config"]
    label = {"return": "normalized reward" if "cost" in fields else "normalized score", "cost": "normalized cost"}
    head = "| method | " + " | ".join(f"{label[f]} [95% CI]" for f in fields)
    head += "".join(f" | PSEC - method, {label[f]} [95% CI] | t p | Wilcoxon p | detectable" for f in fields) + " |"
    out = [
        f"#### {name}: {c['num_seeds']} independent seeds x {c['eval']['episodes']} episodes, acting rule "
        f"{saved.get('acting_rule', '?')}",
        "",
        head,
        "|---" * (1 + len(fields) * 5) + "|",
    ]
    for m in [m for m in c.get("methods", methods) if m in methods]:  # the config's order (JSON sorts keys)
        row = methods[m]
        cells = [_cell(row, f) for f in fields]
        pairs = [
            _paired(methods["psec"], row, f) if m != "psec" and "psec" in methods else "- | - | - | -" for f in fields
        ]
        out.append(f"| {m} | " + " | ".join(cells) + " | " + " | ".join(pairs) + " |")
    return out + [""]


def summary(done: dict[str, dict]) -> str:
    """Every finished run's table, safe runs first, with how the numbers were made."""
    lines = [
        "### Safe composition and dynamics shift, round two (issue 31)",
        "",
        "Made by `python -m experiments.psec_safe_dynamics summary` from the runs' results JSON (each holds its "
        "command, commit and data checksums). Intervals: rliable percentile bootstrap over seeds; PSEC - "
        "method: paired by seed (`psec_jax.stats.paired_difference`); detectable: the smallest true mean "
        "difference a paired t-test of these seeds detects at 80% power and 5% level, given the differences' "
        "measured spread.",
        "",
    ]
    for name in RUNS:
        if name in done:
            lines += table(name, done[name])
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    a = sweeps.parse(
        "python -m experiments.psec_safe_dynamics",
        __doc__,
        ("list", "run", "summary"),
        RUNS,
        "runs/safe_dynamics",
        argv,
    )
    if a.action == "list":
        sweeps.print_commands(RUNS, command, Path(a.root))
    elif a.action == "run":
        for name in a.names:
            sweeps.run_and_record(command(name, Path(a.root)), Path(a.root) / name, RESULTS, name)
    else:
        text = summary(load())
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "summary.md").write_text(text + "\n")
        print(text)


if __name__ == "__main__":
    main()
