"""PSEC training and acting speed: gradient steps/s of every stage and states/s of acting, beside the official code.

    .venv/bin/python benchmarks/psec_train_throughput.py                       # small + paper, batch 256 and 2048
    .venv/bin/python benchmarks/psec_train_throughput.py --sizes paper --batches 2048 --steps 200
    .venv/bin/python benchmarks/psec_train_throughput.py --quick    # tiny shapes, a smoke run (~1-2 min, compiling)

Walker shapes (obs 24, action 6) and synthetic offline data (``--data`` transitions of random
observations / actions / rewards, on device). For each network size (``psec_jax.rl.config.network_config``)
and batch, the jitted ``Trainer.chunk`` of ``--steps`` gradient steps (one ``lax.scan``, batches
sampled on device, frozen weights passed as arguments) is timed as the best of ``--reps`` calls after
a warm-up call; ``compile_s`` is the time to trace, lower and compile it (no persistent cache). Stages:

- ``pretrain``: diffusion BC of the noise net (adamw, EMA copy);
- ``expand``: one LoRA skill on the frozen base with an IQL critic (``critic.kind="reward"``) trained alongside;
- ``compose_param`` / ``compose_noise``: the context AlphaNet over 2 LoRA skills, trained through the
  composed policy in parameter space (PSEC) / noise space (NSEC; K+1 = 3 network passes).

Acting (``act``): ``acting.make_act`` (rule argmax_q) with the parameter-space composed policy (AlphaNet over 2
skills, IQL critic scoring ``--candidates`` = 64 sampled actions per state, the best kept), one state
per call and ``--act_batch`` states per call; ``sample`` is the composed diffusion sampler alone on
``act_batch * candidates`` states (raw action samples/s). ``--seeds S`` > 1 vmaps S seeds as
``pipeline.run_stage`` does (rates stay per seed; the seeds share the frozen weights).

For the paper size, the official PSEC code's rates measured on this machine (/work/shared/FACTS.md)
and our target ratio are shown beside ours: ``x_official`` = ours / the official's best.
Prints a table and writes benchmarks/results/psec_train_throughput.json (``--out`` to change;
``--quick`` writes to the temp directory so it never replaces the real results).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from psec_jax import bench, runs
from psec_jax.data.offline import OfflineData
from psec_jax.rl import acting, critics, policy, train
from psec_jax.rl import config as rl_config

RESULTS = Path(__file__).resolve().parent / "results"  # where every benchmark writes its JSON

OBS, ACT = 24, 6  # walker
STAGES = ("pretrain", "expand", "compose_param", "compose_noise", "act")
NUM_SKILLS = 2  # skills composed in compose_* and act

# (stage, batch) -> (official rate as FACTS.md gives it, its best value, our target ratio); paper size
# only. Acting rows are keyed by states per call: 1 (one state per call) or None (batched).
OFFICIAL = {
    ("pretrain", 2048): ("3.0-3.6", 3.6, 1.5),
    ("pretrain", 256): ("21-30", 30.0, 2.0),
    ("expand", 2048): ("2.4", 2.4, 2.0),
    ("expand", 256): ("13", 13.0, 2.0),
    ("act", 1): ("43-59", 59.0, 10.0),
    ("act", None): ("~106", 106.0, 10.0),
}


def mlp_hidden(size: str) -> tuple[int, ...]:
    """Critic and AlphaNet widths, as psec_jax/configs/psec_continual.py sets them."""
    return (16,) if size == "tiny" else (256, 256)


def stage_config(stage: str, size: str, batch: int, steps: int) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict(
        dict(
            steps=steps,
            log_every=steps,
            batch_size=batch,
            weight_decay=0.0,
            ema=0.005,
            learning_rate=1e-3 if stage.startswith("compose") else 3e-4,
            cosine=True,
            network_dropout=False,
        )
    )
    c.critic = critics.default_config("reward")
    c.critic.hidden = mlp_hidden(size)
    return c


def num_params(init, *args) -> int:
    """Parameter count of ``init(*args)``'s output (shapes only, nothing computed)."""
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(jax.eval_shape(init, *args))))


def compile_and_time(fn, *args, reps: int) -> tuple[float, float]:
    """(compile seconds: trace + lower + compile, best seconds per call after a warm-up call)."""
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - t0
    return compile_s, bench.time_call(compiled, *args, reps=reps, min_seconds=0.0)


