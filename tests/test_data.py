"""psec_jax.data: SAC, behaviour-policy levels and files, rollouts, named datasets, on-device data."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from psec_jax import envs
from psec_jax.data import OfflineData, behavior, collect, datasets, formats, pinned, sac
from psec_jax.data.normalize import Normalizer, RunningMoments
from psec_jax.testing import assert_no_recompile, count_compilations


def point_env(episode_length: int = 20, fall_at: float | None = None) -> envs.Env:
    """A 1-D point mass: obs [x, v], action = force, reward = 1 - x^2 (best: stay at 0).

    With `fall_at`, the episode terminates when |x| > fall_at.
    """

    def reset(key):
        x = jax.random.uniform(key, (), minval=-1.0, maxval=1.0)
        return jnp.stack([x, 0.0]), jnp.stack([x, 0.0])

    def step(s, a):
        v = 0.8 * s[1] + 0.1 * a[0]
        x = s[0] + v
        nxt = jnp.stack([x, v])
        done = (jnp.abs(x) > fall_at) if fall_at is not None else jnp.zeros((), bool)
        return nxt, nxt, 1.0 - x**2, done.astype(jnp.float32), v

    return envs.Env("point", "nominal", 2, 1, episode_length, 0.05, 0.1, reset, step)


def small_sac_config():
    c = sac.default_config()
    c.num_envs, c.batch_size, c.updates_per_step = 8, 64, 2
    c.hidden, c.replay_size, c.min_replay = (32, 32), 4096, 256
    return c


# ----- SAC -------------------------------------------------------------------------------------


def test_tanh_gaussian_log_prob_matches_change_of_variables():
    actor = sac.Actor((8,), 3)
    params = actor.init(jax.random.PRNGKey(0), jnp.zeros(4))
    obs = jnp.array([0.3, -1.0, 2.0, 0.5])
    a, logp = sac.sample_action(actor, params, obs, jax.random.PRNGKey(1))
    mean, log_std = actor.apply(params, obs)
    u = np.arctanh(np.asarray(a, np.float64))
    std = np.exp(np.asarray(log_std, np.float64))
    gauss = -0.5 * ((u - mean) / std) ** 2 - np.log(std) - 0.5 * np.log(2 * np.pi)
    expected = np.sum(gauss - np.log(1 - np.tanh(u) ** 2))
    np.testing.assert_allclose(float(logp), expected, rtol=1e-3, atol=1e-3)


def test_normalizer_matches_numpy_statistics():
    x = np.random.default_rng(0).normal(3.0, 2.0, (300, 5)).astype(np.float32)
    n = RunningMoments.zeros(5)
    for chunk in np.split(x, [7, 100, 250]):
        n = n.update(jnp.asarray(chunk))
    np.testing.assert_allclose(n.mean, x.mean(0), rtol=1e-5)
    np.testing.assert_allclose(n.std, np.sqrt(x.var(0) + 1e-6), rtol=1e-4)
    z = np.asarray(n.normalizer()(jnp.asarray(x)))  # clipped to +-10, as SAC and behaviour policies act
    np.testing.assert_allclose(z, np.clip((x - x.mean(0)) / np.sqrt(x.var(0) + 1e-6), -10, 10), atol=1e-4)
    fixed = Normalizer.of(jnp.asarray(x))  # PSEC's: the data's statistics, no clip
    np.testing.assert_allclose(np.asarray(fixed(jnp.asarray(x))).std(0), 1.0, rtol=1e-4)


def test_replay_wraps_around_and_keeps_the_newest_rows():
    tr = lambda v: envs.Transition(
        jnp.full((3, 2), v),
        jnp.zeros((3, 1)),
        jnp.full((3,), v),
        jnp.zeros(3),
        jnp.zeros(3, bool),
        jnp.zeros(3, bool),
        jnp.zeros((3, 2)),
    )
    empty = jax.tree.map(lambda x: jnp.zeros((5, *x.shape[1:]), x.dtype), tr(0.0))
    r = sac.Replay(empty, jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))
    r = r.add(tr(1.0)).add(tr(2.0))
    assert int(r.size) == 5 and int(r.insert) == 1
    np.testing.assert_array_equal(r.data.rewards, [2.0, 1.0, 1.0, 2.0, 2.0])


def test_sac_learns_the_point_task_in_one_scan_without_recompiling():
    env = point_env()
    agent = sac.make_train(env, small_sac_config())
    state = agent.init(jax.random.PRNGKey(0))
    before = float(agent.evaluate(state.actor_params, state.normalizer, jax.random.PRNGKey(5), 32).returns.mean())
    # three chunks, each fed the previous state; only the first one may trace/compile
    state, metrics = assert_no_recompile(agent.run, state, 100, next_args=lambda out: (out[0], 100))
    after = float(agent.evaluate(state.actor_params, state.normalizer, jax.random.PRNGKey(5), 32).returns.mean())
    assert np.all(np.isfinite(np.asarray(metrics["critic_loss"])))
    assert int(state.env_steps) == 256 + 300 * 8
    assert after > before + 1.0, (before, after)
    # the stochastic policy (as datasets collect) acts differently from tanh(mean), reproducibly per key
    evaluate = lambda sample, key=5: (
        agent.evaluate(state.actor_params, state.normalizer, jax.random.PRNGKey(key), 32, sample).returns
    )
    assert not np.allclose(evaluate(True), evaluate(False))
    np.testing.assert_array_equal(evaluate(True), evaluate(True))
    assert not np.array_equal(evaluate(True), evaluate(True, 6))


def test_snapshots_split_a_stack_of_runs():
    """Each run's policy, and its own observation statistics (count [R] with m2 [R, obs_dim]: where R equals
    obs_dim a wrong broadcast would go unnoticed, so R = 3 runs of a 2-D obs here)."""
    from types import SimpleNamespace

    runs = [
        RunningMoments.zeros(2).update(jnp.asarray(np.random.default_rng(r).normal(size=(4 + r, 2)))) for r in range(3)
    ]
    state = SimpleNamespace(
        actor_params={"w": jnp.arange(3.0)},
        normalizer=jax.tree.map(lambda *x: jnp.stack(x), *runs),
        cost_penalty=jnp.zeros(3),
    )
    stacked = behavior._snapshot(state)
    snaps = [jax.tree.map(lambda x: x[r], stacked) for r in range(3)]
    for r, (snap, moments) in enumerate(zip(snaps, runs)):
        assert float(snap.params["w"]) == r
        np.testing.assert_allclose(snap.obs_std, moments.std, rtol=1e-6)
        np.testing.assert_allclose(snap.obs_mean, moments.mean, rtol=1e-6)


def test_select_levels():
    levels = behavior.select_levels([10.0, 50.0, 120.0, 300.0, 900.0, 850.0], num_replay=2)
    assert levels["random"] == 0 and levels["expert"] == 4
    assert levels["medium"] == 3  # 300 is the closest to 900 / 3
    nan = behavior.select_levels([10.0, float("nan"), 40.0], num_replay=1)
    assert nan["expert"] == 2
    assert sorted(v for k, v in levels.items() if k.startswith("replay_")) == [1, 2]


# ----- behaviour-policy files ------------------------------------------------------------------


@pytest.fixture(scope="module")
def point_policies(tmp_path_factory):
    actor = sac.Actor((16,), 1)
    pols = {}
    for i, level in enumerate(("random", "replay_0", "medium", "expert")):
        params = actor.init(jax.random.PRNGKey(i), jnp.zeros(2))
        pols[level] = behavior.BehaviorPolicy(params, jnp.zeros(2), jnp.ones(2))
    info = {
        "env": "point",
        "levels": {l: {"snapshot": i, "env_steps": 100 * i, "return": float(i)} for i, l in enumerate(pols)},
        "config": {"sac": {"hidden": [16]}},
        "action_size": 1,
        "observation_size": 2,
    }
    path = behavior.save(tmp_path_factory.mktemp("pol") / "point", pols, info)
    return path, pols


def test_policy_round_trip_and_corruption(point_policies, tmp_path):
    path, pols = point_policies
    actor, back, meta = behavior.load(path)
    assert actor.hidden == (16,) and meta["levels"]["expert"]["return"] == 3.0
    for level in pols:
        for a, b in zip(jax.tree.leaves(pols[level]), jax.tree.leaves(back[level])):
            np.testing.assert_array_equal(a, b)
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(path, bad)
    victim = next(f for f in sorted((bad / "arrays").rglob("*")) if f.is_file() and f.stat().st_size > 100)
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    with pytest.raises(behavior.PolicyError, match="truncated or changed file arrays/"):
        behavior.load(bad)
    with pytest.raises(behavior.PolicyError, match="missing policy.json"):
        behavior.load(tmp_path / "nowhere")


def test_committed_policies_load():
    for name in sorted(os.listdir(behavior.POLICY_DIR)):
        actor, pols, meta = behavior.load(name)
        assert {"random", "medium", "expert"} <= set(pols), name
        r = {lvl: meta["levels"][lvl]["return"] for lvl in ("random", "medium", "expert")}
        assert r["random"] <= r["medium"] <= r["expert"], (name, r)


# ----- rollouts --------------------------------------------------------------------------------


def test_collect_gives_complete_contiguous_episodes(point_policies):
    _, pols = point_policies
    env = point_env(episode_length=15, fall_at=1.5)
    actor = sac.Actor((16,), 1)
    round_fn = collect.make_round(env, collect.policy_act_fn(actor, "sample", noise=0.5), num_envs=4)
    data = collect.collect(round_fn, pols["expert"], jax.random.PRNGKey(0), 10)
    ends = data["terminals"] | data["timeouts"]
    assert ends.sum() == 10 and ends[-1]
    assert not np.any(data["terminals"] & data["timeouts"])
    lengths = np.diff(np.concatenate([[-1], np.flatnonzero(ends)]))
    assert np.all(lengths[data["timeouts"][ends]] == 15) and np.all(lengths <= 15)
    assert np.all(np.abs(data["next_observations"][data["terminals"], 0]) > 1.5)
    inside = ~ends[:-1]  # within an episode, next obs is the following row's obs
    np.testing.assert_array_equal(data["next_observations"][:-1][inside], data["observations"][1:][inside])
    # velocity-threshold costs come along
    np.testing.assert_array_equal(data["costs"], (data["next_observations"][:, 1] > 0.05).astype(np.float32))
    with count_compilations() as log:  # another policy reuses the compiled round
        collect.collect(round_fn, pols["medium"], jax.random.PRNGKey(1), 3)
    assert not any("one_round" in name for name in log.traced), log.traced


# ----- named datasets --------------------------------------------------------------------------


def test_dataset_names():
    r = datasets.parse("walker-stand-medium-expert-1000traj")
    assert (r.env, r.variant, r.kind, r.num_episodes) == ("walker-stand", "nominal", "medium-expert", 1000)
    r = datasets.parse("halfcheetah:friction_0.5-medium")
    assert (r.env, r.variant, r.kind, r.num_episodes) == ("halfcheetah", "friction_0.5", "medium", 1000)
    assert r.name == "halfcheetah:friction_0.5-medium-1000traj"
    assert datasets.parse("walker-run-expert-10traj", seed=3).filename == "walker-run-expert-10traj-seed3.hdf5"
    with pytest.raises(ValueError, match="empty variant"):
        envs.parse("hopper:")
    for bad, msg in [
        ("walker-fly-expert", "unknown environment"),
        ("hopper-great", "bad dataset name"),
        ("hopper:heavy-medium", "unknown dynamics variant"),
        ("hopper-expert-0traj", ">= 1"),
    ]:
        with pytest.raises(ValueError, match=msg):
            datasets.parse(bad)


def test_dataset_recipes_split_episodes_between_levels():
    levels = ["random", "replay_0", "replay_1", "medium", "expert"]
    assert datasets.parse("hopper-medium-expert-5traj").segments(levels) == [("medium", 2), ("expert", 3)]
    mr = datasets.parse("hopper-medium-replay-8traj").segments(levels)
    assert [l for l, _ in mr] == ["random", "replay_0", "replay_1", "medium"] and sum(n for _, n in mr) == 8
    assert datasets.parse("hopper-expert-7traj").segments(levels) == [("expert", 7)]


def test_cost_kinds_mix_penalised_levels_and_imitate_the_safe_expert():
    levels = {
        "random": {"return": 0.0, "cost": 0.0},
        "medium": {"return": 50.0, "cost": 30.0},
        "expert": {"return": 100.0, "cost": 400.0},
        "penalty1_medium": {"return": 40.0, "cost": 2.0},
        "penalty1_expert": {"return": 70.0, "cost": 9.0},
        "penalty2_medium": {"return": 30.0, "cost": 0.0},
        "penalty2_expert": {"return": 60.0, "cost": 0.0},
    }
    mixed = datasets.parse("hopper-mixed-cost-12traj").segments(levels)
    assert mixed == [(l, 2) for l in ("medium", "expert", *sorted(l for l in levels if l.startswith("penalty")))]
    assert datasets.parse("hopper-imitation").num_episodes == datasets.IMITATION_EPISODES
    assert datasets.parse("hopper-imitation-3traj").segments(levels) == [("penalty1_expert", 3)]  # 70 with cost 9 <= 10
    levels["penalty1_expert"]["cost"] = 11.0  # over the limit: the best within it
    assert datasets.safe_expert(levels) == "penalty2_expert"
    unsafe = {k: {**v, "cost": v["cost"] + 50} for k, v in levels.items()}
    assert datasets.safe_expert(unsafe) == "penalty2_expert"  # none within: the lowest cost (first by name on ties)
    plain = {k: v for k, v in levels.items() if not k.startswith("penalty")}
    with pytest.raises(formats.DatasetError, match="cost-penalised"):
        datasets.parse("hopper-mixed-cost").segments(plain)
    with pytest.raises(formats.DatasetError, match="cost-penalised"):
        datasets.safe_expert(plain)


def test_a_kind_the_policies_cannot_make_fails_before_any_rollout(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "policy_checksum", lambda env: "0" * 64)
    monkeypatch.setattr(datasets, "policy_levels", lambda env: {"random": {}, "medium": {}, "expert": {}})
    monkeypatch.setattr(datasets, "generate", lambda *a, **k: pytest.fail("generated"))
    for name in ("hopper-mixed-cost-10traj", "hopper-imitation"):
        with pytest.raises(formats.DatasetError, match="--config=behavior:hopper"):
            datasets.get(name, directory=tmp_path)


def test_imitation_set_is_disjoint_from_the_mixed_cost_data(tmp_path, monkeypatch):
    """The composer's imitation set and the training data come from their own rollout keys: no transition
    of one is in the other, though the imitation policy is one of the mixed set's."""
    actor = sac.Actor((8,), 1)
    pol = lambda i: behavior.BehaviorPolicy(actor.init(jax.random.PRNGKey(i), jnp.zeros(2)), jnp.zeros(2), jnp.ones(2))
    names = ("random", "medium", "expert", "penalty1_medium", "penalty1_expert")
    info = {
        "levels": {
            n: {"return": float(i), "cost": float(i), "cost_penalty": 0.0, "env_steps": i} for i, n in enumerate(names)
        },
        "config": {"sac": {"hidden": [8]}},
        "observation_size": 2,
        "action_size": 1,
    }
    behavior.save(tmp_path / "policy", {n: pol(i) for i, n in enumerate(names)}, info)
    monkeypatch.setattr(datasets.envs_lib, "make", lambda name, variant=None: point_env(episode_length=10))
    data = {}
    for name in ("hopper-mixed-cost-8traj", "hopper-imitation-4traj"):
        datasets.generate(datasets.parse(name), tmp_path / f"{name}.hdf5", policy_dir=tmp_path / "policy")
        data[name], meta = formats.load_d4rl(tmp_path / f"{name}.hdf5")
        assert meta["num_episodes"] == int(name.split("-")[-1][0])
    imitation, mixed = data["hopper-imitation-4traj"], data["hopper-mixed-cost-8traj"]
    assert {s["level"] for s in formats.load_d4rl(tmp_path / "hopper-imitation-4traj.hdf5")[1]["segments"]} == {
        "penalty1_expert"
    }
    rows = lambda d: {tuple(np.round(r, 6)) for r in np.concatenate([d["observations"], d["actions"]], 1)}
    assert not rows(imitation) & rows(mixed)


