"""LM training throughput, psec_jax against the same model in PyTorch, timed in turns on one machine.

    .venv/bin/python benchmarks/lm_train_throughput.py                          # small and medium presets
    .venv/bin/python benchmarks/lm_train_throughput.py --presets tiny --steps 2 --sides jax --out_dir /tmp

For each preset and router (top1, top2, top_p at the config's p) one timed call is `--steps` training
steps (random tokens at the preset's batch shape, fresh weights, the experiment's optimizer):

- "jax": `Trainer.chunk` of psec_jax.models.train (one jitted `lax.scan`), the config's back-end;
- "torch": `benchmarks/torch_lm.py`, the same model from the same weights (PyTorch eager; attention by
  `scaled_dot_product_attention`, the MoE by the official code's loop over experts), AdamW with the
  same schedule, clipping and decay mask; `tests/test_lm_torch_parity.py` checks it gives the same
  loss, gradients and post-step loss;
- "torch_compile": the same with `torch.compile` on the model (when it compiles here).

Both sides use every core (XLA's pool; `torch.set_num_threads(os.cpu_count())`). Also timed in the same
rounds: the fp32 matmul ceiling of each library (2048^3). Model FLOPs per step = 3 x forward matmul
FLOPs (attention projections, router, the activated experts at the run's measured experts per token,
the T x T attention scores and values, the output projection), so `fraction_of_ceiling` is the share of
XLA's (or MKL's) best matmul speed the step reaches. Ratios between sides are omitted when other
processes used the machine during the run, unless `--allow_busy`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from lm_moe_throughput import random_batches  # noqa: E402  (random tokens at the config's batch shape)

from psec_jax import bench  # noqa: E402
from psec_jax.configs import lm_moe as lm_config  # noqa: E402
from psec_jax.models import pipeline  # noqa: E402
from psec_jax.models import train as lm_train  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
CEILING_N = 2048


def step_flops(spec, tokens_per_row: int, rows: int, experts_per_token: float) -> float:
    """Training FLOPs of one step: 3 x the forward's matmul FLOPs (forward + two backward matmuls each)."""
    d, f, e, layers = spec.d_model, spec.d_ff_expert, spec.num_experts, spec.num_layers
    per_token_layer = 2 * (4 * d * d + d * e + experts_per_token * 3 * d * f) + 2 * 2 * tokens_per_row * d
    forward = rows * tokens_per_row * (layers * per_token_layer + 2 * d * spec.vocab_size)
    return 3 * forward


def jax_side(config, router: str, batches: pipeline.Batch, scan_unroll: int | None):
    """(jitted call of `steps` training steps, its args, mean experts per token in the run); scan_unroll:
    layer groups per layer-scan iteration, 0 = all, None = the config's (`config.model.scan_unroll`)."""
    if scan_unroll is not None:
        with config.unlocked():
            config.model.scan_unroll = scan_unroll  # 0: all, as `train.model_spec` reads it
    trainer = lm_train.make_train(config, router)
    state = trainer.init(jax.random.key(0))
    p = jnp.float32(config.router.p)
    fn = jax.jit(trainer.chunk)
    _, metrics = fn(state, batches, p)
    return fn, (state, batches, p), float(metrics["experts"])


def torch_side(config, router: str, batches: pipeline.Batch, compile_model: bool):
    """(callable running the same `steps` training steps in PyTorch, its args, compile seconds or None)."""
    import torch
    import torch_lm

    trainer = lm_train.make_train(config, router)
    params = jax.device_get(trainer.init(jax.random.key(0)).params)
    model = torch_lm.TorchLM.from_jax(params, trainer.spec)
    opt, schedule = torch_lm.adamw_like_optax(model, config)
    as_torch = lambda a, dtype: torch.from_numpy(np.asarray(a).astype(dtype))
    data = [
        (as_torch(i, np.int64), as_torch(t, np.int64), as_torch(w, np.float32))
        for i, t, w in zip(batches.inputs, batches.targets, batches.weights)
    ]
    compile_s = None
    if compile_model:
        start = time.perf_counter()
        model.forward = torch.compile(model.forward, dynamic=True)
        torch_lm.train_step(model, opt, schedule, config.optim.clip_norm, *data[0])  # compiles
        compile_s = time.perf_counter() - start

    def run():
        for batch in data:
            loss = torch_lm.train_step(model, opt, schedule, config.optim.clip_norm, *batch)
        return loss

    return run, (), compile_s


def ceiling_calls() -> dict:
    """The fp32 [N, N] x [N, N] matmul of each library, to time in the same rounds."""
    x = jax.random.normal(jax.random.key(0), (CEILING_N, CEILING_N), jnp.float32)
    calls = {"ceiling_xla": (jax.jit(jnp.matmul), (x, x))}
    try:
        import torch

        xt = torch.from_numpy(np.array(x))
        calls["ceiling_torch"] = (lambda: xt @ xt, ())
    except ImportError:
        pass
    return calls


