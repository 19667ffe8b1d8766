"""Does top-p give harder tokens more experts? Within each top-p arm, paired over seeds: task variants
labelled harder minus easier (and whether the reference model finds them harder), held-out sets
minus the val text, and the per-token slope of experts on a reference model's NLL (`difficulty`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from psec_jax import stats
from psec_jax.models import difficulty, tasks
from psec_jax.models.arms import HARDER, HELDOUT, REFERENCE, REFERENCES, Arm, paired, values


def tasks_and_heldout(arm: Arm, reference: Arm | None, reps: int) -> dict[str, Any]:
    """Within one top-p arm, paired over its seeds: harder minus easier task variant (experts, accuracy,
    loss per answer token) and each held-out set minus the val text (experts, loss). A variant is harder
    by label; whether it is harder for a model is measured: ``reference_loss``, the same loss difference
    in the `REFERENCE` arm, and ``measured_harder`` when its t-interval lies above 0. ``measured``: over
    the pairs measured harder only, per seed the mean experts difference (one-sample test)."""
    labels = tasks.label_names()
    members = list(arm.members)
    out: dict[str, Any] = {"tasks": {}, "heldout": {}}
    harder_experts = []
    for task, (hard, easy) in HARDER.items():
        h, e = labels.index(hard), labels.index(easy)
        row = {
            "harder": hard,
            "easier": easy,
            **{
                metric: paired(values(arm, members, key, h), values(arm, members, key, e), members, reps)
                for metric, key in (("experts", "task_experts"), ("accuracy", "task_accuracy"), ("loss", "task_loss"))
            },
        }
        if reference is not None:
            ref = list(reference.members)
            row["reference_loss"] = d = paired(
                values(reference, ref, "task_loss", h), values(reference, ref, "task_loss", e), ref, reps
            )
            row["measured_harder"] = bool("ci" in d and d["ci"][0] > 0)
            if row["measured_harder"]:
                harder_experts.append(values(arm, members, "task_experts", h) - values(arm, members, "task_experts", e))
        out["tasks"][task] = row
    if reference is None:
        out["measured"] = {"skipped": f"no {REFERENCE} stage: which variants are harder is not measured"}
    elif not harder_experts:
        out["measured"] = {"skipped": f"no task's harder variant is harder for {REFERENCE} (loss interval above 0)"}
    else:
        mean = np.mean(harder_experts, 0)
        ok = np.isfinite(mean)
        pairs = [t for t, r in out["tasks"].items() if r.get("measured_harder")]
        out["measured"] = (
            {**stats.one_sample(mean[ok]), "pairs": pairs}
            if ok.sum() >= 2
            else {"skipped": f"{int(ok.sum())} seed(s) with every measured pair", "pairs": pairs}
        )
    for name in HELDOUT:
        if not any(name in arm.final[m]["heldout"] for m in members):
            out["heldout"][name] = {"skipped": f"no held-out set {name!r} in {arm.name}'s evaluation"}
            continue
        row = {
            metric: paired(values(arm, members, "heldout", name, key), values(arm, members, key), members, reps)
            for metric, key in (("experts", "val_experts"), ("loss", "val_loss"))
        }
        per_layer = [  # None (a NaN through JSON) -> NaN
            np.array(arm.final[m]["heldout"][name]["val_experts_per_layer"], float)
            - np.array(arm.final[m]["val_experts_per_layer"], float)
            for m in members
            if name in arm.final[m]["heldout"]
        ]
        out["heldout"][name] = {**row, "experts_per_layer": np.mean(np.array(per_layer, float), 0)}
    return out


# ------------------------------------------------------------------------------------ difficulty


def _tokens(directory: Path) -> dict[str, np.ndarray] | None:
    path = directory / "tokens.npz"
    if not path.is_file():
        return None
    with np.load(path) as z:
        return {k: z[k] for k in ("nll", "experts", "inputs", "weights", "members")}


def _slopes(arm: Arm, routed: dict, ref: dict, offset: int) -> dict[str, Any]:
    """Per seed of `arm`, the per-layer slopes of its experts on the reference's NLL (the reference
    member `offset` seeds on, cyclically), and per layer their mean across seeds."""
    names, ref_names = list(routed["members"]), list(ref["members"])
    members = [m for m in arm.members if m in names and m in ref_names]
    if not members:
        return {"skipped": f"no member of {arm.name} has a {REFERENCE} reference in tokens.npz"}
    if offset and len(members) < 2:
        return {"skipped": "another seed's reference needs >= 2 seeds"}
    keep = ref["weights"] > 0  # [N, R, T]
    n, r, t = keep.shape
    rows = np.broadcast_to(np.arange(n * r).reshape(n, r, 1), (n, r, t))[keep]
    position = np.broadcast_to(np.arange(t), (n, r, t))[keep]
    ids = routed["inputs"][keep]
    per_seed, failed = [], []
    for j, m in enumerate(members):
        other = members[(j + offset) % len(members)]
        counts = routed["experts"][names.index(m)][:, keep].astype(np.float64)  # [G, P]
        nll = ref["nll"][ref_names.index(other)][keep].astype(np.float64)  # [P]
        try:
            fits = difficulty.per_layer(counts, nll, ids, groups=rows, controls=position)
        except ValueError as e:
            failed.append(f"{m} on {REFERENCE} {other}: {e}")
            continue
        try:  # the sensitivity fit: its failure must not drop the seed from the primary one
            token_only = [f.slope for f in difficulty.per_layer(counts, nll, ids, groups=rows)]
        except ValueError:
            token_only = [float("nan")] * len(fits)
        per_seed.append(
            {
                "member": m,
                "reference": other,
                "slope": [f.slope for f in fits],
                "se": [f.se for f in fits],
                "ci": [list(f.ci) for f in fits],
                "slope_token_only": token_only,
                "pooled_slope": [f.pooled_slope for f in fits],
                "num_tokens": fits[0].num_tokens,
                "num_clusters": fits[0].num_clusters,
            }
        )
    if len(per_seed) < 2:
        return {"skipped": f"{len(per_seed)} seed(s) could be fitted; " + "; ".join(failed[:3])}
    slopes = np.array([s["slope"] for s in per_seed])  # [seeds, G]
    out = {
        "per_seed": per_seed,
        "layers": [stats.one_sample(slopes[:, g]) for g in range(slopes.shape[1])],
        "mean_over_layers": stats.one_sample(slopes.mean(1)),
        "mean_over_layers_token_only": _one_sample_finite(np.array([s["slope_token_only"] for s in per_seed]).mean(1)),
    }
    if failed:
        out["dropped"] = failed
    return out


def difficulty_slopes(arm: Arm, top2: Arm | None, cache: dict) -> dict[str, Any]:
    if top2 is None:
        return {"skipped": f"no {REFERENCE} stage: no reference difficulty"}
    for a in (arm, top2):
        if a.name not in cache:
            cache[a.name] = _tokens(a.directory)
        if cache[a.name] is None:
            return {"skipped": f"no tokens.npz in {a.name}"}
    routed, ref = cache[arm.name], cache[top2.name]
    if not (np.array_equal(routed["inputs"], ref["inputs"]) and np.array_equal(routed["weights"], ref["weights"])):
        return {"skipped": f"tokens.npz of {arm.name} and {REFERENCE} hold different positions"}
    return {name: _slopes(arm, routed, ref, offset) for name, offset in REFERENCES.items()}


def _one_sample_finite(x: np.ndarray) -> dict[str, Any]:
    """`stats.one_sample` of the finite values of x [n]; "skipped" when fewer than 2."""
    x = x[np.isfinite(x)]
    return stats.one_sample(x) if x.size >= 2 else {"skipped": f"{x.size} seed(s) with a value"}
