"""Dataset file formats (D4RL, DSRL, Minari) and score normalisation.

The files are written here with h5py in the public layouts, as the original projects write
them, so the readers are checked against those layouts rather than against our own writer.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import h5py
import numpy as np
import pytest

from psec_jax.data.formats import (
    DSRL_SCORE_RANGES,
    DatasetError,
    dsrl_normalize,
    load_d4rl,
    load_dsrl,
    load_minari,
    save_d4rl,
    trajectory_returns,
)
from psec_jax.data.scores import D4RL_REF_SCORES, UnknownEnvError, normalized_score

OBS_DIM, ACT_DIM = 3, 2

# ------------------------------------------------------------------------------------------
# Writers for the public layouts
# ------------------------------------------------------------------------------------------


def make_transitions(n: int = 10, *, seed: int = 0, costs: bool = False) -> dict[str, np.ndarray]:
    """Two trajectories: rows 0-3 end terminal, rows 4..n-1 end by timeout."""
    rng = np.random.default_rng(seed)
    data = {
        "observations": rng.normal(size=(n, OBS_DIM)).astype(np.float32),
        "actions": rng.uniform(-1, 1, size=(n, ACT_DIM)).astype(np.float32),
        "rewards": rng.normal(size=n).astype(np.float32),
        "terminals": np.zeros(n, bool),
        "timeouts": np.zeros(n, bool),
        "next_observations": rng.normal(size=(n, OBS_DIM)).astype(np.float32),
    }
    data["terminals"][3] = True
    data["timeouts"][n - 1] = True
    if costs:
        data["costs"] = rng.integers(0, 2, size=n).astype(np.float32)
    return data


def write_d4rl_v2(path: Path, data: dict[str, np.ndarray]) -> None:
    """Like the public D4RL gym-mujoco v2 files: top-level arrays plus infos/ and metadata/."""
    n = len(data["observations"])
    with h5py.File(path, "w") as f:
        for key, value in data.items():
            f.create_dataset(key, data=value, compression="gzip")
        f.create_dataset("infos/action_log_probs", data=np.zeros(n, np.float32))
        f.create_dataset("infos/qpos", data=np.zeros((n, 4), np.float32))
        f.create_dataset("infos/qvel", data=np.zeros((n, 4), np.float32))
        f["metadata/algorithm"] = np.bytes_("SAC")
        f["metadata/iteration"] = np.array([7], dtype=np.int32)[0]
        f["metadata/policy/nonlinearity"] = np.bytes_("relu")
        f["metadata/policy/fc0/weight"] = np.ones((OBS_DIM, 4), np.float32)


def write_dsrl(path: Path, data: dict[str, np.ndarray]) -> None:
    """DSRL files: the seven transition keys at the top level."""
    with h5py.File(path, "w") as f:
        for key, value in data.items():
            f.create_dataset(key, data=value, compression="gzip")


def write_minari(dataset_dir: Path, episodes: list[dict], *, order: list[int] | None = None) -> None:
    """Minari HDF5 backend: data/main_data.hdf5 with episode_<i> groups, data/metadata.json."""
    data_dir = dataset_dir / "data"
    data_dir.mkdir(parents=True)
    order = list(range(len(episodes))) if order is None else order
    with h5py.File(data_dir / "main_data.hdf5", "w") as f:
        for i in order:
            ep = episodes[i]
            group = f.create_group(f"episode_{i}")
            group.attrs["id"] = i
            group.attrs["total_steps"] = len(ep["rewards"])
            for key in ("observations", "actions", "rewards", "terminations", "truncations"):
                value = ep[key]
                group.create_dataset(key, data=value, chunks=True, maxshape=(None, *value.shape[1:]))
            group.create_dataset("infos/success", data=np.zeros(len(ep["observations"]), bool))
    box = lambda d: json.dumps(  # noqa: E731 - Minari's serialised Box space
        {"type": "Box", "dtype": "float32", "shape": [d], "low": [-1.0] * d, "high": [1.0] * d}
    )
    metadata = {
        "dataset_id": "test/dummy-v0",
        "total_episodes": len(episodes),
        "total_steps": sum(len(ep["rewards"]) for ep in episodes),
        "data_format": "hdf5",
        "observation_space": box(OBS_DIM),
        "action_space": box(ACT_DIM),
    }
    (data_dir / "metadata.json").write_text(json.dumps(metadata))


def minari_episode(steps: int, *, terminated: bool, truncated: bool, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    end = np.zeros(steps, bool)
    ep = {
        "observations": rng.normal(size=(steps + 1, OBS_DIM)).astype(np.float32),
        "actions": rng.uniform(-1, 1, size=(steps, ACT_DIM)).astype(np.float32),
        "rewards": rng.normal(size=steps).astype(np.float64),  # Minari stores float64 rewards
        "terminations": end.copy(),
        "truncations": end.copy(),
    }
    ep["terminations"][-1] = terminated
    ep["truncations"][-1] = truncated
    return ep


def names(path: Path, key: str | None = None) -> str:
    """Regex matching a message that names the file and (then) the key."""
    pattern = re.escape(str(path))
    return pattern if key is None else pattern + rf".*'{re.escape(key)}'"


def assert_same(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert sorted(actual) == sorted(expected)
    for key, value in expected.items():
        want_dtype = np.bool_ if key in ("terminals", "timeouts") else np.float32
        assert actual[key].dtype == want_dtype, key
        np.testing.assert_array_equal(actual[key], value, err_msg=key)


# ------------------------------------------------------------------------------------------
# D4RL
# ------------------------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path):
    data = make_transitions(costs=True)
    metadata = {
        "env": "hopper",
        "seed": 3,
        "lr": 3e-4,
        "deterministic": True,
        "nothing": None,
        "policy": {"hidden": [256, 256], "act": {"name": "relu", "slope": 0.0}},
        "datasets": ["medium", 2],
    }
    path = tmp_path / "out.hdf5"
    save_d4rl(path, data, metadata)
    loaded, meta = load_d4rl(path)
    assert_same(loaded, data)
    assert meta == metadata
    assert type(meta["seed"]) is int and type(meta["deterministic"]) is bool


def test_save_casts_and_is_deterministic(tmp_path):
    data = make_transitions()
    data["observations"] = data["observations"].astype(np.float64)
    data["terminals"] = data["terminals"].astype(np.int32)  # 0/1 numbers are accepted
    data["rewards"] = data["rewards"][:, None]  # [N, 1] is accepted for [N]
    a, b = tmp_path / "a.hdf5", tmp_path / "b.hdf5"
    save_d4rl(a, data, {"x": {"y": 1}})
    save_d4rl(b, data, {"x": {"y": 1}})
    assert a.read_bytes() == b.read_bytes()
    loaded, _ = load_d4rl(a)
    assert loaded["observations"].dtype == np.float32 and loaded["terminals"].dtype == np.bool_
    assert loaded["rewards"].shape == (10,)


def test_load_public_d4rl_v2_layout(tmp_path):
    data = make_transitions()
    path = tmp_path / "hopper_medium-v2.hdf5"
    write_d4rl_v2(path, data)
    loaded, meta = load_d4rl(path)
    assert_same(loaded, data)  # infos/* ignored
    assert meta["algorithm"] == "SAC"
    assert meta["iteration"] == 7 and type(meta["iteration"]) is int
    assert meta["policy/nonlinearity"] == "relu"
    np.testing.assert_array_equal(meta["policy/fc0/weight"], np.ones((OBS_DIM, 4)))

    subset, _ = load_d4rl(path, keys=["rewards", "terminals"])
    assert sorted(subset) == ["rewards", "terminals"]
    np.testing.assert_array_equal(subset["rewards"], data["rewards"])


def test_old_d4rl_layout_derives_next_observations(tmp_path):
    # rows 0-2: episode ending terminal at 2; rows 3-5: episode cut off (timeout) at 5;
    # row 6: first row of an episode the file stops in.
    obs = np.arange(7 * OBS_DIM, dtype=np.float32).reshape(7, OBS_DIM)
    rewards = np.arange(1, 8, dtype=np.float32)
    terminals = np.array([0, 0, 1, 0, 0, 0, 0], bool)
    timeouts = np.array([0, 0, 0, 0, 0, 1, 0], bool)
    path = tmp_path / "hopper_medium.hdf5"
    with h5py.File(path, "w") as f:
        f["observations"] = obs
        f["actions"] = np.ones((7, ACT_DIM), np.float32)
        f["rewards"] = rewards[:, None]  # some old files store [N, 1]
        f["terminals"] = terminals
        f["timeouts"] = timeouts
        f["infos/qpos"] = np.zeros((7, 4))

    loaded, meta = load_d4rl(path)
    assert meta == {}
    # kept: rows 0-4 (row 5 is a timeout, row 6 has no successor); row 2 stays terminal
    np.testing.assert_array_equal(loaded["observations"], obs[:5])
    np.testing.assert_array_equal(loaded["next_observations"], obs[1:6])
    np.testing.assert_array_equal(loaded["rewards"], rewards[:5])
    np.testing.assert_array_equal(loaded["terminals"], [0, 0, 1, 0, 0])
    np.testing.assert_array_equal(loaded["timeouts"], [0, 0, 0, 0, 1])  # before dropped row 5
    np.testing.assert_array_equal(trajectory_returns(loaded), [1 + 2 + 3, 4 + 5])

    only, _ = load_d4rl(path, keys=["next_observations"])
    np.testing.assert_array_equal(only["next_observations"], obs[1:6])


# ------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    path = tmp_path / "nope.hdf5"
    with pytest.raises(DatasetError, match=names(path) + ".*does not exist"):
        load_d4rl(path)


def test_truncated_file(tmp_path):
    path = tmp_path / "cut.hdf5"
    save_d4rl(path, make_transitions(200), compression=None)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DatasetError, match=names(path) + ".*(truncated|corrupt)"):
        load_d4rl(path)


def test_not_hdf5(tmp_path):
    path = tmp_path / "notes.hdf5"
    path.write_text("observations,actions\n1,2\n")
    with pytest.raises(DatasetError, match=names(path) + ".*not an HDF5 file"):
        load_d4rl(path)


def test_missing_key(tmp_path):
    data = make_transitions()
    del data["actions"]
    path = tmp_path / "no_actions.hdf5"
    write_d4rl_v2(path, data)
    with pytest.raises(DatasetError, match=names(path, "actions")):
        load_d4rl(path)


def test_length_mismatch(tmp_path):
    data = make_transitions()
    data["actions"] = data["actions"][:-1]
    path = tmp_path / "short.hdf5"
    write_d4rl_v2(path, data)
    with pytest.raises(DatasetError, match=names(path, "actions") + ".*length 9"):
        load_d4rl(path)


def test_group_where_a_dataset_belongs(tmp_path):
    path = tmp_path / "group.hdf5"
    data = make_transitions()
    del data["rewards"]
    write_d4rl_v2(path, data)
    with h5py.File(path, "a") as f:
        f.create_group("rewards")
    with pytest.raises(DatasetError, match=names(path, "rewards") + ".*group"):
        load_d4rl(path)


@pytest.mark.parametrize(
    "change, key",
    [
        (lambda d: d["observations"].__setitem__((2, 1), np.nan), "observations"),
        (lambda d: d.pop("timeouts"), "timeouts"),
        (lambda d: d.__setitem__("actions", d["actions"][:-2]), "actions"),
        (lambda d: d.__setitem__("rewards", np.ones((10, 2), np.float32)), "rewards"),
        (lambda d: d.__setitem__("terminals", np.full(10, 2)), "terminals"),
        (lambda d: d.__setitem__("extra", np.ones(10)), "extra"),
    ],
)
def test_failed_save_leaves_previous_file(tmp_path, change, key):
    path = tmp_path / "data.hdf5"
    save_d4rl(path, make_transitions(), {"version": 1})
    before = path.read_bytes()
    bad = make_transitions(seed=1)
    change(bad)
    with pytest.raises(DatasetError, match=names(path, key)):
        save_d4rl(path, bad, {"version": 2})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.hdf5"]


def test_failed_write_leaves_previous_file(tmp_path):
    path = tmp_path / "data.hdf5"
    save_d4rl(path, make_transitions())
    before = path.read_bytes()
    with pytest.raises(DatasetError, match=names(path)):
        save_d4rl(path, make_transitions(seed=1), compression="no-such-filter")
    with pytest.raises(DatasetError, match=names(path, "blob")):
        save_d4rl(path, make_transitions(seed=1), {"blob": object()})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.hdf5"]


# ------------------------------------------------------------------------------------------
# DSRL
# ------------------------------------------------------------------------------------------


def test_load_dsrl(tmp_path):
    data = make_transitions(costs=True)
    path = tmp_path / "SafetyCarCircle-v0-100-1450.hdf5"
    write_dsrl(path, data)
    loaded, meta = load_dsrl(path)
    assert_same(loaded, data)
    assert meta == {}
    costs = data["costs"]
    np.testing.assert_allclose(trajectory_returns(loaded, "costs"), [costs[:4].sum(), costs[4:].sum()])


@pytest.mark.parametrize("key", ["costs", "next_observations"])
def test_dsrl_requires_key(tmp_path, key):
    data = make_transitions(costs=True)
    del data[key]
    path = tmp_path / "dsrl.hdf5"
    write_dsrl(path, data)
    with pytest.raises(DatasetError, match=names(path, key)):
        load_dsrl(path)


def test_dsrl_normalize():
    # (150 - 50) / (250 - 50) = 0.5; threshold 10 -> eps 0: (5 + 0) / (10 + 0) = 0.5
    reward, cost = dsrl_normalize(150.0, 5.0, min_reward=50.0, max_reward=250.0, cost_threshold=10.0)
    assert reward == pytest.approx(0.5) and cost == pytest.approx(0.5)
    # threshold 0 -> eps 1: (2 + 1) / (0 + 1) = 3; (0 + 1) / 1 = 1
    _, cost = dsrl_normalize(0.0, 2.0, min_reward=0.0, max_reward=1.0, cost_threshold=0.0)
    assert cost == pytest.approx(3.0)
    _, cost = dsrl_normalize(0.0, 0.0, min_reward=0.0, max_reward=1.0, cost_threshold=0.0)
    assert cost == pytest.approx(1.0)
    # explicit eps: (5 + 0.1) / (10 + 0.1)
    _, cost = dsrl_normalize(0.0, 5.0, min_reward=0.0, max_reward=1.0, cost_threshold=10.0, eps=0.1)
    assert cost == pytest.approx(5.1 / 10.1)
    rewards, costs = dsrl_normalize(
        np.array([50.0, 250.0]),
        np.array([0.0, 20.0]),
        min_reward=50.0,
        max_reward=250.0,
        cost_threshold=10.0,
    )
    np.testing.assert_allclose(rewards, [0.0, 1.0])
    np.testing.assert_allclose(costs, [0.0, 2.0])
    with pytest.raises(ValueError):
        dsrl_normalize(1.0, 1.0, min_reward=1.0, max_reward=1.0, cost_threshold=10.0)


def test_dsrl_score_ranges_table():
    assert len(DSRL_SCORE_RANGES) == 38
    for name, (low, high) in DSRL_SCORE_RANGES.items():
        assert 0.0 <= low < high, name
    low, high = DSRL_SCORE_RANGES["HopperVelocity"]
    reward, _ = dsrl_normalize(high, 0.0, min_reward=low, max_reward=high, cost_threshold=20.0)
    assert reward == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------
# Minari
# ------------------------------------------------------------------------------------------


def test_load_minari_flattens_episodes(tmp_path):
    episodes = [
        minari_episode(3, terminated=True, truncated=False, seed=0),
        minari_episode(2, terminated=False, truncated=True, seed=1),
        minari_episode(4, terminated=False, truncated=False, seed=2),  # recording stopped
    ]
    write_minari(tmp_path / "dummy-v0", episodes, order=[2, 0, 1])  # index order, not file order
    data, meta = load_minari(tmp_path / "dummy-v0")

    assert meta["dataset_id"] == "test/dummy-v0" and meta["total_steps"] == 9
    assert data["observations"].shape == (9, OBS_DIM)
    np.testing.assert_array_equal(data["observations"], np.concatenate([ep["observations"][:-1] for ep in episodes]))
    np.testing.assert_array_equal(
        data["next_observations"], np.concatenate([ep["observations"][1:] for ep in episodes])
    )
    np.testing.assert_array_equal(data["actions"], np.concatenate([ep["actions"] for ep in episodes]))
    assert data["rewards"].dtype == np.float32
    np.testing.assert_array_equal(
        data["rewards"], np.concatenate([ep["rewards"] for ep in episodes]).astype(np.float32)
    )
    np.testing.assert_array_equal(data["terminals"], [0, 0, 1, 0, 0, 0, 0, 0, 0])
    # truncated episode, and the last step of the episode without any end flag
    np.testing.assert_array_equal(data["timeouts"], [0, 0, 0, 0, 1, 0, 0, 0, 1])
    np.testing.assert_allclose(
        trajectory_returns(data),
        [ep["rewards"].astype(np.float32).sum() for ep in episodes],
        rtol=1e-6,
    )


def test_minari_dict_observations_not_supported(tmp_path):
    episodes = [minari_episode(2, terminated=True, truncated=False, seed=0)]
    write_minari(tmp_path / "ds", episodes)
    main = tmp_path / "ds" / "data" / "main_data.hdf5"
    with h5py.File(main, "a") as f:  # a Dict space is stored as a group of arrays
        del f["episode_0/observations"]
        f.create_dataset("episode_0/observations/position", data=np.zeros((3, 2)))
    match = names(main, "episode_0/observations") + ".*not supported"
    with pytest.raises(DatasetError, match=match):
        load_minari(tmp_path / "ds")


def test_minari_dict_space_in_metadata_not_supported(tmp_path):
    write_minari(tmp_path / "ds", [minari_episode(2, terminated=True, truncated=False, seed=0)])
    meta_path = tmp_path / "ds" / "data" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["observation_space"] = json.dumps({"type": "Dict", "subspaces": {}})
    meta_path.write_text(json.dumps(meta))
    match = names(tmp_path / "ds", "observations") + ".*Dict.*not supported"
    with pytest.raises(DatasetError, match=match):
        load_minari(tmp_path / "ds")


def test_minari_errors(tmp_path):
    missing = tmp_path / "absent" / "data" / "main_data.hdf5"
    with pytest.raises(DatasetError, match=names(missing) + ".*does not exist"):
        load_minari(tmp_path / "absent")

    episodes = [minari_episode(3, terminated=True, truncated=False, seed=0)]
    episodes[0]["actions"] = episodes[0]["actions"][:-1]
    write_minari(tmp_path / "bad", episodes)
    main = tmp_path / "bad" / "data" / "main_data.hdf5"
    with pytest.raises(DatasetError, match=names(main, "episode_0/actions") + ".*length 2"):
        load_minari(tmp_path / "bad")


# ------------------------------------------------------------------------------------------
# Trajectories and scores
# ------------------------------------------------------------------------------------------


def test_trajectory_returns():
    data = {
        "rewards": np.array([1, 2, 3, 4, 5, 6], np.float32),
        "terminals": np.array([0, 1, 0, 0, 0, 0], bool),
        "timeouts": np.array([0, 0, 0, 1, 0, 0], bool),
    }
    np.testing.assert_array_equal(trajectory_returns(data), [3, 7, 11])  # last one partial
    data["terminals"][-1] = True
    np.testing.assert_array_equal(trajectory_returns(data), [3, 7, 11])  # no empty extra
    del data["timeouts"]
    np.testing.assert_array_equal(trajectory_returns(data), [3, 18])
    empty = {"rewards": np.zeros(0), "terminals": np.zeros(0, bool)}
    assert trajectory_returns(empty).shape == (0,)


def test_normalized_score():
    random, expert = -20.272305, 3234.3  # hopper, D4RL d4rl/infos.py
    assert D4RL_REF_SCORES["hopper"] == (random, expert)
    halfway = random + 0.5 * (expert - random)  # = 1607.0138475
    assert normalized_score("hopper", halfway) == pytest.approx(50.0)
    assert normalized_score("hopper-medium-v2", 1607.0138475) == pytest.approx(50.0)
    assert normalized_score("halfcheetah-medium-replay-v2", 12135.0) == pytest.approx(100.0)
    assert normalized_score("walker2d-expert-v2", 1.629008) == pytest.approx(0.0)
    # 100 * (1000 - (-325.6)) / (3879.7 + 325.6) = 132560 / 4205.3
    assert normalized_score("ant", 1000.0) == pytest.approx(132560.0 / 4205.3)
    np.testing.assert_allclose(normalized_score("hopper", np.array([random, expert])), [0.0, 100.0])


def test_normalized_score_own_references():
    assert normalized_score("my-task", 50.0, reference=(0.0, 200.0)) == pytest.approx(25.0)
    assert normalized_score("my-task", 50.0, {"my-task": (10.0, 90.0)}) == pytest.approx(50.0)
    with pytest.raises(UnknownEnvError, match=r"'antmaze-umaze-v2'.*known: \['ant', 'halfcheetah'"):
        normalized_score("antmaze-umaze-v2", 1.0)
    with pytest.raises(KeyError):
        normalized_score("HalfCheetah-v4", 1.0)
    with pytest.raises(ValueError):
        normalized_score("x", 1.0, reference=(5.0, 5.0))