def run_preset(preset: str, args) -> list[dict]:
    config = lm_config.get_config(preset)
    with config.unlocked():
        config.train.num_steps = max(config.train.num_steps, 1000)  # the schedule's length; no step decays to 0
    batches = random_batches(config, args.steps)
    tokens = args.steps * config.data.batch_size * config.data.seq_len
    rows = []
    for router in args.routers:
        calls, compile_s, jax_sides = ceiling_calls(), {}, []
        for unroll in args.scan_unroll if "jax" in args.sides else args.scan_unroll[:1]:
            fn, fargs, experts = jax_side(config, router, batches, unroll)
            if "jax" in args.sides:
                jax_sides.append("jax" if len(args.scan_unroll) == 1 else f"jax_unroll{unroll or 'all'}")
                calls[jax_sides[-1]] = (fn, fargs)
        sides = jax_sides + [s for s in args.sides if s != "jax"]
        for side in ("torch", "torch_compile"):
            if side in args.sides:
                try:
                    run, targs, compile_s[side] = torch_side(config, router, batches, side == "torch_compile")
                    calls[side] = (run, targs)
                except Exception as err:  # torch.compile needs a working C++ toolchain; say why it is missing
                    print(f"  {side} skipped: {type(err).__name__}: {str(err).splitlines()[0][:200]}", flush=True)
        best = bench.time_interleaved(
            calls, reps=args.reps, slow_seconds=args.slow_seconds, probes=[c for c in calls if c.startswith("ceiling")]
        )
        ceil = {c: 2 * CEILING_N**3 / best[c] for c in best if c.startswith("ceiling")}
        flops = step_flops(lm_train.model_spec(config, router), config.data.seq_len, config.data.batch_size, experts)
        for side in (s for s in sides if s in best):
            seconds = best[side] / args.steps
            jax_row = side.startswith("jax")
            own = ceil["ceiling_xla"] if jax_row else ceil.get("ceiling_torch", float("nan"))
            row = {
                "preset": preset,
                "router": router,
                "side": side,
                "backend": config.model.backend if jax_row else "loop over experts",
                "experts_per_token": experts,
                "ms_per_step": 1e3 * seconds,
                "tokens_per_s": tokens / args.steps / seconds,
                "gflops_per_s": flops / seconds / 1e9,
                "fraction_of_ceiling": flops / seconds / own,
                "fraction_of_best_ceiling": flops / seconds / max(ceil.values()),
                "ceilings_gflops": {k: v / 1e9 for k, v in ceil.items()},
            }
            if compile_s.get(side) is not None:
                row["compile_s"] = compile_s[side]
            rows.append(row)
            print(
                f"| {preset} | {router} | {side} | {row['backend']} | {experts:.2f} | {row['ms_per_step']:.0f} | "
                f"{row['tokens_per_s']:,.0f} | {row['gflops_per_s']:.1f} | {row['fraction_of_ceiling']:.2f} |",
                flush=True,
            )
    return rows


def add_ratios(rows: list[dict]) -> None:
    """<jax side>_vs_<torch side> on each psec_jax row: its tokens/s over that PyTorch side's, per preset
    and router."""
    for j in (r for r in rows if r["side"].startswith("jax")):
        for r in rows:
            if (r["preset"], r["router"]) == (j["preset"], j["router"]) and r["side"].startswith("torch"):
                j[f"vs_{r['side']}"] = j["tokens_per_s"] / r["tokens_per_s"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", default="small,medium", help="lm_moe config presets, comma-separated")
    p.add_argument("--routers", default="top1,top2,top_p")
    p.add_argument("--sides", default="jax,torch,torch_compile", help="jax, torch, torch_compile")
    p.add_argument("--steps", type=int, default=3, help="training steps per timed call")
    p.add_argument(
        "--scan_unroll", default="", help="layer-scan unrolls to time (0: all layers); default: the config's"
    )
    p.add_argument("--reps", type=int, default=3, help="rounds of timing (each times every side once)")
    p.add_argument("--slow_seconds", type=float, default=None, help="stop adding rounds past this time per call")
    p.add_argument("--out", default="lm_train_throughput", help="results file name")
    p.add_argument("--out_dir", default=str(RESULTS), help="results directory")
    p.add_argument("--allow_busy", action="store_true", help="report ratios even when the machine was busy")
    args = p.parse_args()
    args.routers, args.sides = args.routers.split(","), args.sides.split(",")
    args.scan_unroll = [int(u) for u in args.scan_unroll.split(",") if u] or [None]
    if any(s.startswith("torch") for s in args.sides):
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
    load = bench.LoadMonitor().start()
    print("| preset | router | side | dispatch | experts | ms/step | tokens/s | GFLOP/s | of own ceiling |")
    print("|---|---|---|---|---|---|---|---|---|", flush=True)
    rows = [row for preset in args.presets.split(",") for row in run_preset(preset, args)]
    load.stop()
    report = load.report()
    print(bench.describe_load(report))
    if report["quiet"] or args.allow_busy:
        add_ratios(rows)
    for r in rows:
        for key in [k for k in r if k.startswith("vs_")]:
            print(f"{r['preset']} {r['router']}: {r['side']} {r[key]:.2f}x {key[3:]}")
    extra = {"steps_per_call": args.steps, "threads": os.cpu_count()}
    try:
        import torch

        extra["torch"] = torch.__version__
    except ImportError:
        pass
    path = bench.write_results(args.out, rows, extra, directory=args.out_dir, load=report)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