def test_generate_cache_and_verify(tmp_path, monkeypatch):
    """The real pipeline on the committed walker-stand policies: file, loaders, cache, checksum."""
    calls = []
    real = datasets.generate
    monkeypatch.setattr(datasets, "generate", lambda *a, **k: calls.append(a) or real(*a, **k))
    monkeypatch.setattr(pinned, "applies", lambda: False)  # generate in this process
    path = datasets.get("walker-stand-medium-expert-2traj", directory=tmp_path)
    data, meta = formats.load_d4rl(path)
    assert meta["num_episodes"] == 2 and len(data["rewards"]) == 2000 == meta["num_transitions"]
    assert meta["command"] == "psec-jax dataset walker-stand-medium-expert-2traj"
    assert [s["level"] for s in meta["segments"]] == ["medium", "expert"]
    returns = formats.trajectory_returns(data)
    np.testing.assert_allclose(returns.mean(), meta["return_mean"], rtol=1e-5)
    assert returns[1] > returns[0]  # the expert episode beats the medium one
    assert data["timeouts"].sum() == 2 and not data["terminals"].any()
    assert datasets.get("walker-stand-medium-expert-2traj", directory=tmp_path) == path
    assert len(calls) == 1  # cached
    with open(path, "r+b") as f:  # corrupt one byte: the checksum catches it and it regenerates
        f.seek(4000)
        byte = f.read(1)
        f.seek(4000)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.warns(UserWarning, match="checksum or policies do not match"):
        datasets.get("walker-stand-medium-expert-2traj", directory=tmp_path)
    assert len(calls) == 2
    again, _ = formats.load_d4rl(path)
    for k in data:  # deterministic regeneration
        np.testing.assert_array_equal(again[k], data[k])
    # a different dataset of the same env does not reuse these episodes
    other, _ = formats.load_d4rl(datasets.get("walker-stand-medium-1traj", directory=tmp_path))
    assert not np.array_equal(other["observations"], data["observations"][:1000])  # same policy, own keys
    # datasets of an env without committed policies: a clear error before anything is built
    monkeypatch.setattr(behavior, "POLICY_DIR", tmp_path / "no-policies")
    with pytest.raises(behavior.PolicyError, match="no committed behaviour policies for 'walker-walk'"):
        datasets.get("walker-walk-expert-10traj", directory=tmp_path)


