"""Composing a skill library of K LoRA skills: dense (every skill in every state, PSEC's composer) against
routed top-p (each state's smallest set of skills whose routing probability exceeds p; `psec_jax.routed`).

    .venv/bin/python benchmarks/routed_skills.py            # K in 4, 16, 64, 256 (~10 min on the 2-core CPU)
    .venv/bin/python benchmarks/routed_skills.py --quick    # K in 4, 16

For each K: the PSEC noise network (`--network`, the small preset by default) with K stacked LoRA skills
(rank 8) and a context network (AlphaNet) whose outputs are the skills' weights (dense) or router logits
(routed, dropless back-end). Timed, in turns in one process: one composed noise prediction for a batch of
states (forward) and one step of fitting the composer through the frozen network (the compose stage's
gradient step: diffusion loss, plus the aux losses when routed). The router's logits are scaled by
`--sharpness` (the AlphaNet's output layer): 1 is the untrained network, under which top-p selects many
skills at large K (20 of 64 at p = 0.5), 8 one to three; the number is measured and reported. States
per second and activated skills per state per row; the machine's load is recorded, and on a busy
machine the speed-ups are flagged as no evidence. Writes benchmarks/results/routed_skills.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from psec_jax import bench, moe, routed, runs
from psec_jax.rl import config as rl_config
from psec_jax.rl import diffusion, policy

RESULTS = Path(__file__).resolve().parent / "results"
OBS, ACT = 24, 6  # the walker's


def _setup(network: str, k: int, batch: int, sharpness: float, p: float, seed: int = 0):
    actor = policy.make_actor(rl_config.network_config(network), OBS, ACT)
    keys = jax.random.split(jax.random.key(seed), 6)
    base = actor.init_base(keys[0])
    one = actor.init_skill(keys[1], base)
    noise = lambda x, i: 0.02 * jax.random.normal(jax.random.fold_in(keys[2], i), (k, *x.shape[1:]), x.dtype)
    params = jax.tree.map(lambda x: x + noise(x, x.size), jax.tree.map(lambda x: jnp.repeat(x, k, 0), one.params))
    skills = policy.Skills(params, jnp.full((k,), actor.skill_scale, jnp.float32))
    routing = moe.MoEConfig(router="top_p", p=p, backend="dropless", dynamic_weight=1e-4)
    composers = {
        "dense": policy.make_composer("context", OBS, k, (256, 256)),
        "routed": policy.make_composer("routed", OBS, k, (256, 256), routing=routing),
    }
    cparams = composers["dense"].init(keys[3])  # the same context network for both
    # the output Dense of the context network: its scale sets how sharp the router's probabilities are
    (mlp,) = cparams
    last = max(cparams[mlp], key=lambda name: int(name.rsplit("_", 1)[1]))
    scaled = jax.tree.map(lambda x: x * sharpness, cparams[mlp][last])
    cparams = {mlp: {**cparams[mlp], last: scaled}}
    obs = jax.random.normal(keys[4], (batch, OBS))
    actions = jnp.tanh(jax.random.normal(keys[5], (batch, ACT)))
    return actor, base, skills, composers, cparams, obs, actions


def _functions(actor, base, skills, composer):
    """(forward, train step) of one composer, jitted."""
    tx = optax.adam(1e-3)

    def eps(cparams, obs, a_t, t):
        return policy.composed_eps(actor, base, skills, "param", composer.apply(cparams, obs), obs, a_t, t)

    def loss(cparams, obs, actions, key):
        a_t, t, e = diffusion.noisy_actions(actor.schedule, actions, key)
        w = composer.apply(cparams, obs)
        out = diffusion.noise_loss(policy.composed_eps(actor, base, skills, "param", w, obs, a_t, t), e)
        return out + (routed.aux_losses(w)["total"] if isinstance(w, routed.SkillRoute) else 0.0)

    def step(cparams, opt, obs, actions, key):
        g = jax.grad(loss)(cparams, obs, actions, key)
        updates, opt = tx.update(g, opt)
        return optax.apply_updates(cparams, updates), opt

    return jax.jit(eps), jax.jit(step), tx


def measure(network: str, k: int, batch: int, sharpness: float, p: float, reps: int) -> dict:
    actor, base, skills, composers, cparams, obs, actions = _setup(network, k, batch, sharpness, p)
    a_t, t = jax.random.normal(jax.random.key(7), (batch, ACT)), jnp.full((batch,), 2)
    route = composers["routed"].apply(cparams, obs)
    calls = {}
    for name, composer in composers.items():
        fwd, step, tx = _functions(actor, base, skills, composer)
        calls[f"{name}/forward"] = (fwd, (cparams, obs, a_t, t))
        calls[f"{name}/train_step"] = (step, (cparams, tx.init(cparams), obs, actions, jax.random.key(8)))
    best = bench.time_interleaved(calls, reps=reps, slow_seconds=2.0)
    row = {
        "network": network,
        "K": k,
        "batch": batch,
        "p": p,
        "sharpness": sharpness,
        "skills_per_state": float(np.asarray(route.route.experts_per_token).mean()),
        "skills_per_state_max": int(np.asarray(route.route.experts_per_token).max()),
    }
    for name, seconds in best.items():
        row[f"{name}_ms"] = 1e3 * seconds
        row[f"{name}_states_per_s"] = batch / seconds
    for what in ("forward", "train_step"):
        row[f"speedup_{what}"] = best[f"dense/{what}"] / best[f"routed/{what}"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="K in 4, 16 only")
    parser.add_argument("--ks", type=int, nargs="+", default=None, help="library sizes (default 4 16 64 256)")
    parser.add_argument("--network", default="small", choices=("tiny", "small", "paper"), help="noise-net size")
    parser.add_argument("--batch", type=int, default=256, help="states per call")
    parser.add_argument("--p", type=float, default=0.5, help="top-p threshold")
    parser.add_argument(
        "--sharpness",
        type=float,
        nargs="+",
        default=(1.0, 8.0),
        help="scales of the router's output layer: 1 is the untrained context network (many skills per state "
        "at large K), 8 selects one to three",
    )
    parser.add_argument("--reps", type=int, default=5, help="timed rounds")
    parser.add_argument("--out", default="routed_skills", help="result file name (in --out_dir)")
    parser.add_argument("--out_dir", default=str(RESULTS), help="results directory")
    args = parser.parse_args()
    ks = tuple(args.ks) if args.ks else (4, 16) if args.quick else (4, 16, 64, 256)
    rows = []
    with bench.LoadMonitor() as load:
        for k in ks:
            for sharpness in args.sharpness:
                rows.append(measure(args.network, k, args.batch, sharpness, args.p, args.reps))
                r = rows[-1]
                print(
                    f"K={k:4d} sharpness {sharpness:g}  skills/state {r['skills_per_state']:.2f} "
                    f"(max {r['skills_per_state_max']})  "
                    f"forward dense {r['dense/forward_ms']:.1f} ms routed {r['routed/forward_ms']:.1f} ms "
                    f"(x{r['speedup_forward']:.2f})  train step dense {r['dense/train_step_ms']:.1f} ms routed "
                    f"{r['routed/train_step_ms']:.1f} ms (x{r['speedup_train_step']:.2f})",
                    flush=True,
                )
    report = load.report()
    print(bench.describe_load(report))
    print(runs.format_table(rows))
    path = bench.write_results(args.out, rows, {"args": vars(args)}, directory=Path(args.out_dir), load=report)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
