"""Weak scaling of sharded sweeps and of the expert-parallel MoE layer on 1/2/4/8 devices.

    .venv/bin/python benchmarks/parallel_scaling.py                  # 8 emulated CPU devices
    .venv/bin/python benchmarks/parallel_scaling.py --devices 8 --members_per_device 2

Each row keeps the work per device fixed and uses the first n devices:
- `sweep`: a PSEC pretrain chunk (tiny network, batch 256, 50 steps) for `members_per_device * n`
  seeds, `parallel.sweep` over a data axis of n;
- `expert_parallel`: the MoE layer's forward+backward (top-p 0.4, E = 8, d = 256, f = 704) on
  `tokens_per_device * n` tokens, experts over an expert axis of n, against `dropless` on one device
  for the same tokens.
On one CPU the "devices" are emulated (`--xla_force_host_platform_device_count`) and share the same
cores, so time grows with n: these rows measure the overhead of sharding and of the all_to_all
exchange (ideal: time proportional to n here), not a speed-up. On real devices, ideal is flat.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"  # where every benchmark writes its JSON


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--devices", type=int, default=8, help="emulated CPU devices (ignored on GPU/TPU)")
    p.add_argument("--members_per_device", type=int, default=2)
    p.add_argument("--tokens_per_device", type=int, default=1024)
    p.add_argument("--out", default="parallel_scaling")
    args = p.parse_args()
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={args.devices}"
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import jax

    from psec_jax import bench, runs

    sizes = [n for n in (1, 2, 4, 8, 16) if n <= jax.device_count()]
    rows = []
    for n in sizes:
        rows.append(sweep_row(n, args.members_per_device))
        print(rows[-1], flush=True)
    for n in sizes:
        rows.extend(expert_rows(n, args.tokens_per_device))
        print(rows[-1], flush=True)
    for r in rows:  # relative to the same kind of row at n = 1 (weak scaling: the work grows with n)
        base = next(b for b in rows if b["kind"] == r["kind"] and b["devices"] == 1)
        r["time_vs_1_device"] = r["seconds"] / base["seconds"]
    print(runs.format_table(rows, ["kind", "devices", "work", "seconds", "time_vs_1_device"], ".4g"))
    path = bench.write_results(
        args.out, rows, {"args": vars(args), "emulated": jax.default_backend() == "cpu"}, directory=RESULTS
    )
    print(f"wrote {path}")


def sweep_row(n: int, per_device: int) -> dict:
    import jax
    import ml_collections

    from psec_jax import bench, parallel
    from psec_jax.data.offline import OfflineData
    from psec_jax.rl import config as rl_config
    from psec_jax.rl import critics, policy, train

    c = ml_collections.ConfigDict(
        dict(
            steps=50,
            log_every=50,
            batch_size=256,
            learning_rate=1e-3,
            weight_decay=0.0,
            ema=0.005,
            cosine=False,
            network_dropout=False,
        )
    )
    c.critic = critics.default_config("reward")
    actor = policy.make_actor(rl_config.network_config("tiny"), 24, 6, "lora")
    trainer = train.make_pretrain(actor, c)
    data = OfflineData.synthetic(10_000, 24, 6)
    mesh = parallel.make_mesh({"data": n}, jax.devices()[:n])
    members = n * per_device
    keys = jax.random.split(jax.random.key(0), members)
    states = parallel.sweep(trainer.init, (0, None), mesh=mesh, members="map")(keys, train.PretrainInputs())
    chunk = parallel.sweep(trainer.chunk, (0, None, None), mesh=mesh)
    secs = bench.time_call(chunk, states, train.PretrainInputs(), data, reps=3)
    return {"kind": "sweep (PSEC pretrain chunk)", "devices": n, "work": f"{members} seeds x 50 steps", "seconds": secs}


def expert_rows(n: int, per_device: int) -> list[dict]:
    import jax
    import jax.numpy as jnp

    from psec_jax import bench, moe, parallel

    e, d, f = 8, 256, 704
    params = moe.init_moe(jax.random.key(0), d, f, e)
    x = jax.random.normal(jax.random.key(1), (n * per_device, d))

    def grad_fn(backend, **kw):
        def loss(params, x):
            y, aux, _ = moe.moe_apply(params, x, moe.MoEConfig(router="top_p", p=0.4, backend=backend, **kw))
            return jnp.mean(y**2) + aux["total"]

        return jax.jit(jax.grad(loss, argnums=(0, 1)))

    mesh = parallel.make_mesh({"data": 1, "expert": n}, jax.devices()[:n])
    with jax.set_mesh(mesh):
        ep = grad_fn("expert_parallel", capacity_factor=2.0, capacity_k=2.0)
        t_ep = bench.time_call(ep, params, x, reps=3)
    rows = [{"kind": "expert_parallel fwd+bwd", "devices": n, "work": f"{n * per_device} tokens", "seconds": t_ep}]
    one = jax.devices()[0]  # the same tokens on one device, for reference
    t_one = bench.time_call(grad_fn("dropless"), jax.device_put(params, one), jax.device_put(x, one), reps=3)
    rows.append(
        {"kind": "dropless fwd+bwd, one device", "devices": n, "work": f"{n * per_device} tokens", "seconds": t_one}
    )
    return rows


if __name__ == "__main__":
    main()
