"""The PSEC protocol switches each change what they say, the presets set them, and the statistics
(rliable intervals, probability of improvement) give known answers on known cases."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from rl_helpers import ACT, OBS, random_data

from psec_jax import stats
from psec_jax.configs import psec_continual as continual_config
from psec_jax.rl import config as rl_config
from psec_jax.rl import continual, critics, pi0, policy, report, train

# ------------------------------------------------------------------------------------------ statistics


def test_intervals_known_cases():
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    out = stats.intervals({"a": x, "c": np.full(5, 7.0)}, reps=500)
    assert out["a"]["mean"] == 3.0 and out["a"]["iqm"] == 3.0  # IQM of 5: the middle three
    lo, hi = out["a"]["mean_ci"]
    assert 1.0 < lo < 3.0 < hi < 5.0
    assert out["c"]["mean_ci"] == [7.0, 7.0] and out["c"]["iqm_ci"] == [7.0, 7.0]  # no spread, no interval
    assert stats.intervals({"a": x}, reps=500) == stats.intervals({"a": x}, reps=500)  # seeded
    with pytest.raises(ValueError, match="NaN"):
        stats.intervals({"a": np.array([1.0, np.nan])})
    with pytest.raises(ValueError, match="1-D"):
        stats.intervals({"a": np.ones((2, 2))})


def test_probability_of_improvement_known_cases():
    x = np.array([1.0, 2.0, 3.0])
    out = stats.probability_of_improvement(
        {"hi": x + 10, "lo": x, "same": x}, [("hi", "lo"), ("lo", "hi"), ("same", "lo")], reps=300
    )
    assert out["hi>lo"] == {"p": 1.0, "ci": [1.0, 1.0]} and out["lo>hi"]["p"] == 0.0
    assert out["same>lo"]["p"] == 0.5  # ties count half


def test_summary_rows_carry_intervals():
    results = {"m": {"return": np.array([[1.0, 3.0], [5.0, 7.0], [9.0, 11.0]]), "cost": np.zeros((3, 2))}}
    row = report.summarize(results, reps=300)["m"]
    assert row["return_per_seed"] == [2.0, 6.0, 10.0] and row["return"] == 6.0
    assert row["return_ci"][0] < 6.0 < row["return_ci"][1] and row["return_iqm"] == 6.0
    assert "return_ci" not in report.summarize(results, reps=0)["m"]


# ---------------------------------------------------------------------------------------- the switches


def test_presets():
    default, paper = continual_config.get_config("small"), continual_config.get_config("small,paper_protocol")
    assert default.protocol == "default" and default.obs_norm and default.expand.cosine
    assert default.compose.alpha_reg == 0.0 and default.num_seeds >= 5 and default.eval.episodes >= 10
    assert not paper.obs_norm and not paper.expand.cosine and not paper.pretrain.cosine
    assert paper.compose.alpha_reg == 1.0 and tuple(paper.compose.alpha_targets) == (8.0, 16.0)
    assert paper.base_data == "walker-stand-expert-1000traj" and paper.expand.objective == "advantage"
    assert paper.critics.reward.beta == 1.0 and paper.pretrain.steps > default.pretrain.steps
    with pytest.raises(ValueError, match="protocol"):
        continual_config.get_config("small,magic")
    c = continual_config.get_config("tiny")
    c.skill_trajectories = 3
    assert continual.skill_data_name(c, "walk") == "walker-walk-expert-3traj"
    c.skill_trajectories = 0
    with pytest.raises(ValueError, match="skill_trajectories"):
        continual.SETTING.check_config(c)
    c.skill_trajectories, c.expand.objective = 10, "magic"
    with pytest.raises(ValueError, match="objective"):
        continual.SETTING.check_config(c)


def test_obs_norm_feeds_raw_or_standardised_observations():
    c = continual_config.get_config("tiny")
    obs = jnp.asarray(np.random.default_rng(0).normal(3.0, 2.0, size=(500, OBS)), jnp.float32)
    standardised = pi0.observation_normalizer(c, obs, OBS)(obs)
    np.testing.assert_allclose(np.asarray(standardised).mean(0), 0.0, atol=1e-5)
    c.obs_norm = False
    np.testing.assert_array_equal(np.asarray(pi0.observation_normalizer(c, obs, OBS)(obs)), np.asarray(obs))


def _stage(objective="advantage", cosine=True, steps=4):
    c = ml_collections.ConfigDict(
        dict(
            steps=steps,
            log_every=steps,
            batch_size=16,
            learning_rate=1e-3,
            weight_decay=0.0,
            ema=0.5,
            cosine=cosine,
            objective=objective,
        )
    )
    critic = critics.default_config("reward")
    critic.hidden = (8,)
    return c, critic


def test_skill_objective_bc_weights_every_sample_one():
    actor = policy.make_actor(rl_config.network_config("tiny"), OBS, ACT, "lora")
    data = random_data(128)
    base = actor.init_base(jax.random.key(0))
    weights = {}
    for objective in train.OBJECTIVES:
        c, critic = _stage(objective)
        _, metrics = jax.jit(train.make_expand(actor, c, critic).train)(
            jax.random.key(1), train.ExpandInputs(base, None), data
        )
        weights[objective] = np.asarray(metrics["weight_mean"])
    np.testing.assert_array_equal(weights["bc"], 1.0)
    assert not np.allclose(weights["advantage"], 1.0)
    with pytest.raises(ValueError, match="objective"):
        train.make_expand(actor, _stage("magic")[0], _stage()[1])


def test_learning_rate_constant_or_decayed():
    decayed, constant = (
        train.learning_rate(_stage(cosine=True, steps=100)[0]),
        train.learning_rate(_stage(cosine=False, steps=100)[0]),
    )
    assert float(decayed(0)) == pytest.approx(1e-3) and float(decayed(100)) == pytest.approx(0.0, abs=1e-9)
    assert float(constant(0)) == float(constant(100)) == pytest.approx(1e-3)


def test_alpha_regulariser_pulls_composition_scales_to_its_targets():
    alpha = jnp.array([[4.0, 16.0], [8.0, 20.0]])  # mean 12, newest skill's mean 18
    assert float(train.alpha_regulariser(alpha, (8.0, 16.0))) == pytest.approx(16.0 + 4.0)
    with pytest.raises(ValueError, match="alpha"):
        train.alpha_regulariser(jnp.ones(3), (8.0, 16.0))
    actor = policy.make_actor(rl_config.network_config("tiny"), OBS, ACT, "lora")
    base = actor.init_base(jax.random.key(0))
    skills = actor.init_skill(jax.random.key(1), base)  # K = 1, scale 16
    composer = policy.make_composer("context", OBS, 1, (8,))
    c = ml_collections.ConfigDict(
        dict(
            steps=300,
            log_every=300,
            batch_size=32,
            learning_rate=1e-2,
            network_dropout=False,
            alpha_reg=100.0,
            alpha_targets=(8.0, 16.0),
        )
    )
    state, metrics = jax.jit(train.make_compose(actor, composer, "param", c).train)(
        jax.random.key(2), train.ComposeInputs(base, skills, None), random_data(128)
    )
    alpha = composer.apply(state.params, random_data(128).observations) * skills.scales
    # with K = 1 both terms act on the same alpha: (a - 8)^2 + (a - 16)^2 is least at a = 12
    assert float(jnp.mean(alpha)) == pytest.approx(12.0, abs=0.5)
    assert "alpha_reg" in metrics
    c.alpha_reg = 0.0
    _, metrics = jax.jit(train.make_compose(actor, composer, "param", c).train)(
        jax.random.key(2), train.ComposeInputs(base, skills, None), random_data(128)
    )
    assert "alpha_reg" not in metrics


# ------------------------------------------------------------------------------------------- the sweep


def test_sweep_commands_and_summary(tmp_path):
    import json
    from pathlib import Path

    from experiments import psec_continual_summary
    from experiments import psec_continual_sweep as sweep

    cmd = sweep.command("s2r_paper", Path("runs/x"))
    assert "--config.task=stand_run" in cmd and "--config.pretrained=runs/x/s2w_paper/policies/pi0" in cmd
    assert "--config.library=runs/x/sw2r_paper/policies/library_seed0" in cmd
    assert cmd[2].endswith(":small,paper_protocol") and cmd[-1] == "--workdir=runs/x/s2r_paper"
    assert all(sweep.RUNS[r.after].after == "" for r in sweep.RUNS.values() if r.after)  # one level deep
    # a library is loaded onto the pi_0s it was trained on
    assert all(
        r.library in (r.after, *[n for n, o in sweep.RUNS.items() if o.after == r.after])
        for r in sweep.RUNS.values()
        if r.library
    )

    def fake(methods, value, seeds=3):
        row = lambda v: {
            "return": v,
            "return_ci": [v - 1, v + 1],
            "return_iqm": v,
            "return_iqm_ci": [v - 2, v + 2],
            "return_per_seed": [v - 1, v, v + 1],
            "return_variance": {"seed_sd": 1.0, "episode_sd": 3.0, "episode_share": 0.5},
        }
        return {
            "methods": {m: row(value + i) for i, m in enumerate(methods)},
            "config": {"num_seeds": seeds, "eval": {"bootstrap_reps": 50, "episodes": 2}},
        }

    headline = sweep.HEADLINE.split(",")
    for name, methods, v in (
        ("s2w_paper", headline, 100),
        ("sw2r_paper", ("scratch", "asec", "psec_fixed", "psec"), 200),
        ("s2r_paper", ("asec", "psec_fixed", "psec"), 300),
        ("compose1000_paper", ("psec",), 150),
        ("compose20000_paper", ("psec",), 250),
        ("scratch1000_data1_paper", ("scratch",), 10),
        ("scratch20000_data10_paper", ("scratch",), 500),
    ):
        (tmp_path / f"{name}.json").write_text(json.dumps(fake(methods, v)))
    text = psec_continual_summary.summary(tmp_path)
    assert "#### stand -> walk, paper protocol: return over 3 independent seeds x 2 episodes (smallest" in text
    # psec (104: the 5th method) beats every other seed of s2w: complete separation, marked and explained
    assert "| scratch | 100 [99, 101] | 100 [98, 102] | 1.00 [1.00, 1.00]* | 0.1 | 1 | 3 | 0.50 |" in text
    assert "| psec | 104 [103, 105] | 104 [102, 106] | - | - | 1 | 3 | 0.50 |" in text
    assert psec_continual_summary.SEPARATION in text
    # stand -> run has no scratch of its own: sw2r's (200), against which s2r's psec (302) always wins
    assert "| scratch (of sw2r_paper) | 200 [199, 201] | 200 [198, 202] | 1.00 [1.00, 1.00]* |" in text
    # composer steps against sw2r's scratch (200) and fixed weights (202)
    assert (
        "| 1000 | 3 | 150 [149, 151] | 150 [148, 152] | 0.00 [0.00, 0.00]* | 0.1 | 0.00 [0.00, 0.00]* | 0.1 |" in text
    )
    assert "| 20000 | 3 | 250 [249, 251] |" in text
    # scratch budgets: 6000 steps on 10 trajectories is s2w's scratch
    assert "| 1000 | 10 [9, 11] (3) | - |" in text and "| 6000 | - | 100 [99, 101] (3) |" in text
    assert "| 20000 | - | 500 [499, 501] (3) |" in text
    assert "PSEC-fixed 103 [102, 104], PSEC 104 [103, 105]" in text
    weights = {
        "runs": {
            "sw2r_paper": {
                "skills": ["walk", "run"],
                "alpha_per_seed": [[1.0, 15.0], [3.0, 17.0]],
                "alpha_sd_over_states_per_seed": [[0.5, 2.0], [1.5, 4.0]],
            }
        }
    }
    (tmp_path / "composer_weights.json").write_text(json.dumps(weights))
    text = psec_continual_summary.summary(tmp_path)
    assert (
        "| sw2r_paper | walk | 2.0 | 1.0 - 3.0 | 1.0 |" in text
        and "| sw2r_paper | run | 16.0 | 15.0 - 17.0 | 3.0 |" in text
    )
    done = psec_continual_summary.load(tmp_path)
    assert (
        "composer_weights" not in done
        and psec_continual_summary.plot(done, tmp_path / "summary.png")
        and (tmp_path / "summary.png").stat().st_size
    )
    counts = sweep.trainable_parameters(rl_config.network_config("tiny"))
    assert counts["lora"] < counts["full"] and counts["mlp"] > 0


def test_every_sweep_command_parses_to_the_config_it_names(tmp_path):

    from experiments import psec_continual_sweep as sweep
    from psec_jax import cli
    from psec_jax.data.normalize import Normalizer
    from psec_jax.rl import saving

    # check_config reads the saved pi_0 of each run's parent: the committed one (s2w_paper's) re-saved with
    # the parent's pi_0 data and kind of normaliser
    _, params, _, meta = saving.load_base(pi0.SHIPPED_PI0 / continual_config.DEMO_PI0)
    for parent in {r.after for r in sweep.RUNS.values() if r.after}:
        c = continual_config.get_config(sweep.RUNS[parent].arg)
        normalizer = Normalizer(np.zeros(24), 2 * np.ones(24)) if c.obs_norm else Normalizer.identity(24)
        for i in range(c.num_seeds):  # each seed's own pi_0, as a run with independent seeds saves them
            saving.save_base(
                tmp_path / parent / "policies" / ("pi0" if i == 0 else f"pi0_seed{i}"),
                params,
                ml_collections.ConfigDict(meta["network"]),
                24,
                6,
                normalizer,
                data=c.base_data,
            )
    for parent in {r.library for r in sweep.RUNS.values() if r.library}:  # check_config looks for each seed's
        for i in range(10):
            (tmp_path / parent / "policies" / f"library_seed{i}").mkdir(parents=True, exist_ok=True)
    for name in sweep.RUNS:
        cmd = sweep.command(name, tmp_path)
        config, _, _ = cli.parse_experiment_flags(cmd[1], cmd[2:])
        methods = next(
            (f.split("=", 1)[1].split(",") for f in cmd if f.startswith("--config.methods=")), list(continual.METHODS)
        )
        assert list(config.methods) == methods, name  # `a,b` is the tuple (a, b), not ("a,b",)


def test_demo_builds_on_the_shipped_pi0_from_any_directory(tmp_path, monkeypatch):
    from psec_jax.rl import saving

    monkeypatch.chdir(tmp_path)  # the name resolves to the package's copy, wherever the run starts
    c = continual_config.get_config("demo")
    assert c.protocol == "demo" and tuple(c.methods) == ("scratch", "psec") and not c.obs_norm
    assert pi0.pretrained_paths(c) == [pi0.SHIPPED_PI0 / c.pretrained]
    continual.SETTING.check_config(c)
    params, normalizer = pi0.load_pretrained(c, c.base_data, 24, 6)  # the walker's sizes
    assert jax.tree.leaves(params)[0].shape[0] == 1
    assert float(jnp.abs(normalizer.mean).max()) == 0.0 and float(normalizer.std.min()) == 1.0
    assert saving.load_base(pi0.pretrained_paths(c)[0])[3]["data"] == "walker-stand-expert-1000traj"


def test_psec_docs_tables_are_the_committed_results():
    from pathlib import Path

    from experiments import psec_continual_summary as summary

    root = Path(__file__).resolve().parents[1]
    page = (root / "docs" / "psec.md").read_text()
    start, end = "<!-- ROUND TWO RESULTS -->", "<!-- END ROUND TWO RESULTS -->"
    assert page.count(start) == page.count(end) == 1, f"docs/psec.md must hold one {start} ... {end} block"
    block = page.split(start)[1].split(end)[0]
    table_lines = [line for line in summary.summary(root / summary.RESULTS).splitlines() if line.startswith("|")]
    assert table_lines and all(line in block for line in table_lines), (
        "rerun `python -m experiments.psec_continual_sweep summary` into docs/psec.md's round-two block"
    )


def test_alpha_regulariser_pairs_form_has_the_official_minimum_for_any_number_of_skills():
    t = (8.0, 16.0)
    reg = lambda a, form="pairs": float(train.alpha_regulariser(jnp.asarray(a, jnp.float32)[None], t, form))
    # K = 2 is the official formula: ((a0 + a1) / 2 - 8)^2 + (a1 - 16)^2, e.g. a = (4, 20): 16 + 16
    assert reg([4.0, 20.0]) == reg([4.0, 20.0], "mean") == pytest.approx(32.0)
    # the unique minima, derived by hand: newest at 16, older ones at 2 * 8 - 16 = 0 (K = 1: just 16)
    for minimum in ([16.0], [0.0, 16.0], [0.0, 0.0, 16.0]):
        assert reg(minimum) == 0.0
        grad = jax.grad(lambda a: train.alpha_regulariser(a[None], t, "pairs"))(jnp.asarray(minimum))
        assert np.allclose(grad, 0.0)
        for i in range(len(minimum)):  # strictly larger off the minimum along every axis
            moved = list(minimum)
            moved[i] += 1.0
            assert reg(moved) > 0.0
    # K = 3 by hand: a = (2, -2, 16): pairs (9 - 8)^2 + (7 - 8)^2 = 2 (the mean form would call it 0)
    assert reg([2.0, -2.0, 16.0]) == pytest.approx(2.0)
    assert reg([12.0], "mean") == pytest.approx(32.0) and reg([16.0], "mean") == pytest.approx(64.0)
    with pytest.raises(ValueError, match="form"):
        train.alpha_regulariser(jnp.ones((2, 2)), t, "sum")


def test_rank_test_by_hand():
    # x all below y, 3 vs 3: U = 0, and of the C(6, 3) = 20 equally likely splits only this one and its
    # mirror are as extreme: two-sided p = 2 / 20
    r = stats.rank_test(np.array([1.0, 2.0, 3.0]), np.array([4.0, 5.0, 6.0]))
    assert r == {"u": 0.0, "p": pytest.approx(0.1), "exact": True, "separated": True}
    # x = (1, 4, 5), y = (2, 3, 6): U counts pairs with x > y: 4 > 2, 4 > 3, 5 > 2, 5 > 3 -> 4; splits with
    # U <= 4 are 10 of 20 (U is symmetric about 4.5), so p = 2 * 10 / 20 = 1.0
    r = stats.rank_test(np.array([1.0, 4.0, 5.0]), np.array([2.0, 3.0, 6.0]))
    assert r["u"] == 4.0 and r["p"] == pytest.approx(1.0) and not r["separated"]
    assert not stats.rank_test(np.array([1.0, 1.0]), np.array([1.0, 2.0]))["exact"]  # ties: normal approximation


def test_variance_split_by_hand():
    # two seeds x two episodes: seed means 1 and 3 (var 2, ddof 1); within-seed variances 2 and 2, so the
    # episodes add 2 / 2 = 1 to the variance of a seed mean: seed sd sqrt(2 - 1) = 1, episode share 1 / 2
    v = stats.variance_split(np.array([[0.0, 2.0], [2.0, 4.0]]))
    assert v == {
        "episode_sd": pytest.approx(2**0.5),
        "seed_sd": pytest.approx(1.0),
        "episode_share": pytest.approx(0.5),
    }
    # identical seed means: all of the spread is the episodes'
    assert stats.variance_split(np.array([[0.0, 2.0], [2.0, 0.0]]))["episode_share"] == 1.0
    with pytest.raises(ValueError, match="episodes >= 2"):
        stats.variance_split(np.ones((3, 1)))


def test_report_names_rank_tests_and_complete_separation():
    from psec_jax.rl import report

    results = {
        "psec": {"return": np.array([[4.0, 4.2], [5.0, 5.2], [6.0, 6.2]]), "cost": np.zeros((3, 2))},
        "scratch": {"return": np.array([[1.0, 1.2], [2.0, 2.2], [3.0, 3.2]]), "cost": np.zeros((3, 2))},
    }
    summary = report.summarize(results, reps=50)
    assert summary["psec"]["return_variance"]["episode_sd"] == pytest.approx(np.std([4.0, 4.2], ddof=1))
    imp = report.improvements(summary, [("psec", "scratch")], reps=50)["psec>scratch"]
    assert imp["p"] == 1.0 and imp["rank_p"] == pytest.approx(0.1) and imp["separated"] and imp["rank_exact"]
    lines = report.improvement_lines({"psec>scratch": imp})
    assert lines[2] == "| P(psec > scratch) | 1.00 [1.00, 1.00] | 0.1 |"
    assert lines[-1].startswith("Complete separation in P(psec > scratch)")


def test_detectable_improvement_by_noethers_formula():
    # 10 vs 10, alpha 0.05, power 0.8: (1.95996 + 0.84162)^2 / (12 * 0.25 * 20) = 0.13088 -> 0.5 + 0.36178
    assert stats.detectable_improvement(10, 10) == pytest.approx(0.86178, abs=1e-4)
    assert stats.detectable_improvement(5, 5) > 1.0  # 5 vs 5 seeds cannot detect any effect at 80% power
