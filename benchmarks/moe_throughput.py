"""MoE throughput: routing alone and the whole layer, every back-end, beside a PyTorch loop and the roofline.

    .venv/bin/python benchmarks/moe_throughput.py      # the issue's target point: E=16, d=1024, f=2816, all T
    .venv/bin/python benchmarks/moe_throughput.py --grid full     # T x E x d x router x back-end (long)
    .venv/bin/python benchmarks/moe_throughput.py --grid quick    # small shapes, a smoke run

Per (T, E, d): routing alone (router matmul + top-k / top-p) and the layer (routing + dispatch +
SwiGLU experts + combine), forward and forward+backward, for top-2, top-p(0.4) and top-1, with the
dense, capacity (factor 1.25, buffers sized for the route's mean experts per token), dropless and, on
CPU, `dropless-split` (dropless with the experts' weights as separate arrays, `moe.split_experts`) and
`ragged-blas` (the ragged back-end over MKL's sgemm, `psec_jax.kernels.blas_gmm`; when MKL is installed)
back-ends; routing plus grouping by expert, the jnp router and an argsort (`routing+argsort`) against
the fused Pallas kernel (`routing-fused`; interpret mode on CPU, so there only a correctness path).
Beside them, in the same run:
- `torch-loop`: the top-p paper's dispatch (a Python loop over experts gathering the tokens that
  chose each one) in PyTorch on CPU, with the same weights and routing decisions (optional: needs
  `torch`, e.g. `pip install torch --index-url https://download.pytorch.org/whl/cpu`);
- the roofline: max(activated-expert FLOPs / matmul FLOP/s, expert-weight bytes / memory bandwidth),
  both ceilings measured here (fp32 matmul 2048^3; a reduction over a 512 MB array) at the start and
  the end of the run, and the matmul also in turns with every set of layer rows; the best of all is
  the ceiling. Each row records the matmul ceiling of its own rounds (`matmul_ceiling`) and its ratio
  to the best (`machine_speed`): this shared machine's speed moved by up to 2x within a run, and a
  row timed in a slow spell has a lower roofline fraction for it. Weight bytes count the experts that
  received tokens. Backward counts 2x the forward FLOPs more and reads + writes the weights twice more.
Dense is skipped where running every expert on every token exceeds --dense_limit_gflop, capacity
where its buffers would exceed --memory_limit_gb (the 24 GB machine ran out at E=64, T=16k, top-p).
The JSON is rewritten after every shape (`"complete": false` until the run ends). By default the run
restarts itself with glibc's malloc asking for transparent huge pages (`--malloc default` does not;
see `use_hugepages` and the A/B in `moe_cpu_levers.py`); the setting is recorded in the JSON.
Prints a table and writes benchmarks/results/moe_throughput.json (`--out`, `--out_dir`).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
from importlib import metadata
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from psec_jax import bench, moe, runs
from psec_jax.kernels import blas_gmm
from psec_jax.routing import sort_assignments

RESULTS = Path(__file__).resolve().parent / "results"  # where every benchmark writes its JSON

ROUTERS = {
    "top2": moe.MoEConfig(router="top_k", k=2),
    "top_p0.4": moe.MoEConfig(router="top_p", p=0.4),
    "top1": moe.MoEConfig(router="top_k", k=1),
}


CEILING_N = 2048  # the matmul ceiling's size


def ceiling_matmul():
    """(jitted fn, args) of the matmul ceiling: an fp32 [N, N] x [N, N] matmul, 2 N^3 FLOPs."""
    return jax.jit(lambda a: a @ a), (jnp.ones((CEILING_N, CEILING_N), jnp.float32),)


def ceilings() -> dict[str, float]:
    """Measured fp32 matmul FLOP/s and memory read bandwidth (bytes/s) of this device (best of many
    calls: noise on a shared machine only ever lowers them); with MKL installed, the faster of XLA's
    and MKL's matmul (each also recorded)."""
    n = CEILING_N
    fn, args = ceiling_matmul()
    t = bench.time_call(fn, *args, reps=20, min_seconds=2.0)
    big = jnp.ones((128 * 1024 * 1024,), jnp.float32)  # 512 MB
    tb = bench.time_call(jax.jit(jnp.sum), big, reps=20, min_seconds=2.0)
    out = {"matmul_flops": 2 * n**3 / t, "bandwidth_bytes": big.nbytes / tb}
    if blas_gmm.unavailable_reason() is None and jax.default_backend() == "cpu":  # MKL's matmul beats XLA's here
        mkl = jax.jit(lambda a: blas_gmm.gmm(a, a[None], jnp.array([n], jnp.int32)))
        out["matmul_flops_xla"] = out["matmul_flops"]
        out["matmul_flops_blas"] = 2 * n**3 / bench.time_call(mkl, *args, reps=20, min_seconds=2.0)
        out["matmul_flops"] = max(out["matmul_flops"], out["matmul_flops_blas"])
    return out


