"""Results of `psec-jax lm_moe`: summary numbers from the stages' metric records, a markdown table and
plots (validation loss per router, experts per token over training, per layer, per task difficulty).

Final numbers come from each stage's `final_eval.json` (every member on the whole validation split);
curves from the metric records (metrics.jsonl: training chunk means, and the small validation pass
that ends every chunk).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from psec_jax import runs
from psec_jax.models import tasks

LABELS = [n.replace("/", "_") for n in tasks.label_names()]


def _series(records: list[dict], name: str, member: str) -> np.ndarray:
    return np.array([r.get(f"{name}/{member}", np.nan) for r in records], float)


def _member_summary(
    records: list[dict], final: Mapping[str, Any], member: str, tokens_per_member_step: int, num_members: int
) -> dict[str, Any]:
    """One member: final metrics on the whole validation split, and curves from the per-chunk records."""
    rates = np.array([r["steps_per_sec"] for r in records[1:]] or [records[-1]["steps_per_sec"]], float)
    names = tasks.label_names()
    hard = [names.index(h) for h, _ in tasks.HARDER.values()]
    easy = [names.index(e) for _, e in tasks.HARDER.values()]
    te = np.array(final["task_experts"], float)
    experts = _series(records, "experts", member)
    return {
        "val_loss": final["val_loss"],
        "val_loss_se": final["val_loss_se"],
        "val_experts": final["val_experts"],
        "val_experts_per_layer": final["val_experts_per_layer"],
        "task_experts": dict(zip(LABELS, final["task_experts"])),
        "task_accuracy": dict(zip(LABELS, final["task_accuracy"])),
        "task_loss": dict(zip(LABELS, final["task_loss"])),
        "hard_minus_easy_experts": float(te[hard].mean() - te[easy].mean()),
        "train_experts_first": float(experts[0]),
        "train_experts_last": float(experts[-1]),
        # the members of a stage run one after another in each timed chunk, which ends with a small
        # validation pass (64 rows) and the host's batch assembly: both included
        "tokens_per_sec": float(np.median(rates) * num_members * tokens_per_member_step),
        "curve_step": [r["step"] for r in records],
        "curve_val_loss": _series(records, "val_loss", member).tolist(),
        "curve_train_experts": experts.tolist(),
    }


def _mean(values: list) -> float:
    """Mean of values that may hold None (a NaN read back from JSON)."""
    return float(np.mean(np.array(values, float)))


def _mean_std(values: list[float]) -> dict[str, Any]:
    v = np.asarray(values, float)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0, "per_seed": v.tolist()}


def summarize(
    config: ml_collections.ConfigDict,
    histories: Mapping[str, tuple[Any, list[dict], Mapping]],
    meta: Mapping[str, Any],
    counts: Mapping[str, int],
    *,
    unigram: float,
    seconds: float,
    commit: str | None = None,
) -> dict[str, Any]:
    """{"routers": per router (mean ± std over seeds, per-seed values, curves), "sweep": per threshold,
    "summary": the headline numbers, plus provenance (commit, config, corpus checksums, parameters)}.

    histories: {stage name: (Stage, metric records, final evaluation per member)}; commit: the code's
    commit when the run started (default: now)."""
    tokens = config.data.batch_size * config.data.seq_len
    routers, sweep = {}, {}
    for name, (stage, records, final) in histories.items():
        members = {m: _member_summary(records, final[m], m, tokens, len(stage.members)) for m in stage.members}
        if name == "top_p_sweep":
            sweep.update({f"{p:g}": members[m] for m, p in zip(stage.members, stage.ps)})
            continue
        per = list(members.values())
        routers[name] = {
            **{
                f: _mean_std([m[f] for m in per])
                for f in (
                    "val_loss",
                    "val_experts",
                    "train_experts_first",
                    "train_experts_last",
                    "hard_minus_easy_experts",
                )
            },
            "val_loss_se": _mean([m["val_loss_se"] for m in per]),
            "val_experts_per_layer": np.mean(np.array([m["val_experts_per_layer"] for m in per], float), 0).tolist(),
            "task_experts": {c: _mean([m["task_experts"][c] for m in per]) for c in LABELS},
            "task_accuracy": {c: _mean([m["task_accuracy"][c] for m in per]) for c in LABELS},
            "tokens_per_sec": float(np.mean([m["tokens_per_sec"] for m in per])),
            # the stage's training time, from the per-chunk rates (resumed runs: the chunks run, not the gaps)
            "train_seconds": float(sum(config.train.log_every / r["steps_per_sec"] for r in records)),
            "members": members,
        }
    if sweep and "top_p" in routers:  # top_p's seed 0 is the sweep's point at the main threshold
        sweep[f"{config.router.p:g}"] = next(iter(routers["top_p"]["members"].values()))
    sweep = dict(sorted(sweep.items(), key=lambda kv: float(kv[0])))
    summary = {f"{r}_val_loss": v["val_loss"]["mean"] for r, v in routers.items()}
    summary.update({f"{r}_val_experts": v["val_experts"]["mean"] for r, v in routers.items()})
    summary["unigram_loss"] = unigram
    return {
        "title": f"MoE LM, {config.train.num_steps} steps x {tokens} tokens, {config.train.seeds} seed(s)",
        "commit": commit or runs.git_commit(),
        "seconds": seconds,  # this invocation (finished stages are reused)
        "config": runs.to_jsonable(config),
        "data": {
            **{
                k: meta.get(k)
                for k in ("args", "vocab_size", "unigram_loss", "python", "tokenizers", "tasks", "sha256")
            },
            "splits": {
                s: {k: v for k, v in split.items() if k != "paths"} for s, split in meta.get("splits", {}).items()
            },
        },
        "parameters": dict(counts),
        "routers": routers,
        "sweep": sweep,
        "summary": summary,
    }


def _pm(d: Mapping[str, Any], fmt: str = ".3f") -> str:
    return f"{d['mean']:{fmt}} ± {d['std']:{fmt}}"


def markdown(results: Mapping[str, Any]) -> str:
    """The results as markdown tables (routers, experts per layer, per task difficulty, p sweep)."""
    routers, sweep = results["routers"], results["sweep"]
    lines = [
        f"### {results['title']}",
        "",
        "Final models on the whole validation split (all held-out text windows and task rows); unigram "
        f"baseline (train unigram, add-one) on the same text tokens: {results['summary']['unigram_loss']:.3f} "
        "nats/token. Mean ± std over seeds; `se`: the token-level standard error of one model's loss.",
        "",
        "| router | val loss | per seed | se | experts/token (val text) | experts/token in training, "
        "first -> last chunk | tokens/s (CPU) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r, v in routers.items():
        seeds = ", ".join(f"{x:.3f}" for x in v["val_loss"]["per_seed"])
        lines.append(
            f"| {r} | {_pm(v['val_loss'])} | {seeds} | {v['val_loss_se']:.3f} | "
            f"{_pm(v['val_experts'], '.2f')} | {v['train_experts_first']['mean']:.2f} -> "
            f"{v['train_experts_last']['mean']:.2f} | {v['tokens_per_sec']:,.0f} |"
        )
    g = len(next(iter(routers.values()))["val_experts_per_layer"])
    lines += [
        "",
        "Experts per token by layer (val text, mean over seeds):",
        "",
        "| router | " + " | ".join(f"layer {i}" for i in range(g)) + " |",
        "|---" * (g + 1) + "|",
    ]
    lines += [
        f"| {r} | " + " | ".join(f"{x:.2f}" for x in v["val_experts_per_layer"]) + " |" for r, v in routers.items()
    ]
    lines += [
        "",
        "Task answers (final models, mean over seeds): experts per token at the positions that predict an "
        "answer token, and greedy next-token accuracy there:",
        "",
        "| task | " + " | ".join(f"{r} experts | {r} acc" for r in routers) + " |",
        "|---" * (2 * len(routers) + 1) + "|",
    ]
    for c in LABELS:
        lines.append(
            f"| {c} | "
            + " | ".join(f"{v['task_experts'][c]:.2f} | {v['task_accuracy'][c]:.2f}" for v in routers.values())
            + " |"
        )
    diff = lambda d: f"{d['mean']:+.2f} ± {d['std']:.2f}"
    cells = [c for v in routers.values() for c in (diff(v["hard_minus_easy_experts"]), "")]
    lines.append("| harder - easier, mean of the 3 pairs (mean ± std over seeds) | " + " | ".join(cells) + " |")
    if sweep:
        lines += [
            "",
            "Top-p threshold sweep (seed 0; the thresholds other than the main one ran as one compiled program):",
            "",
            "| p | val loss | experts/token (val text) | training, first -> last chunk | harder - easier experts |",
            "|---|---|---|---|---|",
        ]
        for p, m in sweep.items():
            lines.append(
                f"| {p} | {m['val_loss']:.3f} | {m['val_experts']:.2f} | {m['train_experts_first']:.2f} -> "
                f"{m['train_experts_last']:.2f} | {m['hard_minus_easy_experts']:+.2f} |"
            )
    return "\n".join(lines) + "\n"


def plot(path: str | os.PathLike, results: Mapping[str, Any]) -> None:
    """Four panels: validation loss curves per router (band: min-max over seeds) with the unigram line;
    experts per token over training (top-p seeds and sweep); experts per layer; experts per task label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    routers, sweep = results["routers"], results["sweep"]
    fig, ax = plt.subplots(2, 2, figsize=(11, 8))
    for r, v in routers.items():
        members = list(v["members"].values())
        steps = members[0]["curve_step"]
        curves = np.array([m["curve_val_loss"] for m in members])
        ax[0, 0].plot(steps, curves.mean(0), label=r)
        ax[0, 0].fill_between(steps, curves.min(0), curves.max(0), alpha=0.2)
        experts = np.array([m["curve_train_experts"] for m in members])
        ax[0, 1].plot(steps, experts.mean(0), label=f"{r} (mean of seeds)")
        ax[1, 0].plot(range(len(v["val_experts_per_layer"])), v["val_experts_per_layer"], "o-", label=r)
    for p, m in sweep.items():
        ax[0, 1].plot(m["curve_step"], m["curve_train_experts"], "--", label=f"top_p p={p}")
        ax[1, 0].plot(range(len(m["val_experts_per_layer"])), m["val_experts_per_layer"], "x--", label=f"p={p}")
    ax[0, 0].axhline(results["summary"]["unigram_loss"], color="gray", ls=":", label="unigram")
    ax[0, 0].set(xlabel="step", ylabel="validation loss (nats/token)", title="validation loss")
    ax[0, 1].set(xlabel="step", ylabel="experts per token", title="experts per token (training batches)")
    ax[1, 0].set(xlabel="layer", ylabel="experts per token", title="experts per layer (val text)")
    if "top_p" in routers:
        te = routers["top_p"]["task_experts"]
        names = ["text"] + LABELS
        values = [routers["top_p"]["val_experts"]["mean"]] + [te[c] for c in LABELS]
        ax[1, 1].bar(names, values, color=["gray"] + ["tab:blue", "tab:red"] * 3)
        ax[1, 1].tick_params(axis="x", rotation=30)
    ax[1, 1].set(ylabel="experts per token", title="top-p experts per task difficulty (predicting answers)")
    for a in (ax[0, 0], ax[0, 1], ax[1, 0]):
        a.legend(fontsize=7)
    fig.suptitle(results["title"])
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write(workdir: str | os.PathLike, results: Mapping[str, Any]) -> str:
    """Writes results.json, results.md and results.png into workdir; returns the markdown."""
    workdir = Path(workdir)
    runs.write_json_atomic(workdir / "results.json", results)
    table = markdown(results)
    (workdir / "results.md").write_text(table)
    plot(workdir / "results.png", results)
    return table