class Setup:
    """Actor, frozen base, two (non-trivial) skills and a composer of one network size."""

    def __init__(self, size: str, data: OfflineData):
        self.size, self.data = size, data
        self.net = rl_config.network_config(size)
        self.actor = policy.make_actor(self.net, OBS, ACT, "lora")
        self.base = jax.jit(self.actor.init_base)(jax.random.key(0))

        @jax.jit
        def two_skills(base):
            skills = policy.Skills.stack([self.actor.init_skill(jax.random.key(i), base) for i in (1, 2)])
            # nonzero B, as after expansion (a fresh skill is an exact no-op)
            return skills.replace(params=jax.tree.map(lambda x: x + 0.01, skills.params))

        self.skills = two_skills(self.base)
        self.critic_config = stage_config("expand", size, 1, 1).critic
        self.critic = critics.make_critic(OBS, ACT, self.critic_config)

    def composer(self, mode: str) -> policy.Composer:
        return policy.make_composer("context", OBS, policy.num_outputs(mode, NUM_SKILLS), mlp_hidden(self.size))

    def trainer(self, stage: str, c: ml_collections.ConfigDict):
        """(Trainer, inputs) of a training stage."""
        if stage == "pretrain":
            return train.make_pretrain(self.actor, c), train.PretrainInputs()
        if stage == "expand":
            return train.make_expand(self.actor, c, c.critic, "lora"), train.ExpandInputs(self.base, None)
        mode = stage.split("_", 1)[1]
        return train.make_compose(self.actor, self.composer(mode), mode, c), train.ComposeInputs(
            self.base, self.skills, None
        )

    def sizes(self) -> dict:
        key = jax.random.key(0)
        return {
            "noise_net_params": num_params(self.actor.init_base, key),
            "lora_skill_params": num_params(lambda k: self.actor.init_skill(k, self.base).params, key),
            "critic_params": num_params(lambda k: (lambda s: (s.q, s.v))(self.critic.init(k)), key),
            "alphanet_params": num_params(self.composer("param").init, key),
            "network": runs.to_jsonable(self.net),
        }


def with_official(row: dict, key) -> dict:
    if row["size"] == "paper" and key in OFFICIAL:
        text, best, target = OFFICIAL[key]
        ratio = row["rate"] / best
        row.update(official=text, x_official=ratio, target=f">={target:g}x", meets=bool(ratio >= target))
    return row


def measure_stage(setup: Setup, stage: str, batch: int, steps: int, seeds: int, reps: int) -> dict:
    trainer, frozen = setup.trainer(stage, stage_config(stage, setup.size, batch, steps))
    init, chunk = trainer.init, trainer.chunk
    keys = jax.random.key(3)
    if seeds > 1:
        init, chunk = jax.vmap(init, in_axes=(0, None)), jax.vmap(chunk, in_axes=(0, None, None))
        keys = jax.random.split(keys, seeds)
    state = jax.jit(init)(keys, frozen)
    compile_s, best = compile_and_time(chunk, state, frozen, setup.data, reps=reps)
    row = {
        "stage": stage,
        "size": setup.size,
        "batch": batch,
        "steps": steps,
        "seeds": seeds,
        "rate": steps / best,
        "unit": "steps/s",
        "ms_per_step": 1e3 * best / steps,
        "compile_s": compile_s,
        "steps_per_s": steps / best,
        "samples_per_s": seeds * batch * steps / best,
    }
    return with_official(row, (stage, batch))


def measure_act(setup: Setup, states: int, candidates: int, reps: int) -> dict:
    composer = setup.composer("param")
    sampler = policy.make_sampler(setup.actor, "param", composer)
    act = acting.make_act(sampler, {"reward": setup.critic}, "argmax_q", candidates)
    params = {
        "policy": {"base": setup.base, "skills": setup.skills, "composer": jax.jit(composer.init)(jax.random.key(4))},
        "critics": {"reward": jax.jit(setup.critic.init)(jax.random.key(5))},
    }
    obs = setup.data.observations[:states]
    compile_s, best = compile_and_time(act, params, obs, jax.random.key(6), reps=reps)
    row = {
        "stage": "act",
        "size": setup.size,
        "batch": states,
        "candidates": candidates,
        "rate": states / best,
        "unit": "states/s",
        "ms_per_call": 1e3 * best,
        "compile_s": compile_s,
        "states_per_s": states / best,
        "samples_per_s": states * candidates / best,
    }
    return with_official(row, ("act", 1 if states == 1 else None))


