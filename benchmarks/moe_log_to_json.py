"""Rebuild `moe_throughput` rows from the per-row lines a run printed (for a run that was killed).

    .venv/bin/python benchmarks/moe_log_to_json.py LOG --routing benchmarks/results/moe_routing.json \
        --out moe_throughput

Each layer line `T=.. E=.. d=.. ROUTER BACKEND MODE MS ms TOK tok/s FRAC of roofline` becomes a row;
the roofline fraction is the one printed (ceilings measured at the start of that run, printed on
its first line). Routing-only rows and experts-per-token come from a `--routing_only` run of the
same grid. Writes benchmarks/results/<out>.json with the summary table of moe_throughput.py.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from moe_throughput import d_ff_of, summarize  # noqa: E402

from psec_jax import bench, runs  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"  # where every benchmark writes its JSON

LINE = re.compile(
    r"^T=(\d+)\s+E=(\d+)\s+d=(\d+)\s+(\S+)\s+(\S+)\s+(fwd\+bwd|fwd)\s+([\d.]+) ms\s+(\d+) tok/s\s+([\d.]+) of roofline"
)
CEIL = re.compile(r"^ceilings: matmul (\d+) GFLOP/s, bandwidth ([\d.]+) GB/s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("log")
    p.add_argument("--routing", required=True, help="results JSON of a --routing_only run")
    p.add_argument("--out", default="moe_throughput")
    args = p.parse_args()
    routing = json.loads(Path(args.routing).read_text())["rows"]
    k_of = {(r["T"], r["E"], r["d"], r["router"]): r["experts_per_token"] for r in routing}
    rows, ceil = list(routing), None
    for line in Path(args.log).read_text().splitlines():
        if (m := CEIL.match(line)) and ceil is None:
            ceil = {"matmul_flops": float(m[1]) * 1e9, "bandwidth_bytes": float(m[2]) * 1e9}
        if m := LINE.match(line):
            t, e, d = int(m[1]), int(m[2]), int(m[3])
            rows.append(
                {
                    "T": t,
                    "E": e,
                    "d": d,
                    "f": d_ff_of(d),
                    "router": m[4],
                    "experts_per_token": k_of[(t, e, d, m[4])],
                    "backend": m[5],
                    "mode": m[6],
                    "ms": float(m[7]),
                    "tokens_per_s": float(m[8]),
                    "roofline_fraction": float(m[9]),
                }
            )
    summary = summarize(rows)
    print(runs.format_table(summary, None, ".3g"))
    path = bench.write_results(
        args.out,
        rows,
        {
            "ceilings_at_start": ceil,
            "summary": summary,
            "source": f"rebuilt from the printed rows of {args.log}",
            "complete": False,
        },
        directory=RESULTS,
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