# ----- on-device data --------------------------------------------------------------------------


def _toy_transitions(lengths=(3, 4, 2)):
    n = sum(lengths)
    ends = np.cumsum(lengths) - 1
    return {
        "observations": np.arange(n, dtype=np.float32)[:, None].repeat(2, 1),
        "actions": np.zeros((n, 1), np.float32),
        "rewards": np.arange(n, dtype=np.float32),
        "terminals": np.isin(np.arange(n), ends[:1]),
        "timeouts": np.isin(np.arange(n), ends[1:]),
        "next_observations": np.arange(1, n + 1, dtype=np.float32)[:, None].repeat(2, 1),
    }


def test_offline_sample_inside_scan():
    data = OfflineData.from_numpy(_toy_transitions())

    @jax.jit
    def total(data, key):
        def body(acc, k):
            b = data.sample(k, 16)
            return acc + b.rewards.sum(), b.observations[:, 0] - b.rewards

        return jax.lax.scan(body, 0.0, jax.random.split(key, 50))

    s, diffs = total(data, jax.random.PRNGKey(0))
    np.testing.assert_array_equal(diffs, 0.0)  # rows stay aligned across fields
    assert 0 < float(s) / (50 * 16) < 8.0
    assert data.costs.shape == (9,) and float(data.costs.sum()) == 0.0


