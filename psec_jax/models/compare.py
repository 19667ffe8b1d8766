"""The statistics that decide the LM experiment's claims: paired comparisons of arms over seeds.

Member seed i of every stage has the same initialisation key and the same data order, so arms are
compared seed by seed (`psec_jax.stats.paired_difference`: the mean difference, a bootstrap interval, the
paired t and Wilcoxon p-values, and the smallest difference the seeds could detect). From each finished
stage's directory `workdir/stages/<stage>/` this reads:

  - final_eval.json: per member, the final validation metrics (`train.eval_metrics`); the held-out sets
    ("long", "other") from the member's "heldout" entry, else from heldout_eval.json beside it;
  - metrics.jsonl: the per-chunk training records, whose "experts/<member>" (mean experts per token over
    the MoE layers, one chunk of equal steps each) average to the member's experts over training;
  - tokens.npz: per-position NLL and experts per layer on the same validation positions for every
    stage (`evaluation.final_extras`).

and reports (`compare`; its markdown tables: `comparison_md.markdown`):

  - per arm: val loss mean with rliable's 95% interval, experts per token (val text, and per layer),
    experts per token over training and the training FLOPs per token they cost;
  - every top-p arm minus top1 and minus top2 in val loss;
  - every top-p arm minus the top-k frontier at matched experts: per seed, the seed's own top1/top2/top3
    val losses interpolated piecewise-linearly in k at the top-p model's mean val experts per token
    (a top-k model uses k). At matched training FLOPs: the same interpolation at the top-p member's mean
    experts per token over training (FLOPs per token are linear in experts, so interpolating in experts
    is interpolating in FLOPs). A seed whose experts fall outside [smallest k, largest k] is left out
    (extrapolating the frontier is a guess) and named;
  - "harder needs more experts" within each top-p arm: the harder variant of each task minus the easier
    one in experts per answer token, beside the same difference in accuracy and loss (is the harder
    variant harder for the model?); each held-out set minus the val text in experts and loss;
  - per-token difficulty: for top-p member i, the slope of its experts per layer on the NLL the top2
    model of seed (i + 1) mod n gives the same positions (a model other than the one routed, so the
    slope is not the top-p model's own errors feeding back), with token fixed effects and errors
    clustered by window (`difficulty.per_layer`); per layer the mean slope across seeds with a t-interval
    and a sign test; the same seed's top2 as reference as a sensitivity row.

A comparison whose stages (or files) are missing is left out with a note saying why.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, NamedTuple

import ml_collections
import numpy as np

from psec_jax import runs, stats
from psec_jax.models import difficulty, tasks
from psec_jax.models import train as lm_train
from psec_jax.models import transformer as tf

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


def _kind(name: str, config: ml_collections.ConfigDict) -> tuple[int | None, float | None]:
    """(k, p) of a stage: k for a top-k stage, p for a top-p one (`top_p` at router.p, `top_p<p>`)."""
    if name in ("top_p", CONTROL):
        return None, float(config.router.p)
    if name.startswith("top_p") and name != SWEEP:
        return None, float(name[len("top_p") :])
    over = lm_train.STAGES.get(name, {})
    return (int(over["k"]), None) if over.get("router") == "top_k" else (None, None)


def _load(directory: Path, name: str, members: tuple[str, ...], config, notes: list[str]) -> Arm | None:
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
        series = [[r.get(f"experts/{m}") for r in records] for m in members]
        train = np.array([np.mean(np.array(s, float)) if s else np.nan for s in series])
    else:
        notes.append(f"{name}: no metrics.jsonl; experts over training (matched FLOPs) unknown")
    return Arm(name, *_kind(name, config), members, final, train, directory)


def _values(arm: Arm, members: list[str], *keys: str | int) -> np.ndarray:
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


def _common(*arms: Arm) -> list[str]:
    """Members every arm has, in the first arm's order: the seeds that pair."""
    return [m for m in arms[0].members if all(m in a.final for a in arms[1:])]


def _paired(x: np.ndarray, y: np.ndarray, members: list[str], reps: int) -> dict[str, Any]:
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


# ------------------------------------------------------------------------------------------ arms


