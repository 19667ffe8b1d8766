"""`psec_jax.models.compare` on synthetic workdirs: stages top1/top2/top3 and top-p arms of 5 seeds
with a planted top-k frontier (loss = 3 - 0.1 k + seed effect), top-p arms planted on it or off it by a
known offset, planted harder-minus-easier expert gaps, and per-token expert counts with a planted slope
on difficulty (token identity confounded)."""

import json

import numpy as np
import pytest

from psec_jax.configs import lm_moe
from psec_jax.models import compare, comparison_md, tasks

SEEDS = 5
MEMBERS = [f"seed{i}" for i in range(SEEDS)]
G = 2  # MoE layers of the synthetic members
N, R, T = 4, 8, 32  # tokens.npz: batches, rows, positions
VOCAB = 24
SLOPE = (0.3, 0.0)  # planted experts per nat of difficulty, per layer
LABELS = tasks.label_names()

rng = np.random.default_rng(0)
SEED_EFFECT = rng.normal(0, 0.05, SEEDS)  # shared by every arm of a seed: what pairing cancels
TOKEN_IDS = rng.integers(0, VOCAB, (N, R, T)).astype(np.int32)
TOKEN_HARDNESS = rng.uniform(0, 1, VOCAB)
# true per-position difficulty: the token's own part (confounded with its identity) plus a within part
DIFFICULTY = TOKEN_HARDNESS[TOKEN_IDS] + rng.normal(0, 0.5, (N, R, T))
WEIGHTS = np.ones((N, R, T), np.float32)
WEIGHTS[:, :, -3:] = 0.0  # padding: garbage there must be ignored


def loss_at(experts, seed):
    """The planted frontier: 3 - 0.1 experts + the seed's effect."""
    return 3.0 - 0.1 * experts + SEED_EFFECT[seed]


def member(val_loss, val_experts, *, seed, hard_gap=0.0):
    """A final_eval.json member: task experts of the harder variant `hard_gap` above the easier."""
    noise = np.random.default_rng(100 + seed).normal(0, 0.01, 8)
    easy = val_experts - 0.2
    task_experts = [
        easy,
        easy + hard_gap + noise[0],
        easy,
        easy + hard_gap + noise[1],
        easy,
        easy + hard_gap + noise[2],
    ]
    acc = [0.9, 0.5, 0.8, 0.4, 0.95, 0.6]  # every harder variant less accurate
    per_layer = [val_experts + 0.1, val_experts - 0.1]
    heldout = lambda extra: {
        "val_loss": val_loss + 0.5,
        "val_loss_se": 0.01,
        "val_experts": val_experts + extra,
        "val_experts_per_layer": [x + extra for x in per_layer],
    }
    return {
        "val_loss": val_loss,
        "val_loss_se": 0.01,
        "val_experts": val_experts,
        "val_experts_per_layer": per_layer,
        "task_loss": [1.0 - a for a in acc],
        "task_accuracy": acc,
        "task_experts": task_experts,
        "task_experts_per_layer": [task_experts, task_experts],
        "heldout": {"long": heldout(0.2 + noise[3]), "other": heldout(0.1 + noise[4])},
    }


def write_stage(workdir, name, finals, train_experts, nll, experts):
    """stages/<name>/: final_eval.json, metrics.jsonl (two chunks averaging `train_experts` per member)
    and tokens.npz (nll [M, N, R, T], experts [M, G, N, R, T])."""
    d = workdir / "stages" / name
    d.mkdir(parents=True)
    (d / "final_eval.json").write_text(json.dumps({"step": 10, "members": dict(zip(MEMBERS, finals))}))
    records = [
        {"step": s, **{f"experts/{m}": e + sign * 0.3 for m, e in zip(MEMBERS, train_experts)}}
        for s, sign in ((5, 1), (10, -1))
    ]
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    nll, experts = np.array(nll, np.float32), np.array(experts, np.uint8)
    nll[..., WEIGHTS == 0], experts[..., WEIGHTS == 0] = 100.0, 8
    np.savez(
        d / "tokens.npz",
        nll=nll,
        experts=experts,
        inputs=TOKEN_IDS,
        weights=WEIGHTS,
        members=np.array(MEMBERS),
        step=np.asarray(10),
    )


