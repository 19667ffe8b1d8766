"""Forward time of K composed LoRA skills vs the base dense layer, three ways, in one run.

    .venv/bin/python benchmarks/lora_compose.py            # full grid (~10 min on the 2-core CPU)
    .venv/bin/python benchmarks/lora_compose.py --quick    # a few points

For a dense layer ``d -> d`` and per-example skill weights ``w: [batch, K]``:
- base:      ``x W + b``
- factored:  ``psec_jax.lora.lora_dense`` (rank-space mixing: one ``[d, K*r]`` and one ``[K*r, d]`` matmul)
- merge:     (a) per-example merged kernels ``W + sum_k w_bk A_k B_k`` then ``x_b W_b`` (skipped where the
             ``[batch, d, d]`` kernels would exceed --merge_limit_gb)
- output:    (b) mixing in output space: every skill's ``(x A_k) B_k`` as ``[batch, K, d]``, then the
             weighted sum over K
The FLOP model of the factored overhead is ``1 + 2Kr/d``; the target is a measured overhead within
1.25x of it for batch >= 256. Prints a table and writes benchmarks/results/lora_compose.json.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import jax
import jax.numpy as jnp

from psec_jax import bench, lora, runs

RESULTS = Path(__file__).resolve().parent / "results"  # where every benchmark writes its JSON


def _fns():
    base = jax.jit(lambda x, w, b: x @ w + b)
    factored = jax.jit(lambda x, w, b, a, bb, c: lora.lora_dense(x, w, b, lora.LoRAPair(a, bb), c))

    @jax.jit
    def merge(x, w, b, a, bb, c):
        kernels = w + jnp.einsum("nk,kir,kro->nio", c, a, bb)  # [batch, d, d]
        return jnp.einsum("ni,nio->no", x, kernels) + b

    @jax.jit
    def output(x, w, b, a, bb, c):
        per_skill = jnp.einsum("ni,kir->nkr", x, a)
        per_skill = jnp.einsum("nkr,kro->nko", per_skill, bb)  # [batch, K, d]
        return x @ w + b + jnp.einsum("nk,nko->no", c, per_skill)

    return base, factored, merge, output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a handful of points instead of the full grid")
    parser.add_argument("--merge_limit_gb", type=float, default=1.0, help="skip per-example merging above this")
    parser.add_argument("--out", default="lora_compose", help="result file name in benchmarks/results/")
    args = parser.parse_args()

    ks, ranks, dims, batches = [1, 2, 4, 8, 16, 64], [4, 8, 16], [256, 1024], [256, 1024, 4096]
    if args.quick:
        ks, ranks, dims, batches = [1, 8], [8], [256], [256]
    base_fn, factored_fn, merge_fn, output_fn = _fns()
    rows = []
    for d, batch in itertools.product(dims, batches):
        key = jax.random.key(d * 7919 + batch)
        kx, kw = jax.random.split(key)
        x = jax.random.normal(kx, (batch, d))
        w = jax.random.normal(kw, (d, d)) / d**0.5
        b = jnp.zeros((d,))
        t_base = bench.time_call(base_fn, x, w, b)
        for k, r in itertools.product(ks, ranks):
            ka, kb, kc = jax.random.split(jax.random.fold_in(key, k * 100 + r), 3)
            a = jax.random.normal(ka, (k, d, r)) / d**0.5
            bb = jax.random.normal(kb, (k, r, d)) / r**0.5
            c = jax.random.uniform(kc, (batch, k))
            t_fact = bench.time_call(factored_fn, x, w, b, a, bb, c)
            t_out = bench.time_call(output_fn, x, w, b, a, bb, c)
            merge_gb = batch * d * d * 4 / 1e9
            t_merge = bench.time_call(merge_fn, x, w, b, a, bb, c, reps=2) if merge_gb <= args.merge_limit_gb else None
            model = 1 + 2 * k * r / d
            overhead = t_fact / t_base
            rows.append(
                {
                    "d": d,
                    "batch": batch,
                    "K": k,
                    "r": r,
                    "base_ms": 1e3 * t_base,
                    "factored_ms": 1e3 * t_fact,
                    "merge_ms": None if t_merge is None else 1e3 * t_merge,
                    "output_ms": 1e3 * t_out,
                    "overhead": overhead,
                    "flop_model": model,
                    "bound": 1.25 * model,
                    "within_target": overhead <= 1.25 * model,
                }
            )
            row = rows[-1]
            print(
                f"d={d:5d} batch={batch:5d} K={k:3d} r={r:3d}  base {row['base_ms']:8.3f} ms  "
                f"factored {row['factored_ms']:8.3f} ms  x{overhead:5.2f} (model {model:5.2f})  "
                f"output {row['output_ms']:8.3f} ms  merge "
                f"{'-' if t_merge is None else format(1e3 * t_merge, '.1f')} ms",
                flush=True,
            )
    table_rows = [{**r, "merge_ms": "skipped" if r["merge_ms"] is None else r["merge_ms"]} for r in rows]
    print()
    print(runs.format_table(table_rows, floatfmt=".3g"))
    met = sum(r["within_target"] for r in rows)
    worst = max(rows, key=lambda r: r["overhead"] / r["bound"])
    summary = {
        "within_target": f"{met}/{len(rows)}",
        "worst_overhead_over_bound": worst["overhead"] / worst["bound"],
        "worst_point": {k: worst[k] for k in ("d", "batch", "K", "r", "overhead", "flop_model")},
    }
    print(
        f"\nfactored overhead within 1.25 x (1 + 2Kr/d): {met}/{len(rows)} points; worst "
        f"{summary['worst_point']} at {summary['worst_overhead_over_bound']:.2f} x the bound"
    )
    path = bench.write_results(args.out, rows, {"summary": summary}, directory=RESULTS)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
