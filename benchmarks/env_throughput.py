"""Environment steps per second and compile time of every psec_jax environment, in one run.

    .venv/bin/python benchmarks/env_throughput.py                   # all envs, batch 128 (~10 min here)
    .venv/bin/python benchmarks/env_throughput.py --envs hopper --batch 32 128 --variants gravity_2

For each (env, batch): `jit(lax.scan(vmap(env.step)))` over `--steps` steps with uniform random
actions (no resets inside; episodes are not terminated by time), timed as the best of a few calls
after compilation; compile time is the first call minus one timed call.
Prints a table and writes benchmarks/results/env_throughput.json.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax

from psec_jax import bench, envs, runs

RESULTS = Path(__file__).resolve().parent / "results"  # where every benchmark writes its JSON


def measure(env: envs.Env, batch: int, steps: int) -> dict:
    @jax.jit
    def run(key):
        state = jax.vmap(env.reset)(jax.random.split(key, batch))

        def body(s, k):
            a = jax.random.uniform(k, (batch, env.action_size), minval=-1.0, maxval=1.0)
            s = jax.vmap(env.step)(s, a)
            return s, s.reward.mean()

        return jax.lax.scan(body, state, jax.random.split(key, steps))[1]

    key = jax.random.PRNGKey(0)
    t0 = time.perf_counter()
    jax.block_until_ready(run(key))
    first = time.perf_counter() - t0
    best = bench.time_call(run, key, reps=3)
    return {
        "env": env.id,
        "batch": batch,
        "steps": steps,
        "compile_s": max(first - best, 0.0),
        "steps_per_s": batch * steps / best,
        "ms_per_batched_step": 1e3 * best / steps,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--envs", nargs="*", default=envs.names(), help="environment names")
    p.add_argument("--variants", nargs="*", default=[], help="also time these dynamics variants")
    p.add_argument("--batch", nargs="*", type=int, default=[128], help="parallel environments")
    p.add_argument("--steps", type=int, default=100, help="steps per timed call")
    p.add_argument("--backend", default="generalized", help="Brax pipeline for the Brax bodies")
    args = p.parse_args()
    rows = []
    for name in args.envs:
        for variant in ["nominal", *args.variants]:
            env = envs.make(name, variant, backend=args.backend)
            for batch in args.batch:
                row = measure(env, batch, args.steps)
                rows.append(row)
                print(
                    f"{row['env']:<28} batch {batch:<5} {row['steps_per_s']:>9.0f} steps/s  "
                    f"compile {row['compile_s']:.1f} s",
                    flush=True,
                )
    print()
    print(runs.format_table(rows, ["env", "batch", "steps_per_s", "compile_s", "ms_per_batched_step"], ".4g"))
    path = bench.write_results("env_throughput", rows, {"args": vars(args)}, directory=RESULTS)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
