"""The safe-composition and dynamics-shift experiments: the safety-aware action choice, the safe and
target data subsets, score normalisation, configs, CLI registration and tiny end-to-end runs."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
from rl_helpers import assert_table_complete, point_env, random_data

from psec_jax import cli, lora, registry
from psec_jax.configs import psec_continual as continual_config
from psec_jax.configs import psec_dynamics as dynamics_config
from psec_jax.configs import psec_safe as safe_config
from psec_jax.rl import dynamics, report, safe, saving

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCE = (-10.0, 0.0)  # (random, expert) returns of the point env for 1000-step episodes


def with_episodes(data, length):
    """``data`` cut into episodes of ``length`` transitions (a timeout at every episode end)."""
    n = data.size
    timeouts = (np.arange(n) % length == length - 1).astype(np.float32)
    return data.replace(timeouts=jnp.asarray(timeouts))


def test_safe_subset_and_its_fallback():
    data = with_episodes(random_data(64, 3), 16)  # 4 episodes
    costs = np.zeros(64, np.float32)
    costs[:16] = 1.0  # episode costs 16, 3, 0, 8
    costs[16:19] = 1.0
    costs[48:56] = 1.0
    data = data.replace(costs=jnp.asarray(costs))
    np.testing.assert_allclose(safe.episode_costs(data), [16, 3, 0, 8])
    sub, info = safe.safe_subset(data, 8.0)
    assert info == {
        "episodes": 4,
        "kept": 3,
        "fallback": False,
        "cost_limit": 8.0,
        "kept_cost_mean": 11 / 3,
        "kept_cost_max": 8.0,
    }
    assert sub.size == 48 and float(sub.costs.sum()) == 11.0
    sub, info = safe.safe_subset(data.replace(costs=jnp.asarray(costs) + 1.0), 2.0)  # none within 2
    assert info["fallback"] and info["kept"] == 1 and info["kept_cost_max"] == 16.0  # the cheapest episode
    np.testing.assert_allclose(sub.observations, data.observations[32:48])


def test_reference_normalization_and_offsets():
    off, scale = report.reference_normalization((10.0, 110.0), 500, reference_length=1000, scale=100.0)
    assert (off, scale) == (5.0, 0.5)
    results = {"m": {"return": np.array([[5.0, 55.0], [55.0, 55.0]]), "cost": np.array([[0.0, 10.0], [20.0, 0.0]])}}
    row = report.summarize(results, normalizers={"return": scale, "cost": 10.0}, offsets={"return": off})["m"]
    assert row["return_per_seed"] == [50.0, 100.0] and row["cost_per_seed"] == [0.5, 1.0]
    with pytest.raises(ValueError, match="reference"):
        report.reference_normalization((1.0, 1.0), 10)


@pytest.mark.parametrize("module", [continual_config, safe_config, dynamics_config])
def test_configs(module):
    for size in ("small", "paper", "tiny"):
        c = module.get_config(size)
        assert c.size == size and c.num_seeds >= 1
        for stage in ("pretrain", "expand"):  # every field the trainers read is declared (none via .get)
            assert {"cosine", "weight_decay", "ema", "learning_rate"} <= set(c[stage])
        assert c.compose.network_dropout is False and c.critics.cost.kind == "cost"
    with pytest.raises(ValueError, match="size"):
        module.get_config("huge")


def test_experiments_are_registered_with_the_cli(tmp_path):
    for name in ("psec_safe", "psec_dynamics"):
        assert name in cli.EXPERIMENTS
        path = os.path.join(ROOT, "psec_jax", "configs", f"{name}.py")
        config, workdir, _ = cli.parse_experiment_flags(
            name, [f"--config={path}:tiny", f"--workdir={tmp_path}", "--config.num_seeds=2"]
        )
        assert config.num_seeds == 2 and config.size == "tiny" and workdir == str(tmp_path)
        experiment = registry.load(name)
        assert callable(experiment.run) and callable(experiment.check_config)


def tiny(module):
    c = module.get_config("tiny")
    c.num_seeds = 2
    c.eval.episode_length = 6
    return c


def test_safe_end_to_end_tiny(tmp_path, monkeypatch):
    from psec_jax.rl import acting, runner

    c = tiny(safe_config)
    c.cost_limit = 8.0
    data = with_episodes(random_data(256, 1), 32)  # 8 episodes of ~10 cost each
    imitation = with_episodes(random_data(64, 7), 32)
    made = []  # (rule, candidates) of each method's acting function, in table order
    real_make_act = acting.make_act
    monkeypatch.setattr(acting, "make_act", lambda *a: made.append(a[2:4]) or real_make_act(*a))
    out = safe.SETTING.run(c, tmp_path, data=data, env=point_env(6), reference=REFERENCE, compose_data=imitation)
    n = c.eval.candidates
    assert n > 1 and made == [("argmin_qc", 1 if m.startswith("bc_") else n) for m in safe.METHODS]
    assert runner.rule_of(safe.SETTING, safe_config.get_config("tiny_project")) == "feasible_then_reward"
    with pytest.raises(ValueError, match="needs a cost critic"):  # refused before anything trains
        continual = continual_config.get_config("tiny")
        continual.eval.rule = "argmin_qc"
        runner.check_config(registry.load("psec_continual"), continual)
    assert list(out["methods"]) == list(safe.METHODS)
    assert out["compose_data"] == "(given data)" and out["normalization"]["kind"] == "given"
    for m, row in out["methods"].items():
        for f in ("return", "cost"):
            assert len(row[f"{f}_per_seed"]) == 2 and np.all(np.isfinite(row[f"{f}_per_seed"]))
        # normalised cost = raw cost / cost_limit; normalised reward = (R - R_random * 6/1000) / ...
        np.testing.assert_allclose(row["cost"], out["raw"][m]["cost"] / 8.0)
        np.testing.assert_allclose(row["return"], (out["raw"][m]["return"] + 0.06) / 0.06, rtol=1e-6)
    costs = safe.episode_costs(data)
    assert out["safe_data"]["kept"] == int((costs <= 8.0).sum()) and not out["safe_data"]["fallback"]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert set(saved["methods"]) == set(safe.METHODS) and saved["safe_data"] == out["safe_data"]
    assert saved["acting_rule"] == "argmin_qc"  # the official rule, preset tiny
    from experiments import psec_safe_dynamics

    rows = psec_safe_dynamics.table("tiny", saved)[4:-1]  # one row per method: both fields and PSEC - method
    assert [r.split(" | ")[0].strip("| ") for r in rows] == list(safe.METHODS)
    assert all(r.count("|") == 12 for r in rows) and rows[0].count(" - ") == 0
    assert_table_complete(tmp_path, safe.METHODS, 2, fields=("return", "cost"))
    md = (tmp_path / "results.md").read_text()
    assert "normalized cost" in md and "psec" in md and (tmp_path / "results.png").stat().st_size > 0
    _, base, _, _ = saving.load_base(tmp_path / "policies" / "pi0")
    lib = lora.SkillLibrary.load(tmp_path / "policies" / "library_seed1", base)
    assert lib.names == ["reward", "cost"]
    assert (tmp_path / "policies" / "composer_psec_seed1").is_dir()

    bad_values = (
        ("methods", ("psec", "magic"), "unknown method"),
        ("cost_limit", 0.0, "cost_limit"),
        ("critics.cost.kind", "reward", "critics.cost.kind"),
        ("env", "walker-walk", "no cost"),
    )
    for field, value, message in bad_values:
        bad = tiny(safe_config)
        bad.compose_data = ""
        parent, name = (bad, field) if "." not in field else (bad.critics.cost, "kind")
        setattr(parent, name, value)
        with pytest.raises(ValueError, match=message):
            env = None if field == "env" else point_env(6)  # walker-walk is refused before it is built
            safe.SETTING.run(bad, tmp_path / "bad", data=data, env=env, reference=REFERENCE)


def test_dynamics_end_to_end_tiny(tmp_path):
    c = tiny(dynamics_config)
    # shapes as in the safe test (256 transitions to pretrain on and to expand from), so the stages'
    # programs come from the persistent compilation cache the first test filled
    data = {"source": random_data(256, 1), "target": with_episodes(random_data(5120, 2), 256)}  # 20 episodes
    out = dynamics.SETTING.run(c, tmp_path, data=data, env=point_env(6), reference=REFERENCE)
    assert list(out["methods"]) == list(dynamics.METHODS)
    assert out["target_data"]["episodes"] == 20 and out["target_data"]["transitions"] == 5120
    assert out["target_data"]["kept_transitions"] == 256 and out["target_data"]["split"] == "transitions"  # 5%
    for m, row in out["methods"].items():
        assert len(row["return_per_seed"]) == 2 and np.all(np.isfinite(row["return_per_seed"]))
        np.testing.assert_allclose(row["return"], 100 * (out["raw"][m]["return"] + 0.06) / 0.06, rtol=1e-6)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert set(saved["methods"]) == set(dynamics.METHODS)
    assert_table_complete(tmp_path, dynamics.METHODS, 2)
    assert "normalized score" in (tmp_path / "results.md").read_text()
    _, base, _, _ = saving.load_base(tmp_path / "policies" / "pi0")
    assert lora.SkillLibrary.load(tmp_path / "policies" / "library_seed0", base).names == ["target"]
    # the subset is a function of the config seed only
    a, b = dynamics.target_subset(data["target"], c), dynamics.target_subset(data["target"], c)
    np.testing.assert_array_equal(a.observations, b.observations)

    for field, value, message in (
        ("target_fraction", 0.0, "target_fraction"),
        ("variant", "nominal", "variant"),
        ("methods", ("nope",), "unknown method"),
    ):
        bad = tiny(dynamics_config)
        setattr(bad, field, value)
        with pytest.raises(ValueError, match=message):
            dynamics.SETTING.run(bad, tmp_path / "bad", data=data, env=point_env(6), reference=REFERENCE)


def test_safe_scores_are_dsrl_normalised_by_the_training_data():
    """Without a given reference, the normalised reward maps the training data's lowest / highest episode
    return to 0 / 1 and the cost is divided by the limit: the numbers DSRL's own normalisation gives."""
    from psec_jax.data.formats import dsrl_normalize

    c = safe_config.get_config("tiny")
    c.eval.episode_length = 1000  # DSRL's episodes: no rescaling of the reference returns
    data = with_episodes(random_data(256, 1), 32)
    returns = safe.episode_returns(data)
    np.testing.assert_allclose(returns.sum(), float(np.asarray(data.rewards, np.float64).sum()), rtol=1e-6)
    prep = safe.prepare(c, data=data, env=point_env(6), compose_data=data)
    rep = prep.report
    assert prep.compose == "imitation" and rep.extra["normalization"]["kind"] == "dsrl"
    for raw_return, raw_cost in ((returns.min(), 0.0), (returns.max(), 25.0), (0.5 * returns.sum() / 8, 7.0)):
        want = dsrl_normalize(
            raw_return, raw_cost, min_reward=returns.min(), max_reward=returns.max(), cost_threshold=c.cost_limit
        )
        got = (
            (raw_return - rep.offsets["return"]) / rep.normalizers["return"],
            raw_cost / rep.normalizers["cost"],
        )
        np.testing.assert_allclose(got, want, rtol=1e-9)
    c.compose_data = ""
    assert safe.prepare(c, data=data, env=point_env(6)).compose == "safe"
