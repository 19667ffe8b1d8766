"""The continual-shift runs behind the README's PSEC tables: every run is one `psec-jax psec_continual`
command (``RUNS``: name -> config and overrides), resumable, its results copied to
experiments/results/psec_continual/<name>.{json,md,png}; ``summary`` builds the ablation tables from them.

    python -m experiments.psec_continual_sweep list
    python -m experiments.psec_continual_sweep run s2w_paper s2w_default --root=runs/continual
    python -m experiments.psec_continual_sweep summary
    python -m experiments.psec_continual_sweep cost --root=runs/continual   # what a new skill costs

Ablation runs build on the pi_0 of the run named in their ``after`` (``--config.pretrained``), so they
differ from it only in what they ablate; run that one first.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

CONFIG = "experiments/configs/psec_continual.py"
RESULTS = Path("experiments/results/psec_continual")
SCRATCH_AND_PSEC = "--config.methods=scratch,psec"


class Run(NamedTuple):
    arg: str  # SIZE,PROTOCOL of the config
    flags: tuple[str, ...] = ()  # --config.* overrides
    after: str = ""  # the run whose pi_0 this one builds on (same protocol and pi_0 data)


def _runs() -> dict[str, Run]:
    runs: dict[str, Run] = {}
    for protocol, arg in (("default", "small"), ("paper", "small,paper_protocol")):
        for task, short in (("stand_walk", "s2w"), ("stand_run", "s2r"), ("stand_walk_run", "sw2r")):
            flags = () if task == "stand_walk" else (f"--config.task={task}",)
            runs[f"{short}_{protocol}"] = Run(arg, flags, "" if task == "stand_walk" else f"s2w_{protocol}")
        for n in (1, 3, 30, 50, 100):  # target data (10 = the s2w run)
            runs[f"data{n}_{protocol}"] = Run(arg, (f"--config.skill_trajectories={n}", SCRATCH_AND_PSEC),
                                              f"s2w_{protocol}")
    for rank in (4, 16, 32):  # LoRA rank under the paper protocol (8 = the s2w run)
        runs[f"rank{rank}_paper"] = Run("small,paper_protocol", (f"--config.network.lora_rank={rank}",
                                                                 "--config.methods=psec"), "s2w_paper")
    # why the learned composer trails fixed weights under the paper protocol: its alpha regulariser
    runs["noreg_paper"] = Run("small,paper_protocol", ("--config.compose.alpha_reg=0.0", "--config.methods=psec"),
                              "s2w_paper")
    # return vs gradient steps of each new skill (6000 = the s2w run): what reaching a return costs
    for steps in (1000, 2000):
        runs[f"steps{steps}_paper"] = Run("small,paper_protocol", (
            f"--config.expand.steps={steps}", "--config.methods=scratch,psec_mlp,psec_fixed,psec"), "s2w_paper")
    # what decides scratch vs PSEC: observation normalisation x pi_0 strength, the rest of the paper
    # protocol fixed (raw + strong is s2w_paper; scratch does not depend on pi_0)
    weak = ("--config.base_data=walker-stand-medium-expert-40traj", "--config.pretrain.steps=10000")
    # (PSEC-fixed beside PSEC: the same skill without the composer, whose regulariser decides on its own)
    runs["norm_strong_paper"] = Run("small,paper_protocol", ("--config.obs_norm=True",
                                                             "--config.methods=scratch,psec_fixed,psec"))
    runs["raw_weak_paper"] = Run("small,paper_protocol", (*weak, "--config.methods=psec_fixed,psec"))
    runs["norm_weak_paper"] = Run("small,paper_protocol", ("--config.obs_norm=True", *weak,
                                                           "--config.methods=psec_fixed,psec"))
    return runs


RUNS = _runs()


def command(name: str, root: Path) -> list[str]:
    """The `psec-jax psec_continual` command line of run ``name`` with its workdir under ``root``."""
    run = RUNS[name]
    pretrained = [f"--config.pretrained={root / run.after / 'policies' / 'pi0'}"] if run.after else []
    return ["psec-jax", "psec_continual", f"--config={CONFIG}:{run.arg}", *run.flags, *pretrained,
            f"--workdir={root / name}"]


def run(names: list[str], root: Path) -> None:
    """Runs each named run (resuming its finished stages) and copies its results to ``RESULTS``."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    for name in names:
        cmd = command(name, root)
        print("$", " ".join(cmd), flush=True)
        subprocess.run([str(Path(sys.executable).parent / cmd[0]), *cmd[1:]], check=True)
        for ext in ("json", "md", "png"):
            shutil.copyfile(root / name / f"results.{ext}", RESULTS / f"{name}.{ext}")
        saved = json.loads((RESULTS / f"{name}.json").read_text())
        saved["command"] = " ".join(cmd)
        (RESULTS / f"{name}.json").write_text(json.dumps(saved, indent=1) + "\n")


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
    done = {p.stem: json.loads(p.read_text()) for p in sorted(results.glob("*.json"))}
    tables = (_task_tables, _data_tables, _rank_table, _regulariser_table, _steps_table, _norm_pi0_table)
    return "\n".join(line for table in tables for line in table(done))