def add_roofline(row: dict, ceil: dict[str, float]) -> None:
    """roofline_fraction = max(FLOPs / matmul FLOP/s, weight bytes / bandwidth) / measured time, with
    the run's best ceilings (so never flattering); machine_speed = the matmul ceiling timed in the
    same rounds as the row over that best (below 1: the shared machine was slow while the row ran)."""
    if "flops" in row:
        roof = max(row["flops"] / ceil["matmul_flops"], row["bytes"] / ceil["bandwidth_bytes"])
        if "matmul_ceiling" in row:
            row["machine_speed"] = row["matmul_ceiling"] / ceil["matmul_flops"]
        row["roofline_fraction"] = roof / (row["ms"] / 1e3)


SPLIT = "dropless-split"  # dropless with the split expert layout (`moe.split_experts`)
RAGGED_BLAS = "ragged-blas"  # the ragged back-end over MKL's sgemm (`psec_jax.kernels.blas_gmm`)
HUGEPAGES = "glibc.malloc.hugetlb=1"


def layer_fn(cfg: moe.MoEConfig, backend: str, k_mean: float, grad: bool):
    """The jitted layer (forward, or the gradient of a scalar loss to params and x) for a back-end;
    for `dropless-split`, call it with `split_params(params)`."""
    named = {SPLIT: {"backend": "dropless"}, RAGGED_BLAS: {"backend": "ragged", "grouped_matmul": "blas"}}
    config = dataclasses.replace(cfg, **named.get(backend, {"backend": backend}), capacity_k=k_mean)

    def fwd(params, x):
        y, aux, _ = moe.moe_apply(params, x, config)
        return y, aux

    if not grad:
        return jax.jit(lambda p, x: fwd(p, x)[0])

    def loss(params, x):
        y, aux = fwd(params, x)
        return jnp.mean(y**2) + aux["total"]

    return jax.jit(jax.grad(loss, argnums=(0, 1)))


def torch_loop(params, x, route, grad: bool):
    """The paper's loop dispatch in PyTorch; returns a zero-argument callable to time, or None.

    As in the official code (and Hugging Face's Mixtral): one weight tensor set per expert (an
    nn.ModuleList there), a loop over experts gathering the tokens that chose each one, and an
    in-place index_add_ of the weighted outputs. With grad, one call is forward + backward to the
    input and every expert's weights (gradients reset each call, as in a training step).
    """
    try:
        import torch
    except ImportError:
        return None
    t = lambda a: torch.from_numpy(np.array(a, np.float32))
    experts = [
        {k: t(v[e]).requires_grad_(grad) for k, v in params["experts"].items()} for e in range(route.num_experts)
    ]
    xt = t(x).requires_grad_(grad)
    ids, mask = np.asarray(route.expert_ids), np.asarray(route.mask)
    weights = t(route.weights)
    per_expert = []
    for e in range(route.num_experts):
        tok, slot = np.nonzero(mask & (ids == e))
        if len(tok):
            per_expert.append((experts[e], torch.from_numpy(tok), torch.from_numpy(slot)))
    leaves = [xt] + [w for ex in experts for w in ex.values()]

    def run():
        with torch.set_grad_enabled(grad):
            out = torch.zeros_like(xt)
            for w, tok, slot in per_expert:
                h = xt[tok]
                y = (torch.nn.functional.silu(h @ w["gate"]) * (h @ w["up"])) @ w["down"]
                out.index_add_(0, tok, y * weights[tok, slot][:, None])
            if grad:
                for leaf in leaves:
                    leaf.grad = None
                out.square().mean().backward()
            return out

    return run


def split_params(params: dict) -> dict:
    """The layer's params with the experts in the split layout (a tuple of per-expert pytrees)."""
    return {**params, "experts": moe.split_experts(params["experts"])}