def flops_per_token(config: ml_collections.ConfigDict) -> tuple[float, float]:
    """(FLOPs per token with no expert, FLOPs per expert per token): training FLOPs per token at e experts
    per token per MoE layer are a + b e, 6 x the active parameters (forward 2, backward 4 per parameter;
    embedding and unembedding counted, attention's sequence-length term not)."""
    counts = tf.parameter_counts(lm_train.model_spec(config, "top1"))
    per_expert = counts["experts"] / config.model.num_experts  # one expert of every MoE layer
    return 6.0 * (counts["total"] - counts["experts"]), 6.0 * per_expert


def _arm_summary(arm: Arm, flops: tuple[float, float], reps: int) -> dict[str, Any]:
    members = list(arm.members)
    loss = _values(arm, members, "val_loss")
    experts = _values(arm, members, "val_experts")
    layers = np.array([[np.nan if v is None else v for v in arm.final[m]["val_experts_per_layer"]] for m in members])
    train = (
        arm.train_experts
        if arm.train_experts is not None
        else (None if arm.k is None else np.full(len(members), arm.k, float))
    )
    finite = loss[np.isfinite(loss)]
    interval = stats.intervals({arm.name: finite}, reps=reps)[arm.name] if finite.size else {}
    return {
        "k": arm.k,
        "p": arm.p,
        "members": members,
        "val_loss": {"per_seed": loss, **interval},
        "val_experts": {"mean": float(np.nanmean(experts)), "per_seed": experts},
        "val_experts_per_layer": np.nanmean(layers, 0),
        "train_experts": None if train is None else {"mean": float(np.nanmean(train)), "per_seed": train},
        "train_flops_per_token": None if train is None else float(flops[0] + flops[1] * np.nanmean(train)),
    }


# -------------------------------------------------------------------------------------- frontier


INTERPOLATIONS = ("linear", "polynomial")


def frontier(losses: dict[int, np.ndarray], experts: np.ndarray, kind: str = "linear") -> np.ndarray:
    """Per seed, the top-k frontier's loss at the given experts per token.

    Args:
      losses: {k: [n] the top-k arm's loss per seed}, at least two k.
      experts: [n] experts per token of the model to match, per seed.
      kind: "linear" (piecewise linear in k: the chord, above a convex frontier, so it flatters the
        matched model) or "polynomial" (the polynomial through all K points, a quadratic for k = 1, 2, 3:
        it bends with a convex frontier; a sensitivity check of the chord).

    Returns:
      [n] float64: seed i's losses at its k, interpolated in k at experts[i]; NaN where experts[i] lies
      outside [min k, max k] (not extrapolated) or a loss is missing.
    """
    if kind not in INTERPOLATIONS:
        raise ValueError(f"unknown interpolation {kind!r}; choose from {INTERPOLATIONS}")
    ks = sorted(losses)
    grid = np.array(ks, float)
    table = np.stack([np.asarray(losses[k], float) for k in ks], 1)  # [n, K]
    out = np.full(len(experts), np.nan)
    for i, e in enumerate(np.asarray(experts, float)):
        if grid[0] <= e <= grid[-1] and np.all(np.isfinite(table[i])):
            if kind == "linear":
                out[i] = np.interp(e, grid, table[i])
            else:
                out[i] = np.polyval(np.polyfit(grid, table[i], len(grid) - 1), e)
    return out


def _matched(
    arm: Arm, topk: list[Arm], experts: np.ndarray, members: list[str], reps: int, kind: str = "linear"
) -> dict[str, Any]:
    """arm's val loss minus the frontier (`frontier`, `kind`) at `experts` [members] per seed."""
    losses = {a.k: _values(a, members, "val_loss") for a in topk}
    at = frontier(losses, experts, kind)
    known = np.all(np.isfinite(np.stack(list(losses.values()), 1)), 1)
    missing = [m for m, ok in zip(members, known) if not ok]
    outside = [m for m, e, f, ok in zip(members, experts, at, known) if ok and np.isfinite(e) and not np.isfinite(f)]
    out = _paired(_values(arm, members, "val_loss"), at, members, reps)
    out.update(experts=experts, frontier_loss=at, k_range=[min(losses), max(losses)], interpolation=kind)
    notes = []
    if outside:
        out["outside"] = outside
        notes.append(
            f"experts of {', '.join(outside)} outside the frontier's k in [{min(losses)}, {max(losses)}]: "
            "not interpolated, left out"
        )
    if missing:
        out["missing"] = missing
        notes.append(f"a top-k loss of {', '.join(missing)} is missing: left out")
    if notes:
        out["note"] = "; ".join(notes)
    return out


# ---------------------------------------------------------------------------------------- harder


