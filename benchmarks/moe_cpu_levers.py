"""CPU levers for the MoE layer, A/B: weight layout, allocator, XLA:CPU flags, each against the PyTorch loop.

    .venv/bin/python benchmarks/moe_cpu_levers.py                  # T 256, 1k, 4k; every lever
    .venv/bin/python benchmarks/moe_cpu_levers.py --T 256 --levers stacked split

At the issue's target point (E=16, d=1024, f=2816, fp32, top-p 0.4) each lever runs in its own
process (allocator settings and XLA flags are read when a process starts), timing the `dropless`
layer forward and forward+backward and, in the same process so that it gets the same allocator, the
paper's PyTorch loop (`moe_throughput.torch_loop`), the two timed in turns (`bench.time_interleaved`). Levers:

- `stacked` / `split`: expert weights stacked [E, ...] (sliced per expert inside the program) or a
  tuple of per-expert arrays (`moe.split_experts`), glibc's default allocator;
- `stacked+hugepages` / `split+hugepages`: the same with `GLIBC_TUNABLES=glibc.malloc.hugetlb=1`
  (malloc asks for transparent huge pages, so a fresh multi-MB buffer costs a few page faults
  instead of thousands: on this VM a first touch of fresh memory runs at ~6 GB/s, a reused buffer at
  ~50 GB/s, and XLA:CPU takes its outputs and temporaries from fresh memory on every call);
- `split+hugepages+<flag>`: XLA:CPU matmul options of jaxlib 0.10.2 (oneDNN / XNNPACK / YNNPACK dot
  fusion, XNNPACK off).

Prints a table and writes benchmarks/results/moe_cpu_levers.json (speedup = torch ms / dropless ms).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from moe_throughput import HUGEPAGES  # this script's directory is on sys.path

RESULTS = Path(__file__).resolve().parent / "results"  # where every benchmark writes its JSON
LEVERS = {  # name -> (layout, GLIBC_TUNABLES, XLA_FLAGS)
    "stacked": ("stacked", "", ""),
    "split": ("split", "", ""),
    "stacked+hugepages": ("stacked", HUGEPAGES, ""),
    "split+hugepages": ("split", HUGEPAGES, ""),
    "split+hugepages+onednn_dot": ("split", HUGEPAGES, "--xla_cpu_experimental_onednn_fusion_type=dot"),
    "split+hugepages+xnn_dot": ("split", HUGEPAGES, "--xla_cpu_experimental_xnn_fusion_type=dot"),
    "split+hugepages+ynn_dot": ("split", HUGEPAGES, "--xla_cpu_experimental_ynn_fusion_type=dot"),
    "split+hugepages+no_xnnpack": ("split", HUGEPAGES, "--xla_cpu_use_xnnpack=false"),
}


def child(layout: str, ts: list[int], reps: int) -> None:
    """Time dropless (in `layout`) and the torch loop at each T; one JSON row per (T, mode) on stdout."""
    import jax
    import jax.numpy as jnp
    import moe_throughput as mt

    from psec_jax import bench, moe

    e, d, f = 16, 1024, 2816
    cfg = mt.ROUTERS["top_p0.4"]
    params = moe.init_moe(jax.random.PRNGKey(0), d, f, e)
    mine = params if layout == "stacked" else {**params, "experts": moe.split_experts(params["experts"])}
    for t in ts:
        x = jax.random.normal(jax.random.PRNGKey(1), (t, d), jnp.float32)
        route = moe.route(x @ params["router"], cfg)
        k_mean = float(route.experts_per_token.mean())
        for grad in (False, True):
            calls = {"dropless": (mt.layer_fn(cfg, "dropless", k_mean, grad), (mine, x))}
            run = mt.torch_loop(params, x, route, grad)
            if run is not None:
                calls["torch"] = (run, ())
            best = bench.time_interleaved(calls, reps=reps)
            ms, torch_ms = 1e3 * best["dropless"], 1e3 * best["torch"] if run else None
            print(
                json.dumps(
                    {
                        "T": t,
                        "mode": "fwd+bwd" if grad else "fwd",
                        "dropless_ms": ms,
                        "torch_ms": torch_ms,
                        "speedup_vs_torch": torch_ms / ms if torch_ms else None,
                    }
                ),
                flush=True,
            )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--T", type=int, nargs="*", default=[256, 1024, 4096])
    p.add_argument("--levers", nargs="*", default=list(LEVERS), choices=list(LEVERS))
    p.add_argument("--reps", type=int, default=5, help="timed calls per measurement (the best is kept)")
    p.add_argument("--out", default="moe_cpu_levers")
    p.add_argument("--child", choices=["stacked", "split"], help=argparse.SUPPRESS)
    p.add_argument(
        "--allow_busy", action="store_true", help="keep ratios measured while other processes used the machine"
    )
    args = p.parse_args()
    if args.child:
        return child(args.child, args.T, args.reps)

    from psec_jax import bench, runs

    rows = []
    load = bench.LoadMonitor().start()  # the whole run (each lever's span is judged on its own too)
    for name in args.levers:
        layout, tunables, flags = LEVERS[name]
        env = {**os.environ, "GLIBC_TUNABLES": tunables, "XLA_FLAGS": flags}
        cmd = [sys.executable, __file__, "--child", layout, "--reps", str(args.reps), "--T", *map(str, args.T)]
        with bench.LoadMonitor() as span:  # the child's own CPU time is this process's (a waited child)
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
        lever_load = span.report()
        print(bench.describe_load(lever_load), flush=True)
        for line in out.splitlines():
            if line.startswith("{"):
                row = {
                    "lever": name,
                    "layout": layout,
                    "GLIBC_TUNABLES": tunables,
                    "XLA_FLAGS": flags,
                    **json.loads(line),
                    "machine_quiet": lever_load["quiet"],
                    "others_share": lever_load["others_share"],
                }
                if not (lever_load["quiet"] or args.allow_busy):  # a ratio from a busy machine is not evidence
                    row["speedup_vs_torch"] = None
                rows.append(row)
                print(
                    f"{name:<30} T={row['T']:<6} {row['mode']:<8} dropless {row['dropless_ms']:8.1f} ms  "
                    f"torch {row['torch_ms'] or float('nan'):8.1f} ms  {row['speedup_vs_torch'] or float('nan'):.2f}x",
                    flush=True,
                )
        bench.write_results(
            args.out, rows, {"args": vars(args), "complete": False}, directory=RESULTS, load=load.report()
        )
    print()
    print(runs.format_table(rows, ["lever", "T", "mode", "dropless_ms", "torch_ms", "speedup_vs_torch"], ".3g"))
    load.stop()
    print(bench.describe_load(load.report()))
    path = bench.write_results(
        args.out, rows, {"args": vars(args), "complete": True}, directory=RESULTS, load=load.report()
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