def use_hugepages() -> None:
    """Restart this process with glibc's malloc asking for transparent huge pages, unless it already
    does: XLA:CPU takes its outputs and temporaries from fresh memory on every call, and on this VM a
    first touch of fresh memory runs at ~6 GB/s against ~50 GB/s for reused memory (A/B in
    `moe_cpu_levers.py`). The torch loop, timed in the same process, gets the same allocator."""
    import sys

    if HUGEPAGES not in os.environ.get("GLIBC_TUNABLES", "") and sys.platform.startswith("linux"):
        tunables = ":".join(t for t in (os.environ.get("GLIBC_TUNABLES"), HUGEPAGES) if t)
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "GLIBC_TUNABLES": tunables})


def d_ff_of(d: int) -> int:
    """Expert hidden size: the paper's 2816 at d = 1024, else 2.75 d rounded to a multiple of 64."""
    return 2816 if d == 1024 else int(round(2.75 * d / 64)) * 64


def torch_version() -> str | None:
    """The installed PyTorch's version (None without it)."""
    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return None


def summarize(rows: list[dict], ratios: bool = True) -> list[dict]:
    """The issue's targets, per (T, E, d): best back-end vs the torch loop (only with ``ratios``: a run on a
    quiet machine), its roofline fraction, and what top-p costs over top-k at the same mean experts per
    token."""
    out = []
    by = lambda **kw: [r for r in rows if all(r[k] == v for k, v in kw.items())]
    for t, e, d in sorted({(r["T"], r["E"], r["d"]) for r in rows}):
        for mode in ("fwd", "fwd+bwd"):
            layer = [
                r
                for r in by(T=t, E=e, d=d, router="top_p0.4", mode=mode)
                if not r["backend"].startswith(("routing", "torch-loop"))
            ]
            torch_rows = by(T=t, E=e, d=d, router="top_p0.4", mode=mode, backend="torch-loop")
            if not layer:
                continue
            best = min(layer, key=lambda r: r["ms"])
            row = {
                "T": t,
                "E": e,
                "d": d,
                "mode": mode,
                "best_backend": best["backend"],
                "best_ms": best["ms"],
                "roofline_fraction": best["roofline_fraction"],
                "machine_speed": best.get("machine_speed"),
            }
            if torch_rows and ratios:
                row["speedup_vs_torch"] = torch_rows[0]["ms"] / best["ms"]
            # layer cost per activated (token, expert) pair, top-p over top-2, best back-end each
            top2 = [
                r
                for r in by(T=t, E=e, d=d, router="top2", mode=mode)
                if not r["backend"].startswith(("routing", "torch-loop"))
            ]
            if top2:
                b2 = min(top2, key=lambda r: r["ms"])
                row["top_p_vs_top2_per_expert"] = (best["ms"] / best["experts_per_token"]) / (b2["ms"] / 2.0)
            if mode == "fwd":
                same_k = by(T=t, E=e, d=d, router="top_p0.4", backend="routing-only(top_k same k)")
                mine = by(T=t, E=e, d=d, router="top_p0.4", backend="routing-only")
                if same_k and mine:
                    row["routing_top_p_vs_top_k_same_k"] = mine[0]["ms"] / same_k[0]["ms"]
                fused = by(T=t, E=e, d=d, router="top_p0.4", backend="routing-fused")
                argsort = by(T=t, E=e, d=d, router="top_p0.4", backend="routing+argsort")
                if fused and argsort and not fused[0]["interpret"]:  # > 1: the kernel is faster
                    row["routing_fused_speedup"] = argsort[0]["ms"] / fused[0]["ms"]
            out.append(row)
    return out