def test_offline_episode_selection():
    data = OfflineData.from_numpy(_toy_transitions())
    np.testing.assert_array_equal(data.episode_ids(), [0, 0, 0, 1, 1, 1, 1, 2, 2])
    two = data.take_episodes(np.array([0, 2]))
    np.testing.assert_array_equal(two.rewards, [0, 1, 2, 7, 8])
    one = data.subsample_episodes(jax.random.PRNGKey(0), 0.05)
    assert int(one.episode_ids()[-1]) == 0 and one.size in (2, 3, 4)
    with pytest.raises(ValueError, match="fraction"):
        data.subsample_episodes(jax.random.PRNGKey(0), 0.0)
    both = OfflineData.concatenate([data, two])
    assert both.size == 14


def test_own_envs_have_measured_reference_returns():
    from psec_jax.data import scores

    table = scores.policy_references()
    assert "walker-stand" in table
    random, expert = table["walker-stand"]
    assert expert > random
    assert scores.normalized_score("walker-stand", expert, table=table) == pytest.approx(100.0)
    assert scores.normalized_score("walker-stand", random, table=table) == pytest.approx(0.0)


def test_behavior_experiment_end_to_end_on_a_toy_env(tmp_path, monkeypatch):
    """`psec-jax behavior`'s main: training chunks, levels, policy directory, metrics, summary."""
    from psec_jax import runs
    from psec_jax.data import behavior as entry

    monkeypatch.setattr(behavior.envs_lib, "make", lambda name: point_env())
    config = behavior.default_config()
    config.env = "walker-stand"  # any registry name; make() is replaced by the toy env
    config.sac = small_sac_config()
    config.total_steps, config.eval_every, config.eval_episodes = 2000, 400, 4
    summary = entry.run(config, str(tmp_path))
    records = runs.read_metrics(tmp_path / "train" / "metrics.jsonl")
    assert len(records) == 5 and summary["env_steps"] >= 2000 and "return" in records[-1]
    actor, pols, meta = behavior.load(tmp_path / "policy")
    assert summary["return/expert"] == max(c["return"] for c in meta["curve"])
    assert [c["return"] for c in meta["curve"][1:]] == [r["return"] for r in records]
    assert {"random", "medium", "expert"} <= set(pols)
    # a rerun resumes from the last chunk's checkpoint of everything (snapshots and scores included)
    again, info = behavior.train(config, workdir=tmp_path / "train")
    assert info["curve"] == meta["curve"]
    for level, pol in pols.items():
        for x, y in zip(jax.tree.leaves(pol), jax.tree.leaves(again[level])):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_penalised_sac_runs_train_side_by_side_and_cost_less(monkeypatch):
    """cost_penalties: one vmapped program trains the task's reward and r - lambda * cost; the penalised
    run's levels are chosen on its own objective and its policies pay less cost on the toy task."""
    monkeypatch.setattr(behavior.envs_lib, "make", lambda name: point_env())
    config = behavior.default_config()
    config.env = "hopper"  # a body with a cost; make() is replaced by the toy env
    config.sac = small_sac_config()
    config.total_steps, config.eval_every, config.eval_episodes = 4000, 2000, 16
    config.cost_penalties = (0.0, 5.0)
    behavior.check_config(config)
    records = []
    pols, info = behavior.train(config, log=records.append)
    assert {"random", "medium", "expert", "penalty1_medium", "penalty1_expert"} <= set(pols)
    assert len(records) == 2 and {"return", "cost", "return/run1", "cost/run1", "train/critic_loss/run1"} <= set(
        records[-1]
    )
    # the logged cost is the evaluation's (summed over an episode), not SAC's per-step training cost
    for r, suffix in ((0, ""), (1, "/run1")):
        assert records[-1][f"cost{suffix}"] == info["runs"][r]["curve"][-1]["cost"]
    assert records[-1]["cost"] > 1.0 and 0.0 <= records[-1]["train/cost"] <= 1.0
    nominal, penalised = info["runs"]
    assert penalised["cost_penalty"] == 5.0 and info["levels"]["penalty1_expert"]["cost_penalty"] == 5.0
    for run in info["runs"]:
        best = max(run["curve"], key=lambda c: c["penalized_return"])
        assert run["levels"]["expert"]["return"] == best["return"]
    assert penalised["curve"][-1]["cost"] < nominal["curve"][-1]["cost"], (nominal["curve"], penalised["curve"])
    for bad, message in (((1.0, 2.0), "starting with 0"), ((0.0, True), "starting with 0")):
        config.cost_penalties = bad
        with pytest.raises(ValueError, match=message):
            behavior.check_config(config)
    config.env, config.cost_penalties = "walker-stand", (0.0, 1.0)  # no cost there
    with pytest.raises(ValueError, match="no cost to penalise"):
        behavior.check_config(config)
    key = jax.random.PRNGKey(3)  # one run keeps the key of a plain SAC run; the others fold in their index
    np.testing.assert_array_equal(behavior._run_keys(key, 1)[0], key)
    np.testing.assert_array_equal(behavior._run_keys(key, 3)[2], jax.random.fold_in(key, 2))