def trainable_parameters(network, obs_dim: int = 24, act_dim: int = 6) -> dict[str, int]:
    """Trainable parameters of one new skill of each kind on the walker (``jax.eval_shape``: nothing is
    allocated): ``lora`` (every Dense of the noise net), ``mlp`` (the MLP adapter), ``full`` (scratch)."""
    import jax

    from psec_jax.rl import policy

    count = lambda tree: sum(int(x.size) for x in jax.tree.leaves(tree))
    out = {}
    for kind in policy.SKILL_KINDS:
        actor = policy.make_actor(network, obs_dim, act_dim, kind)
        base = jax.eval_shape(actor.init_base, jax.random.key(0))
        out[kind] = count(jax.eval_shape(lambda k, b: actor.init_skill(k, b).params, jax.random.key(0), base))
        out["full"] = count(base)
    return out


def expansion_cost(root: Path, names: tuple[str, ...] = ("s2w_paper", "s2w_default")) -> dict:
    """What a new walk skill costs in each finished run under ``root``: trainable parameters, and the
    measured wall time and rate of its stage (all seeds at once, from the stages' metrics.jsonl), for the
    LoRA skill, the MLP adapter and scratch; each method's return from its results."""
    from experiments.configs import psec_continual as cfg

    out = {"parameters": {size: trainable_parameters(cfg.get_config(size).network) for size in ("small", "paper")}}
    for name in names:
        stages = root / name / "stages"
        if not (root / name / "results.json").is_file():
            continue
        saved = json.loads((root / name / "results.json").read_text())
        row = {}
        for method, stage in (("psec", "expand_lora_walk"), ("psec_mlp", "expand_mlp_walk"), ("scratch", "scratch")):
            records = [json.loads(line) for line in (stages / stage / "metrics.jsonl").read_text().splitlines()]
            steps = records[-1]["step"]
            seconds = sum((b["step"] - a) / b["steps_per_sec"] for a, b in zip([0] + [r["step"] for r in records], records))
            row[method] = {"steps": steps, "seconds": seconds, "seeds": saved["config"]["num_seeds"],
                           # the first skill kind's stage trains the target critic too; later ones reuse it
                           "trains_critic": "q_loss" in records[-1],
                           "return": saved["methods"][method]["return"], "return_ci": saved["methods"][method]["return_ci"]}
        out[name] = row
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m experiments.psec_continual_sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("list", "run", "summary", "cost"))
    parser.add_argument("names", nargs="*", help="runs (see `list`)")
    parser.add_argument("--root", default="runs/continual", help="parent of the runs' workdirs")
    a = parser.parse_args(argv)
    unknown = [n for n in a.names if n not in RUNS]
    if unknown:
        parser.error(f"unknown runs {unknown}; `list` shows them")
    if a.action == "list":
        for name in RUNS:
            print(f"{name:<20} {' '.join(command(name, Path(a.root)))}")
    elif a.action == "run":
        run(a.names, Path(a.root))
    elif a.action == "cost":
        cost = expansion_cost(Path(a.root))
        (RESULTS / "expansion_cost.json").write_text(json.dumps(cost, indent=1) + "\n")
        print(json.dumps(cost, indent=1))
    else:
        print(summary())


if __name__ == "__main__":
    main()
