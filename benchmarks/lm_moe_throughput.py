"""Training throughput of the lm_moe model per router, and what running M members in one program costs.

    .venv/bin/python benchmarks/lm_moe_throughput.py                 # the small config, M = 3
    .venv/bin/python benchmarks/lm_moe_throughput.py --preset tiny --steps 2 --members 2 --out_dir /tmp

For each router (top1, top2, top_p at p = 0.4) and back-end it times one `Trainer.chunk` of `--steps`
training steps (random tokens, the config's shapes) three ways: a single member; M members under
`lax.map` (one program, members one after another); M members under `vmap`; and, as a single member,
with bf16 activations. Random tokens and fresh routers: top-p's expert count (and cost) is that of an
untrained router, not of a trained one (see the lm_moe results for those). Reported: tokens/s per
member (the training throughput of one model) and per-member time relative to the single run; plus the
optimizer-state memory per member (params, grads, two Adam moments: 16 bytes per parameter).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from psec_jax import bench  # noqa: E402
from psec_jax.configs import lm_moe as lm_config  # noqa: E402
from psec_jax.models import pipeline, transformer  # noqa: E402
from psec_jax.models import train as lm_train  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"  # where every benchmark writes its JSON


def random_batches(config, steps: int) -> pipeline.Batch:
    b, t, v = config.data.batch_size, config.data.seq_len, config.data.vocab_size
    tokens = jax.random.randint(jax.random.key(1), (steps, b, t + 1), 0, v)
    return pipeline.Batch(
        tokens[..., :-1], tokens[..., 1:], jnp.ones((steps, b, t)), jnp.full((steps, b, t), -1, jnp.int8)
    )


def time_router(config, router: str, batches: pipeline.Batch, m: int, modes) -> list[dict]:
    """Best time of one chunk per mode: {"mode", "members", "seconds", "relative_to_single"} (per member)."""
    trainer = lm_train.make_train(config, router)
    p = jnp.float32(config.router.p)
    ps = jnp.full((m,), config.router.p)
    states = jax.vmap(trainer.init)(jax.random.split(jax.random.key(0), m))
    fns = {
        "single": (jax.jit(lambda s: trainer.chunk(s, batches, p)), trainer.init(jax.random.key(0)), 1),
        "lax.map": (jax.jit(lambda s: jax.lax.map(lambda a: trainer.chunk(a[0], batches, a[1]), (s, ps))), states, m),
        "vmap": (jax.jit(lambda s: jax.vmap(trainer.chunk, (0, None, 0))(s, batches, ps)), states, m),
    }
    out, base = [], None
    for mode in modes:
        fn, state, members = fns[mode]
        seconds = bench.time_call(fn, state, reps=2, min_seconds=0.0)
        base = base or seconds / members
        out.append(
            {"mode": mode, "members": members, "seconds": seconds, "relative_to_single": seconds / members / base}
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--steps", type=int, default=5, help="training steps per timed chunk")
    parser.add_argument("--members", type=int, default=3)
    parser.add_argument("--backends", default="dropless,dense")
    parser.add_argument(
        "--dtypes", default="float32,bfloat16", help="activation dtypes; the first is also timed with members"
    )
    parser.add_argument("--routers", default="top1,top2,top_p")
    parser.add_argument("--out_dir", default=None, help="results directory (default benchmarks/results)")
    args = parser.parse_args()
    config = lm_config.get_config(args.preset)
    batches = random_batches(config, args.steps)
    tokens = args.steps * config.data.batch_size * config.data.seq_len
    rows = []
    print("| router | backend | dtype | mode | members | ms per member-step | tokens/s per member | vs single |")
    print("|---|---|---|---|---|---|---|---|")
    for dtype in args.dtypes.split(","):
        for backend in args.backends.split(","):
            for router in args.routers.split(","):
                with config.unlocked():
                    config.model.backend, config.model.dtype = backend, dtype
                # members are timed for the config's own dtype only; other dtypes as single models
                modes = ("single", "lax.map", "vmap") if dtype == args.dtypes.split(",")[0] else ("single",)
                for row in time_router(config, router, batches, args.members, modes):
                    row.update(
                        router=router,
                        backend=backend,
                        dtype=dtype,
                        tokens_per_sec_per_member=tokens / row["seconds"] * row["members"],
                    )
                    row["ms_per_member_step"] = 1e3 * row["seconds"] / row["members"] / args.steps
                    rows.append(row)
                    print(
                        f"| {router} | {backend} | {dtype} | {row['mode']} | {row['members']} | "
                        f"{row['ms_per_member_step']:.0f} | {row['tokens_per_sec_per_member']:,.0f} | "
                        f"{row['relative_to_single']:.2f}x |",
                        flush=True,
                    )
    counts = transformer.parameter_counts(lm_train.model_spec(config, "top1"))
    extra = {
        "preset": args.preset,
        "steps": args.steps,
        "tokens_per_step": tokens // args.steps,
        "parameters": counts,
        "train_state_bytes_per_member": 16 * counts["total"],
    }
    paper = transformer.parameter_counts(lm_train.model_spec(lm_config.get_config("paper"), "top1"))
    extra["paper_train_state_gb_per_member"] = 16 * paper["total"] / 1e9
    path = bench.write_results("lm_moe_throughput", rows, extra, directory=args.out_dir or RESULTS)
    print(
        f"train state per member: {extra['train_state_bytes_per_member'] / 1e6:.0f} MB here, "
        f"{extra['paper_train_state_gb_per_member']:.1f} GB at the paper's size; wrote {path}"
    )


if __name__ == "__main__":
    main()