def measure_sample(setup: Setup, states: int, reps: int) -> dict:
    """The composed (param mode) diffusion sampler alone, no critic, on ``states`` observations."""
    composer = setup.composer("param")

    def sample(p, obs, key):
        w = composer.apply(p["composer"], obs)
        return policy.composed_sample(setup.actor, p["base"], p["skills"], "param", w, obs, key)

    params = {"base": setup.base, "skills": setup.skills, "composer": jax.jit(composer.init)(jax.random.key(4))}
    obs = jnp.resize(setup.data.observations, (states, OBS))
    compile_s, best = compile_and_time(sample, params, obs, jax.random.key(6), reps=reps)
    return {
        "stage": "sample",
        "size": setup.size,
        "batch": states,
        "rate": states / best,
        "unit": "samples/s",
        "ms_per_call": 1e3 * best,
        "compile_s": compile_s,
        "samples_per_s": states / best,
    }


def report(row: dict) -> None:
    extra = (
        f"  {row['x_official']:.2f}x official {row['official']} (target {row['target']})" if "official" in row else ""
    )
    print(
        f"{row['stage']:<14} {row['size']:<6} batch {row['batch']:<6} {row['rate']:>10.4g} {row['unit']:<10} "
        f"compile {row['compile_s']:5.1f} s{extra}",
        flush=True,
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny network, few steps: checks the script")
    p.add_argument("--sizes", nargs="*", choices=["tiny", "small", "paper"], help="network sizes (default small paper)")
    p.add_argument("--batches", nargs="*", type=int, help="training batch sizes (default 256 2048)")
    p.add_argument("--steps", type=int, help="gradient steps per timed chunk (default 50)")
    p.add_argument("--stages", nargs="*", choices=STAGES, default=list(STAGES))
    p.add_argument("--seeds", type=int, default=1, help="seeds trained at once (vmapped); rates are per seed")
    p.add_argument("--reps", type=int, help="timed calls per measurement, the best kept (default 3)")
    p.add_argument("--data", type=int, help="synthetic transitions (default 100000)")
    p.add_argument("--candidates", type=int, default=64, help="actions sampled per state when acting")
    p.add_argument("--act_batch", type=int, help="states per call of batched acting (default 256)")
    p.add_argument(
        "--out",
        help="result JSON (default benchmarks/results/psec_train_throughput.json; "
        "with --quick, psec_train_throughput_quick.json in the temp directory)",
    )
    args = p.parse_args()
    quick = args.quick
    args.sizes = args.sizes or (["tiny"] if quick else ["small", "paper"])
    args.batches = args.batches or ([64] if quick else [256, 2048])
    args.steps = args.steps or (5 if quick else 50)
    args.reps = args.reps or (1 if quick else 3)
    args.data = args.data or (4096 if quick else 100_000)
    args.act_batch = args.act_batch or (16 if quick else 256)
    out = Path(
        args.out
        or (
            Path(tempfile.gettempdir()) / "psec_train_throughput_quick.json"
            if quick
            else RESULTS / "psec_train_throughput.json"
        )
    )

    data = OfflineData.synthetic(args.data, OBS, ACT)
    rows, sizes = [], {}
    for size in args.sizes:
        setup = Setup(size, data)
        sizes[size] = setup.sizes()
        print(
            f"{size}: noise net {sizes[size]['noise_net_params']:,} params, LoRA skill "
            f"{sizes[size]['lora_skill_params']:,}, critic {sizes[size]['critic_params']:,}",
            flush=True,
        )
        for stage in args.stages:
            if stage == "act":
                measured = [
                    measure_act(setup, 1, args.candidates, args.reps),
                    measure_act(setup, args.act_batch, args.candidates, args.reps),
                    measure_sample(setup, args.act_batch * args.candidates, args.reps),
                ]
            else:
                measured = [measure_stage(setup, stage, b, args.steps, args.seeds, args.reps) for b in args.batches]
            for row in measured:
                rows.append(row)
                report(row)
    print()
    columns = [
        "stage",
        "size",
        "batch",
        *(["seeds"] if args.seeds > 1 else []),
        "rate",
        "unit",
        "compile_s",
        "official",
        "x_official",
        "target",
        "meets",
    ]
    print(runs.format_table(rows, columns, ".4g"))
    path = bench.write_results(
        out.stem,
        rows,
        {
            "args": vars(args),
            "obs_dim": OBS,
            "act_dim": ACT,
            "sizes": sizes,
            "official": {f"{k[0]}/{k[1]}": v for k, v in OFFICIAL.items()},
        },
        directory=out.parent,
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
