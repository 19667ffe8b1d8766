"""One LM stage's per-seed results read from its directory, and the paired helpers the comparison is
made of: member i of every stage has the same initialisation key and data order, so arms pair by
member name (never by position: JSON comes back with its keys sorted as strings)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

import ml_collections
import numpy as np

from psec_jax import runs, stats
from psec_jax.models import tasks
from psec_jax.models import train as lm_train

BASELINES = ("top1", "top2")  # every top-p arm minus each of these, in val loss
REFERENCE = "top2"  # whose NLL measures a position's difficulty
SWEEP = "top_p_sweep"  # one seed at many thresholds: nothing to pair
CONTROL = "top_p_rolled"  # top-p's counts given to other tokens: what adaptive allocation adds
HARDER = tasks.HARDER  # task: (harder label, easier label), names of `tasks.label_names()`
HELDOUT = ("long", "other")
# difficulty reference -> offset of the reference seed from the routed model's seed
REFERENCES = {"other_seed": 1, "same_seed": 0}


class Arm(NamedTuple):
    """One stage's per-seed results, read from its directory."""

    name: str  # stage name, e.g. "top2", "top_p", "top_p0.3"
    k: int | None  # experts per token of a top-k arm; None otherwise
    p: float | None  # threshold of a top-p arm; None otherwise
    members: tuple[str, ...]  # [M] member names ("seed0", ...)
    final: dict[str, dict]  # member -> final evaluation (final_eval.json) with "heldout": {set: metrics}
    train_experts: np.ndarray | None  # [M] mean experts per token over training; None without metrics.jsonl
    directory: Path
    train_change: np.ndarray | None = None  # [M] experts per token, last training chunk minus first


def kind(name: str, config: ml_collections.ConfigDict) -> tuple[int | None, float | None]:
    """(k, p) of a stage: k for a top-k stage, p for a top-p one (`top_p` at router.p, `top_p<p>`)."""
    if name in ("top_p", CONTROL):
        return None, float(config.router.p)
    if name.startswith("top_p") and name != SWEEP:
        return None, float(name[len("top_p") :])
    over = lm_train.STAGES.get(name, {})
    return (int(over["k"]), None) if over.get("router") == "top_k" else (None, None)


def load(directory: Path, name: str, members: tuple[str, ...], config, notes: list[str]) -> Arm | None:
    path = directory / "final_eval.json"
    if not path.is_file():
        notes.append(f"{name}: no {path.name} in {directory}; the stage is left out")
        return None
    final = json.loads(path.read_text())["members"]
    members = tuple(m for m in members if m in final) or tuple(final)
    held = directory / "heldout_eval.json"
    saved = json.loads(held.read_text())["members"] if held.is_file() else {}
    final = {m: {**final[m], "heldout": final[m].get("heldout") or saved.get(m, {})} for m in members}
    train = None
    if (directory / runs.METRICS_FILE).is_file():
        records = runs.read_metrics(directory)
        series = [np.array([r.get(f"experts/{m}") for r in records], float) for m in members]  # None -> NaN
        train = np.array([np.mean(s) if s.size else np.nan for s in series])
        change = np.array([s[-1] - s[0] if s.size > 1 else np.nan for s in series])
    else:
        notes.append(f"{name}: no metrics.jsonl; experts over training (matched FLOPs) unknown")
        change = None
    return Arm(name, *kind(name, config), members, final, train, directory, change)


def values(arm: Arm, members: list[str], *keys: str | int) -> np.ndarray:
    """[len(members)] float64 of final[member][keys...]; NaN where missing or null."""
    out = []
    for m in members:
        v: Any = arm.final[m]
        for k in keys:
            v = v.get(k) if isinstance(v, dict) else (v[k] if isinstance(v, list) and k < len(v) else None)
            if v is None:
                break
        out.append(np.nan if v is None else float(v))
    return np.array(out, float)


def common(*arms: Arm) -> list[str]:
    """Members every arm has, in the first arm's order: the seeds that pair."""
    return [m for m in arms[0].members if all(m in a.final for a in arms[1:])]


def paired(x: np.ndarray, y: np.ndarray, members: list[str], reps: int) -> dict[str, Any]:
    """`stats.paired_difference` of x - y over the seeds where both are finite, with the seeds used; a
    "skipped" reason when fewer than 2 remain."""
    ok = np.isfinite(x) & np.isfinite(y)
    used = [m for m, k in zip(members, ok) if k]
    if ok.sum() < 2:
        return {"skipped": f"{int(ok.sum())} seed(s) with both values; a paired comparison needs 2", "seeds": used}
    out = {**stats.paired_difference(x[ok], y[ok], reps=reps), "seeds": used}
    if not ok.all():
        out["dropped"] = [m for m, k in zip(members, ok) if not k]
    return out