def topk_tokens(k):
    """Each top-k member's NLL: the true difficulty plus a little of its own noise; k experts everywhere."""
    nll = [DIFFICULTY + 2.0 + np.random.default_rng(10 * k + i).normal(0, 0.05, DIFFICULTY.shape) for i in range(SEEDS)]
    return nll, np.full((SEEDS, G, N, R, T), k)


def topp_tokens(seed):
    """Experts per layer: 1.5 + the token's hardness + SLOPE[g] x difficulty, dithered to integers
    (floor(mu + U), U uniform on [0, 1), has mean mu)."""
    r = np.random.default_rng(1000 + seed)
    mu = np.stack([1.5 + TOKEN_HARDNESS[TOKEN_IDS] + b * DIFFICULTY for b in SLOPE])
    return np.floor(mu + r.uniform(0, 1, mu.shape))


@pytest.fixture(scope="module")
def config():
    return lm_moe.get_config()  # router.p 0.4; the model only sets FLOPs per token


def build(workdir, stages=("top1", "top2", "top3", "top_p", "top_p0.3")):
    """The synthetic run: every stage of `stages`; returns report-like results naming them."""
    for k, name in ((1, "top1"), (2, "top2"), (3, "top3")):
        if name in stages:
            finals = [member(loss_at(k, i) + rng.normal(0, 1e-3), float(k), seed=i) for i in range(SEEDS)]
            write_stage(workdir, name, finals, [k] * SEEDS, *topk_tokens(k))
    # top_p: on the frontier at experts 1.5 .. 2.3; trained with 0.4 more experts on average than at the end
    # top_p0.3: 0.05 nats better than the frontier at experts 1.2 .. 2.8
    arms = {"top_p": (1.5, 0.1, 0.0, 0.3), "top_p0.3": (1.2, 0.4, -0.05, 0.0)}
    for name, (start, step, offset, gap) in arms.items():
        if name not in stages:
            continue
        experts = start + step * np.arange(SEEDS)
        finals = [member(loss_at(e, i) + offset, e, seed=i, hard_gap=gap) for i, e in enumerate(experts)]
        nll = [DIFFICULTY + 1.0 for _ in range(SEEDS)]
        write_stage(workdir, name, finals, experts + 0.4, nll, [topp_tokens(i) for i in range(SEEDS)])
    return {"routers": {s: {"members": {m: {} for m in MEMBERS}} for s in stages}}


@pytest.fixture(scope="module")
def full(tmp_path_factory, config):
    workdir = tmp_path_factory.mktemp("run")
    return compare.compare(workdir, build(workdir), config, reps=300)


