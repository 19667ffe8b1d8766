"""Per-device memory of the paper-size models on a mesh of emulated devices, from abstract inputs.

    .venv/bin/python benchmarks/paper_memory.py                       # 8 emulated CPU devices
    .venv/bin/python benchmarks/paper_memory.py --lm_mesh data=2,fsdp=2,expert=2 --devices 8

Lowers and compiles (nothing of full size is allocated: every input is a ShapeDtypeStruct carrying its
sharding) one training step of
- the `paper` LM (24 layers, d 1024, 16 experts of 2816, bf16 activations, remat) at the paper's
  batch of 512 x 2048 tokens, the same batch in 16 accumulated microbatches (`train.microbatches`),
  and 32 x 2048 alone, parameters and AdamW moments sharded FSDP-style over `fsdp` and experts over `expert`,
  tokens over every data-like axis, MoE dispatch `expert_parallel` (all_to_all) or another back-end;
- the PSEC `paper` stages (pretrain: diffusion BC at batch 2048; expand: a LoRA skill with its IQL
  critic at batch 256), `--seeds` seeds split over the `data` axis by `parallel.sweep`, the paper's
  1M-transition dataset replicated;
and reports XLA's per-device memory analysis: arguments (parameters, optimizer state, the batch and
data shards a device holds), temporaries (activations, gradients, exchange buffers), outputs.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"  # where every benchmark writes its JSON


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--devices", type=int, default=8, help="emulated CPU devices (set before jax starts)")
    p.add_argument(
        "--lm_mesh", default="data=2,fsdp=2,expert=2", help="LM mesh axis sizes, e.g. data=2,fsdp=2,expert=2"
    )
    p.add_argument("--lm_backend", default="expert_parallel", help="MoE dispatch of the LM")
    p.add_argument(
        "--lm_batch",
        nargs="*",
        default=["512", "512/16", "32"],
        help="LM rows of 2048 tokens per step, optionally /microbatches; one report each (paper: 512)",
    )
    p.add_argument("--seeds", type=int, default=8, help="PSEC seeds in the sweep (split over data)")
    p.add_argument("--transitions", type=int, default=1_000_000, help="PSEC dataset size (replicated)")
    p.add_argument("--skip", nargs="*", default=[], choices=["lm", "pretrain", "expand"])
    p.add_argument("--out", default="paper_memory")
    args = p.parse_args()
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={args.devices}"
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

    import jax

    from psec_jax import bench, runs

    if jax.device_count() != args.devices:
        raise SystemExit(f"expected {args.devices} devices, jax has {jax.device_count()} ({jax.default_backend()})")
    rows = []
    if "lm" not in args.skip:
        for batch in args.lm_batch:
            b, _, m = batch.partition("/")
            rows.append(
                lm_row(dict(kv.split("=") for kv in args.lm_mesh.split(",")), args.lm_backend, int(b), int(m or 1))
            )
            print(rows[-1], flush=True)
    for stage in ("pretrain", "expand"):
        if stage not in args.skip:
            rows.append(psec_row(stage, args.seeds, args.transitions))
            print(rows[-1], flush=True)
    gib = lambda b: b / 2**30
    table = [
        {**r, **{k + "_GiB": gib(r[k]) for k in ("arguments", "temporaries", "outputs", "peak", "params_total")}}
        for r in rows
    ]
    print(
        runs.format_table(
            table,
            [
                "model",
                "mesh",
                "params_total_GiB",
                "arguments_GiB",
                "temporaries_GiB",
                "outputs_GiB",
                "peak_GiB",
                "compile_seconds",
            ],
            ".3g",
        )
    )
    path = bench.write_results(
        args.out, rows, {"args": vars(args), "devices": args.devices, "memory": "per device"}, directory=RESULTS
    )
    print(f"wrote {path}")


def lm_row(axes: dict[str, str], backend: str, batch_rows: int | None = None, microbatches: int = 1) -> dict:
    import jax
    import jax.numpy as jnp

    from psec_jax import parallel
    from psec_jax.configs import lm_moe as lm_config
    from psec_jax.models import pipeline, sharding
    from psec_jax.models import train as lm_train
    from psec_jax.parallel import memory

    config = lm_config.get_config("paper")
    config.train.log_every = 1  # one step per compiled chunk (a scan: more steps need no more memory)
    config.model.backend = backend
    if batch_rows:
        config.data.batch_size = batch_rows
    config.train.microbatches = microbatches
    config.model.gather_weights = True  # as on GPU / TPU meshes (only compiled here, never run)
    trainer = lm_train.make_train(config, "top_p")
    mesh = parallel.make_mesh({k: int(v) for k, v in axes.items()})
    state_sh = sharding.state_shardings(trainer, mesh)
    state = memory.abstract(jax.eval_shape(trainer.init, jax.random.key(0)), state_sh)
    b, t = config.data.batch_size, config.data.seq_len
    batch_sh = sharding.batch_sharding(mesh, ndim=3, batch_dim=1)
    shapes = pipeline.Batch(
        *(jax.ShapeDtypeStruct((1, b, t), dt) for dt in (jnp.int32, jnp.int32, jnp.float32, jnp.int8))
    )
    batch = memory.abstract(shapes, batch_sh)
    with jax.set_mesh(mesh):
        step = jax.jit(
            trainer.chunk, in_shardings=(state_sh, batch_sh, None), out_shardings=(state_sh, None), donate_argnums=0
        )
        report = memory.compiled_memory(step, state, batch, jax.ShapeDtypeStruct((), jnp.float32))
    micro = f" in {microbatches} microbatches" if microbatches > 1 else ""
    return {
        "model": f"lm paper ({backend}, batch {b} x {t}{micro})",
        "mesh": ",".join(f"{k}={v}" for k, v in mesh.shape.items()),
        "params_total": memory.tree_bytes(state.params),
        "state_per_device": memory.per_device_bytes(state),
        "tokens_per_step": b * t,
        "microbatches": microbatches,
        **report,
    }


def psec_row(stage: str, seeds: int, transitions: int) -> dict:
    import jax

    from psec_jax import parallel
    from psec_jax.data.offline import OfflineData
    from psec_jax.parallel import memory
    from psec_jax.rl import config as rl_config
    from psec_jax.rl import policy, train

    obs_dim, act_dim = 24, 6  # walker
    c = rl_config.base_config("paper")
    actor = policy.make_actor(c.network, obs_dim, act_dim, "lora")
    small = OfflineData.synthetic(2, obs_dim, act_dim)
    data = jax.tree.map(lambda a: jax.ShapeDtypeStruct((transitions,) + a.shape[1:], a.dtype), small)
    keys = jax.ShapeDtypeStruct((seeds,), jax.random.key(0).dtype)
    if stage == "pretrain":
        trainer, inputs = train.make_pretrain(actor, c.pretrain), train.PretrainInputs()
        batch = c.pretrain.batch_size
    else:
        trainer = train.make_expand(actor, c.expand, c.critics.reward)
        base = jax.eval_shape(lambda k: jax.vmap(actor.init_base)(jax.random.split(k, seeds)), jax.random.key(0))
        inputs, batch = train.ExpandInputs(base, None), c.expand.batch_size
    init = parallel.sweep(trainer.init, (0, 0) if stage == "expand" else (0, None), members="map")
    state_shapes = jax.eval_shape(init, keys, inputs)
    run = parallel.sweep(trainer.chunk, in_axes=(0, 0 if stage == "expand" else None, None))
    report = memory.compiled_memory(run, state_shapes, inputs, data)
    mesh = run.mesh(state_shapes, inputs, data)
    return {
        "model": f"psec {stage} paper (batch {batch}, {seeds} seeds)",
        "mesh": ",".join(f"{k}={v}" for k, v in mesh.shape.items()),
        "params_total": memory.tree_bytes(state_shapes.params),
        **report,
    }


if __name__ == "__main__":
    main()
