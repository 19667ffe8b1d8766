"""The statistics that decide the LM experiment's claims: paired comparisons of arms over seeds.

Member seed i of every stage has the same initialisation key and the same data order, so arms are
compared seed by seed (`psec_jax.stats.paired_difference`: the mean difference, its t-interval, the
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
    slope is not the top-p model's own errors feeding back), with token and position-in-window fixed
    effects (difficulty falls along a window, and a router may use more experts early: either alone
    would give a slope with no difficulty in it) and errors clustered by window (`difficulty.per_layer`);
    per layer the mean slope across seeds with a t-interval and a sign test; the token-only slope and
    the same seed's top2 as reference as sensitivity rows; top_p minus its rolled control, per seed.

A comparison whose stages (or files) are missing is left out with a note saying why.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from psec_jax import runs, stats
from psec_jax.models import harder
from psec_jax.models import train as lm_train
from psec_jax.models import transformer as tf
from psec_jax.models.arms import BASELINES, CONTROL, HARDER, REFERENCE, SWEEP, Arm, common, load, paired, values


class ComparisonError(Exception):
    """The comparison of a finished run failed (the run's results are written; rerunning compares again)."""


__all__ = [
    "ComparisonError",
    "CONTROL",
    "HARDER",
    "INTERPOLATIONS",
    "MARGIN",
    "PRIMARY",
    "compare",
    "flops_per_token",
    "frontier",
]

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
    loss = values(arm, members, "val_loss")
    experts = values(arm, members, "val_experts")
    layers = np.array([[np.nan if v is None else v for v in arm.final[m]["val_experts_per_layer"]] for m in members])
    train = (
        arm.train_experts
        if arm.train_experts is not None
        else (None if arm.k is None else np.full(len(members), arm.k, float))
    )
    finite = loss[np.isfinite(loss)]
    interval = stats.intervals({arm.name: finite}, reps=reps)[arm.name] if finite.size else {}
    trends = {}
    if arm.p is not None:  # a top-k arm's counts are k everywhere: nothing to test
        # "lower layers use more experts": per seed the least-squares slope of experts on layer index
        ok = np.all(np.isfinite(layers), 1)
        if ok.sum() >= 2 and layers.shape[1] >= 2:
            per_seed = np.polyfit(np.arange(layers.shape[1]), layers[ok].T, 1)[0]
            trends["layer_slope"] = {**stats.one_sample(per_seed), "per_seed": per_seed}
        # "experts fall over training": last chunk minus first, per seed
        change = arm.train_change
        if change is not None and np.isfinite(change).sum() >= 2:
            trends["train_change"] = {**stats.one_sample(change[np.isfinite(change)]), "per_seed": change}
    return {
        "k": arm.k,
        "p": arm.p,
        "members": members,
        "val_loss": {"per_seed": loss, **interval},
        "val_experts": {"mean": float(np.nanmean(experts)), "per_seed": experts},
        "val_experts_per_layer": np.nanmean(layers, 0),
        "train_experts": None if train is None else {"mean": float(np.nanmean(train)), "per_seed": train},
        "train_flops_per_token": None if train is None else float(flops[0] + flops[1] * np.nanmean(train)),
        **trends,
    }


# -------------------------------------------------------------------------------------- frontier


INTERPOLATIONS = ("linear", "polynomial", "least_favourable")
# Declared before any top-p arm of round two had trained (top1 and top2 had: their gap was 0.050 nats):
# "no worse than the top-k frontier" means no worse by more than half the top-1 -> top-2 gap.
MARGIN = 0.025  # nats of val loss


def frontier(losses: dict[int, np.ndarray], experts: np.ndarray, kind: str = "linear") -> np.ndarray:
    """Per seed, the top-k frontier's loss at the given experts per token.

    Args:
      losses: {k: [n] the top-k arm's loss per seed}, at least two k.
      experts: [n] experts per token of the model to match, per seed.
      kind: "linear" (piecewise linear in k: the chord, above a convex frontier, so it flatters the
        matched model), "polynomial" (the polynomial through all K points, a quadratic for k = 1, 2, 3:
        it bends with a convex frontier) or "least_favourable" (per seed the lower of the two: the
        frontier the matched model is least likely to beat, for a claim that it is no worse).

    Returns:
      [n] float64: seed i's losses at its k, interpolated in k at experts[i]; NaN where experts[i] lies
      outside [min k, max k] (not extrapolated) or a loss is missing.
    """
    if kind not in INTERPOLATIONS:
        raise ValueError(f"unknown interpolation {kind!r}; choose from {INTERPOLATIONS}")
    if kind == "least_favourable":
        return np.minimum(frontier(losses, experts, "linear"), frontier(losses, experts, "polynomial"))
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
    losses = {a.k: values(a, members, "val_loss") for a in topk}
    at = frontier(losses, experts, kind)
    known = np.all(np.isfinite(np.stack(list(losses.values()), 1)), 1)
    missing = [m for m, ok in zip(members, known) if not ok]
    outside = [m for m, e, f, ok in zip(members, experts, at, known) if ok and np.isfinite(e) and not np.isfinite(f)]
    loss = values(arm, members, "val_loss")
    out = paired(loss, at, members, reps)
    out.update(experts=experts, frontier_loss=at, k_range=[min(losses), max(losses)], interpolation=kind)
    ok = np.isfinite(loss) & np.isfinite(at)
    if ok.sum() >= 2:
        out["non_inferiority"] = stats.non_inferiority(loss[ok] - at[ok], MARGIN)
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
      JSON-serialisable dict (NaN as None): "arms" {stage: summary, with "layer_slope" / "train_change"
      trends for top-p arms}, "versus" {top-p arm: {baseline: paired val loss difference}}, "frontier"
      {"experts" | "experts_polynomial" | "experts_least_favourable" | "flops": {top-p arm: paired
      difference to the interpolated top-k frontier, with its "non_inferiority" test against MARGIN}},
      "harder" {top-p arm: {"tasks", "measured", "heldout"}}, "difficulty" {top-p arm: {"other_seed" |
      "same_seed": slopes}}, "adaptive" (top_p minus its rolled control: val loss, experts, difficulty
      slope), "primary" (the PRIMARY tests, Holm-corrected), "flops" (FLOPs per token = a + b experts)
      and "notes" (what was left out and why). Differences are arm minus baseline: negative val loss
      differences favour the top-p arm.
    """
    workdir, notes = Path(workdir), []
    arms: dict[str, Arm] = {}
    for name, router in results["routers"].items():
        if name == SWEEP:
            continue
        arm = load(workdir / "stages" / name, name, tuple(router.get("members", ())), config, notes)
        if arm is not None:
            arms[name] = arm
    flops = flops_per_token(config)
    topk = sorted((a for a in arms.values() if a.k is not None), key=lambda a: a.k)
    topp = [a for a in arms.values() if a.p is not None]
    out: dict[str, Any] = {
        "arms": {name: _arm_summary(a, flops, reps) for name, a in arms.items()},
        "flops": {"per_token_no_expert": flops[0], "per_token_per_expert": flops[1]},
        "versus": {},
        "frontier": {"experts": {}, "experts_polynomial": {}, "experts_least_favourable": {}, "flops": {}},
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
                members = common(arm, arms[b])
                out["versus"][arm.name][b] = paired(
                    values(arm, members, "val_loss"), values(arms[b], members, "val_loss"), members, reps
                )
        if len(topk) >= 2:
            members = common(arm, *topk)
            experts = values(arm, members, "val_experts")
            out["frontier"]["experts"][arm.name] = _matched(arm, topk, experts, members, reps)
            if len(topk) >= 3:
                for kind in ("polynomial", "least_favourable"):
                    out["frontier"][f"experts_{kind}"][arm.name] = _matched(arm, topk, experts, members, reps, kind)
            if arm.train_experts is None:
                out["frontier"]["flops"][arm.name] = {"skipped": f"no metrics.jsonl in {arm.name}"}
            else:
                train = dict(zip(arm.members, arm.train_experts))
                at = np.array([train[m] for m in members])
                row = _matched(arm, topk, at, members, reps)
                row["train_flops_per_token"] = flops[0] + flops[1] * at
                out["frontier"]["flops"][arm.name] = row
        out["harder"][arm.name] = harder.tasks_and_heldout(arm, arms.get(REFERENCE), reps)
        out["difficulty"][arm.name] = harder.difficulty_slopes(arm, arms.get(REFERENCE), tokens)
    if "top_p" in arms and CONTROL in arms:
        members = common(arms["top_p"], arms[CONTROL])
        out["adaptive"] = {
            "val_loss": paired(
                values(arms["top_p"], members, "val_loss"), values(arms[CONTROL], members, "val_loss"), members, reps
            ),
            "val_experts": paired(
                values(arms["top_p"], members, "val_experts"),
                values(arms[CONTROL], members, "val_experts"),
                members,
                reps,
            ),
        }
        slopes = {
            name: {
                s["member"]: np.mean(s["slope"])
                for s in out["difficulty"][name].get("other_seed", {}).get("per_seed", [])
            }
            for name in ("top_p", CONTROL)
        }
        members = [m for m in members if m in slopes["top_p"] and m in slopes[CONTROL]]
        x, y = (np.array([slopes[name][m] for m in members], float) for name in ("top_p", CONTROL))
        out["adaptive"]["difficulty_slope"] = paired(x, y, members, reps)
    out["primary"] = _primary(out, notes)
    out["notes"] = notes
    return runs.to_jsonable(out)


# Declared before round two's results: the two tests that decide the paper's claims, Holm-corrected
# together (every other number in the comparison is descriptive). Both on the paper's threshold arm.
# Revised before any top-p arm trained (top1, top2 had; review of the analysis code): "no worse" is a
# one-sided non-inferiority test against MARGIN on the least favourable frontier (it was a two-sided test
# of 0 on the chord, where not rejecting would have been read as "no worse"), and the difficulty slope
# absorbs position in the window as well as the token.
PRIMARY_ARM = "top_p"
PRIMARY = (
    (
        f"no worse than top-k at equal experts (margin {MARGIN} nats)",
        ("frontier", "experts_least_favourable", PRIMARY_ARM, "non_inferiority"),
        "val loss minus the least favourable frontier; one-sided, H0: >= margin",
    ),
    (
        "harder tokens use more experts",
        ("difficulty", PRIMARY_ARM, "other_seed", "mean_over_layers"),
        "mean slope (experts per nat), token + position effects; two-sided",
    ),
)


def _primary(out: dict[str, Any], notes: list[str]) -> list[dict[str, Any]]:
    """The PRIMARY tests' estimates, p-values (one-sided non-inferiority, two-sided one-sample t) and
    Holm-adjusted p-values; a non-inferiority row's interval is its one-sided bound (-inf, upper]."""
    rows = []
    for claim, path, what in PRIMARY:
        d: Any = out
        for key in path:
            d = d.get(key, {}) if isinstance(d, dict) else {}
        p = d.get("p", d.get("t_p")) if isinstance(d, dict) else None
        if p is None or not np.isfinite(p):
            notes.append(f"primary test {claim!r} could not be computed ({'/'.join(path)} missing)")
            continue
        one_sided = "margin" in d
        rows.append(
            {
                "claim": claim,
                "statistic": what,
                "path": "/".join(path),
                "n": d["n"],
                "mean": d["mean"],
                "ci": [None, d["upper"]] if one_sided else d["ci"],
                "p": p,
                # resolution: the smallest detectable difference (two-sided), or for a margin the largest
                # true difference still shown no worse with 80% power
                "detectable": d["largest_shown"] if one_sided else d.get("detectable"),
                **({"power_at_zero": d["power_at_zero"]} if one_sided else {}),
            }
        )
    order = sorted(range(len(rows)), key=lambda i: rows[i]["p"])
    running = 0.0
    for rank, i in enumerate(order):  # Holm: p_(j) * (m - j + 1), made monotone
        running = max(running, min(1.0, rows[i]["p"] * (len(rows) - rank)))
        rows[i]["p_holm"] = running
    return rows
