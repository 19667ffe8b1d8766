"""`psec_jax.models.compare`'s output as markdown: the tables of `comparison.md`, with the smallest
detectable difference beside every paired comparison."""

from __future__ import annotations

from typing import Any

import numpy as np

from psec_jax.models.compare import CONTROL, MARGIN, PRIMARY_ARM, REFERENCE


def _f(x: Any, fmt: str = ".3f") -> str:
    return "n/a" if x is None else f"{x:{fmt}}"


def _row(d: dict[str, Any], fmt: str = "+.3f") -> str:
    """Cells: difference | 95% CI | t p | Wilcoxon p | n | sd | smallest detectable (or the reason it
    was skipped)."""
    if "skipped" in d:
        return f"skipped: {d['skipped']} | | | | | | "
    lo, hi = d["ci"]
    return (
        f"{_f(d['mean'], fmt)} | [{_f(lo, fmt)}, {_f(hi, fmt)}] | {_f(d['t_p'], '.3g')} | "
        f"{_f(d['wilcoxon_p'], '.3g')} | {d['n']} | {_f(d['sd'], '.3f')} | {_f(d['detectable'], '.3f')}"
    )


PAIRED_HEAD = "difference | 95% CI (t) | t p | Wilcoxon p | n | sd | smallest detectable (80% power)"