def test_target_split_is_by_transition_and_seeded():
    n = 400
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(n, 3))
    data = OfflineData.from_numpy(
        {
            "observations": obs,
            "actions": rng.normal(size=(n, 2)),
            "rewards": np.arange(n, dtype=np.float64),  # the reward names the transition
            "terminals": np.zeros(n),
            "timeouts": (np.arange(n) % 100 == 99).astype(np.float64),  # 4 episodes of 100
            "next_observations": obs + 1.0,
        }
    )
    a = data.subsample_transitions(jax.random.PRNGKey(1), 0.05)
    ids = np.asarray(a.rewards).astype(int)
    assert a.size == 20 and np.all(np.diff(ids) > 0)  # 5% of the transitions, original order
    assert len(np.unique(ids // 100)) > 1  # from several episodes, not one episode's worth
    np.testing.assert_allclose(np.asarray(a.observations), obs[ids], rtol=1e-6)  # whole transitions
    np.testing.assert_allclose(np.asarray(a.next_observations), obs[ids] + 1.0, rtol=1e-6)
    again = data.subsample_transitions(jax.random.PRNGKey(1), 0.05)
    other = data.subsample_transitions(jax.random.PRNGKey(2), 0.05)
    np.testing.assert_array_equal(np.asarray(again.rewards), np.asarray(a.rewards))  # seeded
    assert not np.array_equal(np.asarray(other.rewards), np.asarray(a.rewards))
    assert data.subsample_transitions(jax.random.PRNGKey(0), 1e-6).size == 1
    with pytest.raises(ValueError, match="fraction"):
        data.subsample_transitions(jax.random.PRNGKey(0), 1.5)


def test_every_task_has_a_checked_behaviour_recipe():
    from psec_jax.configs import behavior as behavior_config

    for env in envs.names():
        c = behavior_config.get_config(env)
        behavior.check_config(c)
        assert c.env == env and c.cost_penalties[0] == 0.0
    hopper = behavior_config.get_config("hopper")
    assert hopper.sac.num_envs == hopper.sac.updates_per_step == 16 and len(hopper.cost_penalties) == 3
    with pytest.raises(ValueError, match="no behaviour recipe"):
        behavior_config.get_config("cartpole")