def test_arm_summaries_and_flops(full, config):
    arms = full["arms"]
    assert list(arms) == ["top1", "top2", "top3", "top_p", "top_p0.3"]
    assert arms["top2"]["k"] == 2 and arms["top_p0.3"]["p"] == pytest.approx(0.3) and arms["top_p"]["p"] == 0.4
    lo, hi = arms["top2"]["val_loss"]["mean_ci"]
    assert lo <= arms["top2"]["val_loss"]["mean"] <= hi
    assert arms["top_p"]["val_experts"]["mean"] == pytest.approx(1.7)  # mean of 1.5, 1.6, ..., 1.9
    assert arms["top_p"]["val_experts_per_layer"] == pytest.approx([1.8, 1.6])
    assert arms["top_p"]["train_experts"]["mean"] == pytest.approx(2.1)  # 0.4 above the final 1.7
    a, b = full["flops"]["per_token_no_expert"], full["flops"]["per_token_per_expert"]
    assert arms["top2"]["train_flops_per_token"] == pytest.approx(a + 2 * b)
    assert arms["top_p"]["train_flops_per_token"] == pytest.approx(a + 2.1 * b)
    # 6 x parameters: one expert of each of the config's MoE layers is 3 SwiGLU matrices of d_model x d_ff_expert
    m = config.model
    assert b == pytest.approx(6 * m.num_layers // m.moe_every * 3 * m.d_model * m.d_ff_expert)


def test_top_p_on_the_frontier_at_matched_experts(full):
    d = full["frontier"]["experts"]["top_p"]
    assert d["n"] == SEEDS and "outside" not in d
    assert abs(d["mean"]) < 2e-3 and d["ci"][0] <= 0.0 <= d["ci"][1]
    assert d["detectable"] > 0 and d["k_range"] == [1, 3]


def test_planted_offset_recovered(full):
    d = full["frontier"]["experts"]["top_p0.3"]
    assert d["mean"] == pytest.approx(-0.05, abs=2e-3)
    assert d["ci"][0] <= -0.05 <= d["ci"][1] and d["ci"][1] < 0 and d["t_p"] < 1e-4
    # against fixed top2 the arm's difference mixes the offset with its experts: 0.1 x (2 - e) - 0.05
    v = full["versus"]["top_p0.3"]["top2"]
    assert v["mean"] == pytest.approx(np.mean(0.1 * (2 - (1.2 + 0.4 * np.arange(SEEDS)))) - 0.05, abs=2e-3)
    assert v["n"] == SEEDS and set(full["versus"]["top_p0.3"]) == {"top1", "top2"}


def test_matched_flops_uses_training_experts(full):
    # trained at 0.4 experts more than at the end: the frontier there is 0.04 nats lower
    d = full["frontier"]["flops"]["top_p"]
    assert d["mean"] == pytest.approx(0.04, abs=2e-3) and d["experts"] == pytest.approx(1.9 + 0.1 * np.arange(SEEDS))
    a, b = full["flops"]["per_token_no_expert"], full["flops"]["per_token_per_expert"]
    assert d["train_flops_per_token"] == pytest.approx(a + b * np.array(d["experts"]))


def test_outside_the_frontier_is_not_extrapolated(full):
    # top_p0.3 trained at 1.6 .. 3.2 experts: seed4's 3.2 is past top3
    d = full["frontier"]["flops"]["top_p0.3"]
    assert d["outside"] == ["seed4"] and d["n"] == SEEDS - 1 and "seed4" not in d["seeds"]
    assert d["frontier_loss"][-1] is None and "not interpolated" in d["note"]
    assert (
        compare.frontier({1: [2.9], 2: [2.8]}, np.array([0.9])).tolist()
        != compare.frontier({1: [2.9], 2: [2.8]}, np.array([1.0])).tolist()
    )
    assert np.isnan(compare.frontier({1: [2.9], 2: [2.8]}, np.array([0.9]))[0])
    assert compare.frontier({1: [2.9], 3: [2.5]}, np.array([2.5]))[0] == pytest.approx(2.6)  # 2.9 + 0.75 x (2.5 - 2.9)


def test_polynomial_frontier_bends_below_the_chord():
    # a convex frontier, loss = 3 - log(k): the chord through k = 1, 2, 3 lies above it, the quadratic close
    losses = {k: [3 - np.log(k)] for k in (1, 2, 3)}
    truth = 3 - np.log(1.5)
    chord = compare.frontier(losses, np.array([1.5]))[0]
    quad = compare.frontier(losses, np.array([1.5]), "polynomial")[0]
    assert chord > quad and abs(quad - truth) < abs(chord - truth)
    assert compare.frontier(losses, np.array([2.0]), "polynomial")[0] == pytest.approx(
        3 - np.log(2)
    )  # through the points
    assert np.isnan(compare.frontier({1: [2.9], 2: [np.nan], 3: [2.7]}, np.array([1.5]))[0])  # missing: not guessed
    with pytest.raises(ValueError, match="unknown interpolation"):
        compare.frontier(losses, np.array([1.5]), "cubic")


def test_least_favourable_frontier_and_non_inferiority(full):
    losses = {k: [3 - np.log(k)] for k in (1, 2, 3)}  # convex: the quadratic bends below the chord
    at = np.array([1.5])
    least = compare.frontier(losses, at, "least_favourable")[0]
    assert least == min(compare.frontier(losses, at)[0], compare.frontier(losses, at, "polynomial")[0])
    # top_p sits on the (straight) planted frontier, top_p0.3 0.05 below it: both no worse by the margin
    for arm in ("top_p", "top_p0.3"):
        ni = full["frontier"]["experts_least_favourable"][arm]["non_inferiority"]
        assert ni["margin"] == compare.MARGIN and ni["shown"] and ni["upper"] < compare.MARGIN
    row = full["primary"][0]
    assert row["path"] == "frontier/experts_least_favourable/top_p/non_inferiority" and row["ci"][0] is None
    assert row["p"] == full["frontier"]["experts_least_favourable"]["top_p"]["non_inferiority"]["p"] < 0.05


def test_trends_over_layers_and_training(full):
    t = full["arms"]["top_p"]
    assert t["layer_slope"]["mean"] == pytest.approx(-0.2) and t["layer_slope"]["n"] == SEEDS  # 0.1 -> -0.1
    assert t["train_change"]["mean"] == pytest.approx(-0.6)  # the two chunks: +0.3, then -0.3
    assert "layer_slope" not in full["arms"]["top2"]  # k everywhere: nothing to test


def test_harder_needs_more_experts(full):
    h = full["harder"]["top_p"]
    for task, (hard, easy) in compare.HARDER.items():
        t = h["tasks"][task]
        assert (t["harder"], t["easier"]) == (hard, easy)
        assert t["experts"]["mean"] == pytest.approx(0.3, abs=0.02) and t["experts"]["ci"][0] > 0.2
        assert t["accuracy"]["mean"] < 0 and t["accuracy"]["x_mean"] < t["accuracy"]["y_mean"]
    assert full["harder"]["top_p0.3"]["tasks"]["sort"]["experts"]["mean"] == pytest.approx(0.0, abs=0.02)
    assert h["heldout"]["long"]["experts"]["mean"] == pytest.approx(0.2, abs=0.02)
    assert h["heldout"]["other"]["experts"]["mean"] == pytest.approx(0.1, abs=0.02)
    assert h["heldout"]["long"]["loss"]["mean"] == pytest.approx(0.5)
    assert h["heldout"]["long"]["experts_per_layer"] == pytest.approx([0.2, 0.2], abs=0.02)
    # every harder variant has the higher loss in top2 too: measured harder, averaged over the three
    assert all(h["tasks"][t]["measured_harder"] for t in compare.HARDER)
    assert h["measured"]["pairs"] == list(compare.HARDER) and h["measured"]["mean"] == pytest.approx(0.3, abs=0.02)


def test_regression_recovers_planted_slope(full):
    d = full["difficulty"]["top_p"]
    other, same = d["other_seed"], d["same_seed"]
    assert [(s["member"], s["reference"]) for s in other["per_seed"]][:2] == [("seed0", "seed1"), ("seed1", "seed2")]
    assert other["per_seed"][-1]["reference"] == "seed0"  # cyclic
    assert all(s["member"] == s["reference"] for s in same["per_seed"])
    assert other["per_seed"][0]["num_tokens"] == int((WEIGHTS > 0).sum())  # padding left out
    assert other["per_seed"][0]["num_clusters"] == N * R  # clustered by window
    for ref in (other, same):
        layer0, layer1 = ref["layers"]
        assert layer0["mean"] == pytest.approx(SLOPE[0], abs=0.03) and layer0["ci"][0] > 0.2
        assert layer0["positive"] == SEEDS and layer0["sign_p"] == pytest.approx(2 / 2**SEEDS)
        assert abs(layer1["mean"]) < 0.03
        assert ref["mean_over_layers"]["mean"] == pytest.approx(np.mean(SLOPE), abs=0.03)
    # without token effects the slope would carry the token's own hardness (experts 1 per unit of it)
    assert other["per_seed"][0]["pooled_slope"][0] > SLOPE[0] + 0.1


def test_json_and_markdown(full):
    json.dumps(full, allow_nan=False)
    md = comparison_md.markdown(full)
    assert "smallest detectable" in md and "top_p0.3 | top2 |" in md and "seed4" in md
    tables, block = [], []
    for line in md.splitlines() + [""]:
        if line.startswith("|"):
            block.append(line.count("|"))
        elif block:
            tables.append(block)
            block = []
    assert len(tables) >= 5 and all(len(set(t)) == 1 for t in tables)  # every row as wide as its header


def test_missing_stages_degrade_with_notes(tmp_path, config):
    out = compare.compare(tmp_path, build(tmp_path, ("top2", "top_p")), config, reps=100)
    assert set(out["versus"]["top_p"]) == {"top2"} and all(v == {} for v in out["frontier"].values())
    assert any("top1" in n and "left out" in n for n in out["notes"])
    assert any("frontier needs >= 2" in n for n in out["notes"])
    assert out["difficulty"]["top_p"]["other_seed"]["layers"][0]["mean"] == pytest.approx(SLOPE[0], abs=0.03)
    comparison_md.markdown(out)

    no_ref = tmp_path / "no_ref"
    results = build(no_ref, ("top1", "top3", "top_p"))
    results["routers"]["top2"] = {"members": {}}  # in the results, but its directory never written
    out = compare.compare(no_ref, results, config, reps=100)
    assert "skipped" in out["difficulty"]["top_p"] and "top2" not in out["arms"]
    assert any("top2: no final_eval.json" in n for n in out["notes"])
    assert out["frontier"]["experts"]["top_p"]["n"] == SEEDS  # top1 and top3 still make a frontier
    (no_ref / "stages" / "top_p" / "metrics.jsonl").unlink()
    out = compare.compare(no_ref, results, config, reps=100)
    assert "skipped" in out["frontier"]["flops"]["top_p"] and out["arms"]["top_p"]["train_experts"] is None
    assert "skipped" in comparison_md.markdown(out)

    only_k = tmp_path / "only_k"
    out = compare.compare(only_k, build(only_k, ("top1", "top2")), config, reps=100)
    assert out["versus"] == {} and any("no top-p arm" in n for n in out["notes"])
    comparison_md.markdown(out)


def test_primary_tests_are_holm_corrected(full):
    rows = full["primary"]
    assert [r["claim"] for r in rows] == [claim for claim, _, _ in compare.PRIMARY]
    ps = sorted(r["p"] for r in rows)
    holm = sorted(r["p_holm"] for r in rows)
    assert holm[0] == pytest.approx(min(1.0, 2 * ps[0])) and holm[1] == pytest.approx(max(holm[0], ps[1]))
    assert "Primary tests" in comparison_md.markdown(full)


def test_adaptive_allocation_against_the_rolled_control(tmp_path, config):
    results = build(tmp_path, ("top1", "top2", "top3", "top_p"))
    experts = 1.5 + 0.1 * np.arange(SEEDS)  # top_p's, as build plants them; the control has the same counts
    finals = [member(loss_at(e, i) + 0.02, e, seed=i) for i, e in enumerate(experts)]
    nll = [DIFFICULTY + 1.0 for _ in range(SEEDS)]
    write_stage(tmp_path, compare.CONTROL, finals, experts + 0.4, nll, [topp_tokens(i) for i in range(SEEDS)])
    results["routers"][compare.CONTROL] = {"members": {m: {} for m in MEMBERS}}
    out = compare.compare(tmp_path, results, config, reps=200)
    d = out["adaptive"]["val_loss"]
    assert d["mean"] == pytest.approx(-0.02, abs=2e-3) and d["ci"][1] < 0  # top_p 0.02 better than its control
    assert abs(out["adaptive"]["val_experts"]["mean"]) < 1e-9  # the same counts
    assert abs(out["adaptive"]["difficulty_slope"]["mean"]) < 1e-9  # the same counts at the same positions
    assert out["arms"][compare.CONTROL]["p"] == pytest.approx(0.4)
    assert "Adaptive allocation" in comparison_md.markdown(out)


def test_final_evaluation_cache_hits_with_ten_or_more_members(tmp_path):
    """final_eval.json's members come back sorted as strings (seed10 before seed2): the cache must still hit,
    and return the members in the stage's order, not evaluate again."""
    from types import SimpleNamespace

    from psec_jax import runs
    from psec_jax.models import runner

    members = [f"seed{i}" for i in range(12)]
    path = tmp_path / "final_eval.json"
    runs.write_json_atomic(path, {"step": 7, "members": {m: {"val_loss": float(i)} for i, m in enumerate(members)}})
    stage = SimpleNamespace(members=members, name="top1", ps=())
    out = runner.final_evaluation(None, None, stage, None, None, path, 7)  # program None: must not evaluate
    assert list(out) == members and out["seed10"]["val_loss"] == 10.0