def markdown(comparison: dict[str, Any]) -> str:
    """`compare`'s output as markdown tables, the smallest detectable difference beside each comparison."""
    c = comparison
    lines = [
        "### Paired comparisons over seeds",
        "",
        "Seed i of every arm shares its initialisation and data order, so arms are compared seed by seed: "
        "the mean difference over seeds (arm minus baseline), its 95% paired t-interval (the t-test's own, so "
        "the two agree about 0), the paired t-test and Wilcoxon signed-rank p-values (two-sided; with 5 seeds "
        "Wilcoxon's smallest is 0.0625), and the smallest true difference a paired t-test of these seeds "
        "detects at 80% power "
        "(alpha 0.05, the seeds' own sd). Training FLOPs per token: 6 x active parameters, "
        f"{_f(c['flops']['per_token_no_expert'], '.3g')} + {_f(c['flops']['per_token_per_expert'], '.3g')} "
        "x experts per token (embeddings counted, attention's sequence-length term not).",
        "",
        "| arm | seeds | val loss (mean, rliable 95% CI) | experts/token (val) | experts/token (training) "
        "| training FLOPs/token |",
        "|---|---|---|---|---|---|",
    ]
    for name, a in c["arms"].items():
        v = a["val_loss"]
        ci = f"[{_f(v['mean_ci'][0])}, {_f(v['mean_ci'][1])}]" if "mean_ci" in v else ""
        train = a["train_experts"]
        lines.append(
            f"| {name} | {len(a['members'])} | {_f(v.get('mean'))} {ci} | {_f(a['val_experts']['mean'], '.2f')} | "
            f"{_f(train and train['mean'], '.2f')} | {_f(a['train_flops_per_token'], '.3g')} |"
        )
    g = max((len(a["val_experts_per_layer"]) for a in c["arms"].values()), default=0)
    lines += ["", "| arm | " + " | ".join(f"layer {i}" for i in range(g)) + " |", "|---" * (g + 1) + "|"]
    lines += [
        f"| {n} | " + " | ".join(_f(x, ".2f") for x in a["val_experts_per_layer"]) + " |" for n, a in c["arms"].items()
    ]
    trends = [(n, q, a[q]) for n, a in c["arms"].items() for q in ("layer_slope", "train_change") if q in a]
    if trends:
        lines += [
            "",
            "Trends within top-p arms, per seed then over seeds: `layer_slope`, the least-squares slope of experts "
            "on layer index (negative: higher layers use fewer); `train_change`, experts per token in the last "
            "training chunk minus the first.",
            "",
            "| arm | trend | mean | 95% t-interval | t p | seeds > 0 | sign p | smallest detectable |",
            "|---" * 8 + "|",
        ]
        lines += [
            f"| {n} | {q} | {_f(t['mean'], '+.4f')} | [{_f(t['ci'][0], '+.4f')}, {_f(t['ci'][1], '+.4f')}] | "
            f"{_f(t['t_p'], '.3g')} | {t['positive']}/{t['n']} | {_f(t['sign_p'], '.3g')} | "
            f"{_f(t['detectable'], '.4f')} |"
            for n, q, t in trends
        ]
    lines += [
        "",
        f"#### Primary tests (declared before the results; arm {PRIMARY_ARM}, Holm-corrected together)",
        "",
        "| claim | statistic | n | estimate | 95% CI (one-sided for a margin) | p | Holm p | resolution at 80% power "
        "(two-sided: smallest detectable; margin: largest true difference shown no worse) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in c.get("primary", []):
        ci = (
            "(-inf, " + _f(r["ci"][1], "+.4f") + "]"
            if r["ci"][0] is None
            else "[" + ", ".join(_f(v, "+.4f") for v in r["ci"]) + "]"
        )
        lines.append(
            f"| {r['claim']} | {r['statistic']} | {r['n']} | {_f(r['mean'], '+.4f')} | {ci} | {_f(r['p'], '.3g')} | "
            f"{_f(r['p_holm'], '.3g')} | {_f(r.get('detectable'), '.4f')} |"
        )
    if c.get("adaptive"):
        lines += [
            "",
            f"#### Adaptive allocation: top_p minus {CONTROL} (the same counts, given to other tokens)",
            "",
            f"| quantity | {PAIRED_HEAD} |",
            "|---" * 8 + "|",
        ]
        lines += [f"| {q} | {_row(d, '+.4f')} |" for q, d in c["adaptive"].items()]
    lines += ["", "#### Val loss: top-p arm minus top-k baseline", "", f"| arm | baseline | {PAIRED_HEAD} |"]
    lines.append("|---" * 9 + "|")
    for arm, rows in c["versus"].items():
        lines += [f"| {arm} | {b} | {_row(d)} |" for b, d in rows.items()]
    lines += [
        "",
        "#### Val loss minus the top-k frontier (per seed, interpolated in k at the arm's experts per token)",
        "",
        f"Non-inferiority: one-sided test that the arm is worse than the frontier by less than {MARGIN} nats "
        "(H0: difference >= margin); shown when the one-sided 95% upper bound is below the margin.",
        "",
        f"| arm | matched on | experts/token | {PAIRED_HEAD} | upper bound (one-sided 95%) | "
        f"no worse by {MARGIN}: p | left out |",
        "|---" * 13 + "|",
    ]
    titles = (
        ("experts", "val experts, chord"),
        ("experts_polynomial", "val experts, polynomial frontier"),
        ("experts_least_favourable", "val experts, least favourable of the two"),
        ("flops", "training FLOPs, chord"),
    )
    for on, title in titles:
        for arm, d in c["frontier"].get(on, {}).items():
            e = d.get("experts")
            experts = _f(None if not e else float(np.nanmean(np.array(e, float))), ".2f")
            ni = d.get("non_inferiority", {})
            lines.append(
                f"| {arm} | {title} | {experts} | {_row(d)} | {_f(ni.get('upper'), '+.4f')} | "
                f"{_f(ni.get('p'), '.3g')}{' (shown)' if ni.get('shown') else ''} | {d.get('note', '')} |"
            )
    lines += [
        "",
        "#### Harder needs more experts? Within each top-p arm, harder minus easier (answer tokens) and "
        "held-out minus val text",
        "",
        f"A variant is harder by its label; `{REFERENCE} loss` is the same loss difference in the {REFERENCE} arm, "
        "and a pair counts as measured harder when that interval lies above 0. The last row of each arm "
        "averages the experts difference over the measured-harder pairs only.",
        "",
        f"| arm | comparison | quantity | {PAIRED_HEAD} | measured harder |",
        "|---" * 11 + "|",
    ]
    for arm, h in c["harder"].items():
        for d in h["tasks"].values():
            pair = f"{d['harder']} - {d['easier']}"
            quantities = [("experts", d["experts"]), ("accuracy", d["accuracy"]), ("loss", d["loss"])]
            if "reference_loss" in d:
                quantities.append((f"{REFERENCE} loss", d["reference_loss"]))
            mark = {True: "yes", False: "no"}.get(d.get("measured_harder"), "n/a")
            lines += [f"| {arm} | {pair} | {q} | {_row(v, '+.4f')} | {mark} |" for q, v in quantities]
        m = h.get("measured", {})
        if "skipped" in m:
            lines.append(f"| {arm} | measured-harder pairs | experts | skipped: {m['skipped']} | | | | | | | |")
        elif m:
            ci = f"[{_f(m['ci'][0], '+.4f')}, {_f(m['ci'][1], '+.4f')}]"
            lines.append(
                f"| {arm} | measured-harder pairs ({', '.join(m['pairs'])}) | experts | {_f(m['mean'], '+.4f')} | "
                f"{ci} | {_f(m['t_p'], '.3g')} | | {m['n']} | {_f(m['sd'], '.3f')} | {_f(m['detectable'], '.3f')} | |"
            )
        for name, d in h["heldout"].items():
            if "skipped" in d:
                lines.append(f"| {arm} | {name} - val text | | {_row(d)} | |")
                continue
            lines += [f"| {arm} | {name} - val text | {q} | {_row(d[q], '+.4f')} | |" for q in ("experts", "loss")]
    lines += [
        "",
        f"#### Experts per layer on per-token difficulty (the NLL of a {REFERENCE} model at the same position), "
        "token and position-in-window fixed effects, clustered by window",
        "",
        "Slope: experts per nat of reference NLL. `other_seed`: the reference is the top2 model of the next "
        "seed (not the routed model's own seed); `same_seed`: the same seed's top2 (sensitivity). Mean over "
        "seeds with a 95% t-interval; sign test of the seeds' slopes.",
        "",
        "| arm | reference | layer | mean slope | 95% t-interval | seeds > 0 | sign p | t p | per seed |",
        "|---" * 9 + "|",
    ]
    for arm, refs in c["difficulty"].items():
        if "skipped" in refs:
            lines.append(f"| {arm} | skipped: {refs['skipped']} | | | | | | | |")
            continue
        for ref, d in refs.items():
            if "skipped" in d:
                lines.append(f"| {arm} | {ref}: skipped: {d['skipped']} | | | | | | | |")
                continue
            rows = [(str(g), s, [p["slope"][g] for p in d["per_seed"]]) for g, s in enumerate(d["layers"])]
            rows.append(("mean", d["mean_over_layers"], [float(np.mean(p["slope"])) for p in d["per_seed"]]))
            if "skipped" not in d.get("mean_over_layers_token_only", {"skipped": ""}):
                seeds = [float(np.mean(p["slope_token_only"])) for p in d["per_seed"]]
                rows.append(("mean, token effects only", d["mean_over_layers_token_only"], seeds))
            for layer, s, seeds in rows:
                lines.append(
                    f"| {arm} | {ref} | {layer} | {_f(s['mean'], '+.4f')} | [{_f(s['ci'][0], '+.4f')}, "
                    f"{_f(s['ci'][1], '+.4f')}] | {s['positive']}/{s['n']} | {_f(s['sign_p'], '.3g')} | "
                    f"{_f(s['t_p'], '.3g')} | {', '.join(_f(x, '+.4f') for x in seeds)} |"
                )
    if c["notes"]:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in c["notes"]]
    return "\n".join(lines) + "\n"