def _harder(arm: Arm, reps: int) -> dict[str, Any]:
    """Within one top-p arm, paired over its seeds: harder minus easier task variant (experts, accuracy,
    loss per answer token) and each held-out set minus the val text (experts, loss)."""
    labels = tasks.label_names()
    members = list(arm.members)
    out: dict[str, Any] = {"tasks": {}, "heldout": {}}
    for task, (hard, easy) in HARDER.items():
        h, e = labels.index(hard), labels.index(easy)
        out["tasks"][task] = {
            "harder": hard,
            "easier": easy,
            **{
                metric: _paired(_values(arm, members, key, h), _values(arm, members, key, e), members, reps)
                for metric, key in (("experts", "task_experts"), ("accuracy", "task_accuracy"), ("loss", "task_loss"))
            },
        }
    for name in HELDOUT:
        if not any(name in arm.final[m]["heldout"] for m in members):
            out["heldout"][name] = {"skipped": f"no held-out set {name!r} in {arm.name}'s evaluation"}
            continue
        row = {
            metric: _paired(_values(arm, members, "heldout", name, key), _values(arm, members, key), members, reps)
            for metric, key in (("experts", "val_experts"), ("loss", "val_loss"))
        }
        per_layer = [
            np.subtract(arm.final[m]["heldout"][name]["val_experts_per_layer"], arm.final[m]["val_experts_per_layer"])
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
    ids = routed["inputs"][keep]
    per_seed = []
    for j, m in enumerate(members):
        other = members[(j + offset) % len(members)]
        counts = routed["experts"][names.index(m)][:, keep].astype(np.float64)  # [G, P]
        nll = ref["nll"][ref_names.index(other)][keep].astype(np.float64)  # [P]
        try:
            fits = difficulty.per_layer(counts, nll, ids, groups=rows)
        except ValueError as e:
            return {"skipped": f"{m} on {REFERENCE} {other}: {e}"}
        per_seed.append(
            {
                "member": m,
                "reference": other,
                "slope": [f.slope for f in fits],
                "se": [f.se for f in fits],
                "ci": [list(f.ci) for f in fits],
                "pooled_slope": [f.pooled_slope for f in fits],
                "num_tokens": fits[0].num_tokens,
                "num_clusters": fits[0].num_clusters,
            }
        )
    slopes = np.array([s["slope"] for s in per_seed])  # [seeds, G]
    return {
        "per_seed": per_seed,
        "layers": [stats.one_sample(slopes[:, g]) for g in range(slopes.shape[1])],
        "mean_over_layers": stats.one_sample(slopes.mean(1)),
    }


def _difficulty(arm: Arm, top2: Arm | None, cache: dict) -> dict[str, Any]:
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


# ------------------------------------------------------------------------------------------ main


def compare(
    workdir: str | os.PathLike, results: dict[str, Any], config: ml_collections.ConfigDict, *, reps: int = stats.REPS
) -> dict[str, Any]:
    """The paired statistics of a finished `psec-jax lm_moe` workdir (see the module docstring).

    Args:
      workdir: the run's workdir (its stages under workdir/stages/<stage>/).
      results: `report.summarize`'s output: its "routers" name the stages (the sweep is not one) and
        their members.
      config: the run's config (top-p thresholds; the model, for FLOPs per token).
      reps: bootstrap replications of every interval.

    Returns:
      JSON-serialisable dict (NaN as None): "arms" {stage: summary}, "versus" {top-p arm: {baseline:
      paired val loss difference}}, "frontier" {"experts" | "flops": {top-p arm: paired difference to
      the interpolated top-k frontier}}, "harder" {top-p arm: {"tasks", "heldout"}}, "difficulty"
      {top-p arm: {"other_seed" | "same_seed": slopes}}, "flops" (FLOPs per token = a + b experts) and
      "notes" (what was left out and why). Differences are arm minus baseline: negative val loss
      differences favour the top-p arm.
    """
    workdir, notes = Path(workdir), []
    arms: dict[str, Arm] = {}
    for name, router in results["routers"].items():
        if name == SWEEP:
            continue
        arm = _load(workdir / "stages" / name, name, tuple(router.get("members", ())), config, notes)
        if arm is not None:
            arms[name] = arm
    flops = flops_per_token(config)
    topk = sorted((a for a in arms.values() if a.k is not None), key=lambda a: a.k)
    topp = [a for a in arms.values() if a.p is not None]
    out: dict[str, Any] = {
        "arms": {name: _arm_summary(a, flops, reps) for name, a in arms.items()},
        "flops": {"per_token_no_expert": flops[0], "per_token_per_expert": flops[1]},
        "versus": {},
        "frontier": {"experts": {}, "experts_polynomial": {}, "flops": {}},
        "harder": {},
        "difficulty": {},
    }
    if not topp:
        notes.append("no top-p arm: nothing to compare")
    missing = [b for b in BASELINES if b not in arms]
    if missing and topp:
        notes.append(f"no {', '.join(missing)} stage: top-p minus {', '.join(missing)} left out")
    if len(topk) < 2 and topp:
        notes.append(
            f"top-k frontier needs >= 2 top-k stages, found {[a.name for a in topk]}: matched comparisons left out"
        )
    tokens: dict[str, dict | None] = {}
    for arm in topp:
        out["versus"][arm.name] = {}
        for b in BASELINES:
            if b in arms:
                members = _common(arm, arms[b])
                out["versus"][arm.name][b] = _paired(
                    _values(arm, members, "val_loss"), _values(arms[b], members, "val_loss"), members, reps
                )
        if len(topk) >= 2:
            members = _common(arm, *topk)
            experts = _values(arm, members, "val_experts")
            out["frontier"]["experts"][arm.name] = _matched(arm, topk, experts, members, reps)
            if len(topk) >= 3:
                row = _matched(arm, topk, experts, members, reps, "polynomial")
                out["frontier"]["experts_polynomial"][arm.name] = row
            if arm.train_experts is None:
                out["frontier"]["flops"][arm.name] = {"skipped": f"no metrics.jsonl in {arm.name}"}
            else:
                train = dict(zip(arm.members, arm.train_experts))
                at = np.array([train[m] for m in members])
                row = _matched(arm, topk, at, members, reps)
                row["train_flops_per_token"] = flops[0] + flops[1] * at
                out["frontier"]["flops"][arm.name] = row
        out["harder"][arm.name] = _harder(arm, reps)
        out["difficulty"][arm.name] = _difficulty(arm, arms.get(REFERENCE), tokens)
    if "top_p" in arms and CONTROL in arms:
        members = _common(arms["top_p"], arms[CONTROL])
        out["adaptive"] = {
            "val_loss": _paired(
                _values(arms["top_p"], members, "val_loss"), _values(arms[CONTROL], members, "val_loss"), members, reps
            ),
            "val_experts": _paired(
                _values(arms["top_p"], members, "val_experts"),
                _values(arms[CONTROL], members, "val_experts"),
                members,
                reps,
            ),
        }
    out["primary"] = _primary(out, notes)
    out["notes"] = notes
    return runs.to_jsonable(out)


# Declared before round two's results: the two tests that decide the paper's claims, Holm-corrected
# together (every other number in the comparison is descriptive). Both on the paper's threshold arm.
PRIMARY_ARM = "top_p"
PRIMARY = (
    ("no worse than top-k at equal experts", ("frontier", "experts", PRIMARY_ARM), "val loss minus the frontier"),
    ("harder tokens use more experts", ("difficulty", PRIMARY_ARM, "other_seed", "mean_over_layers"), "mean slope"),
)


def _primary(out: dict[str, Any], notes: list[str]) -> list[dict[str, Any]]:
    """The PRIMARY tests' estimates, their paired-t (or one-sample t) p-values and Holm-adjusted p-values."""
    rows = []
    for claim, path, what in PRIMARY:
        d: Any = out
        for key in path:
            d = d.get(key, {}) if isinstance(d, dict) else {}
        if "t_p" not in d or d["t_p"] is None or not np.isfinite(d["t_p"]):
            notes.append(f"primary test {claim!r} could not be computed ({'/'.join(path)} missing)")
            continue
        rows.append(
            {
                "claim": claim,
                "statistic": what,
                "path": "/".join(path),
                "n": d["n"],
                "mean": d["mean"],
                "ci": d["ci"],
                "p": d["t_p"],
                "detectable": d.get("detectable"),
            }
        )
    order = sorted(range(len(rows)), key=lambda i: rows[i]["p"])
    running = 0.0
    for rank, i in enumerate(order):  # Holm: p_(j) * (m - j + 1), made monotone
        running = max(running, min(1.0, rows[i]["p"] * (len(rows) - rank)))
        rows[i]["p_holm"] = running
    return rows