def grid(name: str):
    if name == "quick":
        return [(t, e, d) for t, e, d in itertools.product([256, 1024], [8], [256])]
    if name == "target":
        return [(t, 16, 1024) for t in (256, 1024, 4096, 16384)]
    return list(itertools.product([256, 1024, 4096, 16384], [8, 16, 64], [256, 1024]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--grid", choices=["quick", "target", "full"], default="target")
    cpu = jax.default_backend() == "cpu"
    one_device = [b for b, info in moe.BACKENDS.items() if not info.mesh]
    blas = blas_gmm.unavailable_reason() is None
    default_backends = [b for b in one_device if b != "ragged" or not cpu] + ([SPLIT] if cpu else [])
    default_backends += [RAGGED_BLAS] if cpu and blas else []
    p.add_argument(
        "--backends",
        nargs="*",
        default=default_backends,
        help="dispatch back-ends (ragged is left out on CPU, where ragged_dot is ~100x slow; "
        f"{SPLIT}: dropless with per-expert weight arrays, the CPU layout; {RAGGED_BLAS}: ragged over MKL, "
        "on CPU when MKL and a C++ compiler are installed)",
    )
    p.add_argument(
        "--malloc",
        choices=["hugepages", "default"],
        default="hugepages",
        help=f"hugepages: rerun under GLIBC_TUNABLES={HUGEPAGES} (Linux; see use_hugepages)",
    )
    p.add_argument("--routers", nargs="*", default=list(ROUTERS))
    p.add_argument("--tokens", type=int, nargs="*", help="only these T of the grid")
    p.add_argument("--dense_limit_gflop", type=float, default=400.0)
    p.add_argument("--no_torch", action="store_true")
    p.add_argument(
        "--memory_limit_gb",
        type=float,
        default=16.0,
        help="skip capacity runs whose expert buffers [E, C, d_ff] (x4 with the backward) exceed this",
    )
    p.add_argument("--routing_only", action="store_true", help="time the routers only (seconds)")
    p.add_argument(
        "--no_fused",
        action="store_true",
        help="skip the fused routing kernel (on CPU it runs in Pallas interpret mode: a correctness "
        "path, its time is not the kernel's)",
    )
    p.add_argument("--out", default="moe_throughput", help="results file name (without .json) under --out_dir")
    p.add_argument("--out_dir", default=str(RESULTS), help="directory of the results file")
    p.add_argument(
        "--allow_busy",
        action="store_true",
        help="report ratios to the torch loop even when other processes used the machine during the run",
    )
    args = p.parse_args()
    load = bench.LoadMonitor().start()  # the whole run: a ratio is evidence only from a quiet machine
    if args.malloc == "hugepages":
        use_hugepages()
    ceil = ceilings()
    print(
        f"ceilings: matmul {ceil['matmul_flops'] / 1e9:.0f} GFLOP/s, "
        f"bandwidth {ceil['bandwidth_bytes'] / 1e9:.1f} GB/s",
        flush=True,
    )
    rows = []
    for t, e, d in [g for g in grid(args.grid) if not args.tokens or g[0] in args.tokens]:
        f = d_ff_of(d)
        params = moe.init_moe(jax.random.PRNGKey(0), d, f, e)
        x = jax.random.normal(jax.random.PRNGKey(1), (t, d), jnp.float32)
        expert_bytes = sum(a.nbytes for a in jax.tree.leaves(params["experts"])) / e
        for rname in args.routers:
            cfg = ROUTERS[rname]
            logits = x @ params["router"]
            route = moe.route(logits, cfg)
            k_mean = float(route.experts_per_token.mean())
            route_fn = jax.jit(lambda p, x: moe.route(x @ p["router"], cfg).weights)
            t_route = bench.time_call(route_fn, params, x, reps=10)
            base = {"T": t, "E": e, "d": d, "f": f, "router": rname, "experts_per_token": k_mean}
            rows.append(
                {**base, "backend": "routing-only", "mode": "fwd", "ms": 1e3 * t_route, "tokens_per_s": t / t_route}
            )
            if not args.no_fused and jax.default_backend() in ("cpu", "tpu"):  # the kernel does not lower for GPU yet
                fused = dataclasses.replace(cfg, dispatch="fused")
                group_fn = jax.jit(lambda p, x: sort_assignments(moe.route(x @ p["router"], cfg)).order)
                fused_fn = jax.jit(lambda p, x: sort_assignments(moe.route(x @ p["router"], fused)).order)
                for name, fn in (("routing+argsort", group_fn), ("routing-fused", fused_fn)):
                    secs = bench.time_call(fn, params, x, reps=10)
                    rows.append(
                        {
                            **base,
                            "backend": name,
                            "mode": "fwd",
                            "ms": 1e3 * secs,
                            "tokens_per_s": t / secs,
                            "interpret": name == "routing-fused" and jax.default_backend() == "cpu",
                        }
                    )
            if cfg.router == "top_p":  # top-k routing with k = top-p's mean experts per token, rounded up
                k_same = min(e, int(np.ceil(k_mean)))
                same_fn = jax.jit(lambda p, x: moe.top_k(x @ p["router"], k_same).weights)
                t_same = bench.time_call(same_fn, params, x, reps=10)
                rows.append(
                    {
                        **base,
                        "backend": "routing-only(top_k same k)",
                        "mode": "fwd",
                        "ms": 1e3 * t_same,
                        "tokens_per_s": t / t_same,
                        "k": k_same,
                    }
                )
            flops = 6 * d * f * t * k_mean  # SwiGLU: three [d, f] matmuls per activated expert
            active = int(np.unique(np.asarray(route.expert_ids)[np.asarray(route.mask)]).size)
            for grad in (False, True):
                mode = "fwd+bwd" if grad else "fwd"
                if args.routing_only:
                    break
                cap_gb = 4 * e * moe.capacity_of(t, e, 1.25, k_mean) * f * 4 * (4 if grad else 1) / 1e9
                candidates = [
                    b
                    for b in args.backends
                    if not (b == "dense" and 6 * d * f * t * e * (3 if grad else 1) > args.dense_limit_gflop * 1e9)
                    and not (b == "capacity" and cap_gb > args.memory_limit_gb)
                ]
                calls = {
                    b: (layer_fn(cfg, b, k_mean, grad), (split_params(params) if b == SPLIT else params, x))
                    for b in candidates
                }
                run = None if args.no_torch else torch_loop(params, x, route, grad)
                if run is not None:
                    calls["torch-loop"] = (run, ())
                # in turns (steadier ratios); fast rows get more rounds (15 s of them), slow ones stop after 3
                calls["ceiling"] = ceiling_matmul()
                timings = bench.time_interleaved(calls, reps=3, slow_seconds=3.0, min_seconds=15.0, probes=("ceiling",))
                local_peak = 2 * CEILING_N**3 / timings.pop("ceiling")
                for backend, secs in timings.items():
                    row = {
                        **base,
                        "backend": backend,
                        "mode": mode,
                        "ms": 1e3 * secs,
                        "tokens_per_s": t / secs,
                        "gflop_per_s": flops * (3 if grad else 1) / secs / 1e9,
                        "flops": flops * (3 if grad else 1),
                        "bytes": active * expert_bytes * (3 if grad else 1),
                        "matmul_ceiling": local_peak,
                    }
                    add_roofline(row, ceil)
                    rows.append(row)
                    print(
                        f"T={t:<6} E={e:<3} d={d:<5} {rname:<9} {backend:<12} {mode:<8} "
                        f"{row['ms']:9.1f} ms {row['tokens_per_s']:10.0f} tok/s  "
                        f"{row['roofline_fraction']:.2f} of roofline",
                        flush=True,
                    )
        # written after every shape, so a run that dies keeps what it measured
        bench.write_results(
            args.out,
            rows,
            {
                "ceilings": ceil,
                "args": vars(args),
                "complete": False,
                "GLIBC_TUNABLES": os.environ.get("GLIBC_TUNABLES", ""),
                "torch": torch_version(),
            },
            directory=args.out_dir,
            load=load.report(),
        )
    end = ceilings()  # again at the end; the best of these and the in-turn probes is the ceiling
    ceil = {k: max(ceil[k], end[k]) for k in ceil}
    ceil["matmul_flops"] = max([ceil["matmul_flops"]] + [r["matmul_ceiling"] for r in rows if "matmul_ceiling" in r])
    for row in rows:
        add_roofline(row, ceil)
    print()
    print(
        runs.format_table(
            rows,
            [
                "T",
                "E",
                "d",
                "router",
                "experts_per_token",
                "backend",
                "mode",
                "ms",
                "tokens_per_s",
                "gflop_per_s",
                "roofline_fraction",
                "machine_speed",
            ],
            ".4g",
        )
    )
    load.stop()
    report = load.report()
    print("\n" + bench.describe_load(report))
    if not report["quiet"] and not args.allow_busy:
        print("ratios to the torch loop are left out of the summary (rerun on an idle machine, or --allow_busy)")
    summary = summarize(rows, ratios=report["quiet"] or args.allow_busy)
    print("\nTargets (top-p 0.4; best back-end per row):")
    print(
        runs.format_table(
            summary,
            [
                "T",
                "E",
                "d",
                "mode",
                "best_backend",
                "best_ms",
                "speedup_vs_torch",
                "roofline_fraction",
                "machine_speed",
                "top_p_vs_top2_per_expert",
                "routing_top_p_vs_top_k_same_k",
                "routing_fused_speedup",
            ],
            ".3g",
        )
    )
    path = bench.write_results(
        args.out,
        rows,
        {
            "ceilings": ceil,
            "args": vars(args),
            "summary": summary,
            "complete": True,
            "GLIBC_TUNABLES": os.environ.get("GLIBC_TUNABLES", ""),
            "torch": torch_version(),
            "ratios_reported": report["quiet"] or args.allow_busy,
        },
        directory=args.out_dir,
        load=report,
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
