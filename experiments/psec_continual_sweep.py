"""The continual-shift runs behind the docs/psec.md's round-two tables: every run is one `psec-jax psec_continual`
command (``RUNS``: name -> config and overrides), resumable, its results copied to
experiments/results/psec_continual/<name>.{json,md,png}; ``summary`` prints the ablation tables built from
them and writes their plot, summary.png (``experiments.psec_continual_summary``).

    python -m experiments.psec_continual_sweep list
    python -m experiments.psec_continual_sweep run s2w_paper s2w_default --root=runs/continual
    python -m experiments.psec_continual_sweep summary                       # tables + summary.png
    python -m experiments.psec_continual_sweep cost --root=runs/continual   # what a new skill costs
    python -m experiments.psec_continual_sweep weights --root=runs/continual  # where the composers put weight

Ablation runs build on the pi_0 of the run named in their ``after`` (``--config.pretrained``), so they
differ from it only in what they ablate; run that one first.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

from experiments import psec_continual_summary, sweeps
from experiments.psec_continual_summary import RESULTS

CONFIG = "psec_continual"


class Run(NamedTuple):
    arg: str  # SIZE,PROTOCOL of the config
    flags: tuple[str, ...] = ()  # --config.* overrides
    after: str = ""  # the run whose pi_0s this one builds on (same protocol, pi_0 data and seeds)
    library: str = ""  # the run whose LoRA skills this one loads instead of training them (its skills' names)


PAPER = "small,paper_protocol"
HEADLINE = "scratch,asec,nsec,psec_fixed,psec"  # psec_mlp (an MLP adapter per skill) is left to a later round


def _runs() -> dict[str, Run]:
    """Round two: every seed trains its own pi_0 (in s2w_paper and s2w_default; the others build on
    s2w_paper's, seed by seed) and skills learned once are loaded where a later run needs them (the same
    pi_0, data and stage keys would train them again bit for bit)."""
    runs: dict[str, Run] = {}
    # the headline tables: 10 independent seeds x 10 episodes
    runs["s2w_paper"] = Run(PAPER, (f"--config.methods={HEADLINE}",))
    runs["sw2r_paper"] = Run(
        PAPER,
        ("--config.task=stand_walk_run", "--config.methods=scratch,asec,psec_fixed,psec"),
        "s2w_paper",
        "s2w_paper",
    )  # trains the run skill, loads walk
    # stand -> run composes sw2r's run skill alone; its scratch baseline is sw2r's (the same target data)
    runs["s2r_paper"] = Run(
        PAPER, ("--config.task=stand_run", "--config.methods=asec,psec_fixed,psec"), "s2w_paper", "sw2r_paper"
    )
    runs["s2w_default"] = Run("small", ("--config.methods=scratch,psec_fixed,psec",))
    # routed skills (issue 36): a five-skill library (walk, speeds 2 and 4, run, and the target's) composed
    # densely (psec) and routed per state (psec_routed) for walker speed 3; its own pi_0s and skills
    runs["library_speed3_paper"] = Run(
        PAPER, ("--config.task=library_speed3", "--config.methods=scratch,psec_fixed,psec,psec_routed")
    )
    # does the composer find its regulariser's optimum given more steps? stand + walk -> run, batch 256
    for steps in (1000, 5000, 20000):
        runs[f"compose{steps}_paper"] = Run(
            PAPER,
            (
                "--config.task=stand_walk_run",
                f"--config.compose.steps={steps}",
                "--config.compose.batch_size=256",
                "--config.num_seeds=5",
                "--config.methods=psec",
            ),
            "s2w_paper",
            "sw2r_paper",
        )
    # when is scratch as weak as the paper's (58.9 on stand -> walk)? its gradient steps x target data
    for n in (1, 10):
        for steps in (1000, 2000, 6000, 20000):
            if (steps, n) == (6000, 10):  # s2w_paper's scratch (10 seeds)
                continue
            runs[f"scratch{steps}_data{n}_paper"] = Run(
                PAPER,
                (
                    f"--config.skill_trajectories={n}",
                    f"--config.expand.steps={steps}",
                    "--config.num_seeds=5",
                    "--config.methods=scratch",
                ),
            )
    return runs


RUNS = _runs()


def command(name: str, root: Path) -> list[str]:
    """The `psec-jax psec_continual` command line of run ``name`` with its workdir under ``root``."""
    run = RUNS[name]
    given = [f"--config.pretrained={root / run.after / 'policies' / 'pi0'}"] if run.after else []
    given += [f"--config.library={root / run.library / 'policies' / 'library_seed0'}"] if run.library else []
    return [
        "psec-jax",
        "psec_continual",
        f"--config={CONFIG}:{run.arg}",
        *run.flags,
        *given,
        f"--workdir={root / name}",
    ]


def run(names: list[str], root: Path) -> None:
    """Runs each named run (resuming its finished stages) and copies its results to ``RESULTS``."""
    for name in names:
        sweeps.run_and_record(command(name, root), root / name, RESULTS, name)


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
    from psec_jax.configs import psec_continual as cfg

    out = {"parameters": {size: trainable_parameters(cfg.get_config(size).network) for size in ("small", "paper")}}
    for name in names:
        stages = root / name / "stages"
        if not (root / name / "results.json").is_file():
            continue
        saved = json.loads((root / name / "results.json").read_text())
        row = {}
        for method, stage in (("psec", "expand_lora_walk"), ("psec_mlp", "expand_mlp_walk"), ("scratch", "scratch")):
            if method not in saved["methods"] or not (stages / stage / "metrics.jsonl").is_file():
                continue
            records = [json.loads(line) for line in (stages / stage / "metrics.jsonl").read_text().splitlines()]
            steps = records[-1]["step"]
            seconds = sum(
                (b["step"] - a) / b["steps_per_sec"] for a, b in zip([0] + [r["step"] for r in records], records)
            )
            row[method] = {
                "steps": steps,
                "seconds": seconds,
                "seeds": saved["config"]["num_seeds"],
                # the first skill kind's stage trains the target critic too; later ones reuse it
                "trains_critic": "q_loss" in records[-1],
                "return": saved["methods"][method]["return"],
                "return_ci": saved["methods"][method]["return_ci"],
            }
        out[name] = row
    return out


def composer_weights(root: Path, names: list[str]) -> dict:
    """Where each finished run's PSEC composer put its weight: per seed, the mean composition scale alpha
    = weight x LoRA scale of every skill over the states of the data it was fitted on (the target's, as
    every stage saw them) and its standard deviation over those states, read from the saved composers
    (policies/composer_psec_seed{i}). The official
    regulariser's optimum is the newest skill at its training scale (16) and older skills at 0."""
    import numpy as np

    from psec_jax import artifacts, runs
    from psec_jax.rl import continual, pi0, policy, saving

    out = {"commit": runs.git_commit(), "runs": {}}
    for name in names:
        work = root / name
        if not (work / "results.json").is_file() or not (work / "policies" / "composer_psec_seed0").is_dir():
            continue
        c = runs.load_config(work)
        prior, target = continual.TASKS[c.task]
        skills = [*prior, target]
        data = continual.load_data(continual.skill_data_name(c, target))
        normalizer = saving.load_base(pi0.pretrained_root(c.pretrained) if c.pretrained else work / "policies" / "pi0")[
            2
        ]
        obs = normalizer(data.observations)
        composer = policy.make_composer("context", obs.shape[-1], len(skills), tuple(c.compose.hidden))
        per_seed, spread = [], []
        for i in range(c.num_seeds):
            tree, meta = artifacts.load_tree(work / "policies" / f"composer_psec_seed{i}")
            if meta["skills"] != skills:
                raise ValueError(
                    f"{name}: composer of seed {i} composes {meta['skills']}, the task's skills are {skills}"
                )
            alpha = np.asarray(composer.apply(tree["params"], obs)) * c.network.lora_alpha  # [N, K]
            per_seed.append(alpha.mean(axis=0).tolist())
            spread.append(alpha.std(axis=0).tolist())
        out["runs"][name] = {
            "skills": skills,
            "alpha_per_seed": per_seed,
            "alpha_sd_over_states_per_seed": spread,
            "alpha_mean": np.mean(per_seed, axis=0).tolist(),
            "data": data.checksum(),
        }
    return out


def main(argv: list[str] | None = None) -> None:
    a = sweeps.parse(
        "python -m experiments.psec_continual_sweep",
        __doc__,
        ("list", "run", "summary", "cost", "weights"),
        RUNS,
        "runs/continual",
        argv,
    )
    if a.action == "list":
        sweeps.print_commands(RUNS, command, Path(a.root))
    elif a.action == "run":
        run(a.names, Path(a.root))
    elif a.action == "weights":
        weights = composer_weights(Path(a.root), a.names or list(RUNS))
        (RESULTS / "composer_weights.json").write_text(json.dumps(weights, indent=1) + "\n")
        print(json.dumps({k: v["alpha_mean"] for k, v in weights["runs"].items()}, indent=1))
    elif a.action == "cost":
        cost = expansion_cost(Path(a.root))
        (RESULTS / "expansion_cost.json").write_text(json.dumps(cost, indent=1) + "\n")
        print(json.dumps(cost, indent=1))
    else:
        done = psec_continual_summary.load()
        print(psec_continual_summary.summary())
        if psec_continual_summary.plot(done, RESULTS / "summary.png"):
            print(f"wrote {RESULTS / 'summary.png'}")


if __name__ == "__main__":
    main()
