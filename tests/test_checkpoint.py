"""Tests of the Orbax checkpoint helpers: round trip with config, checksums, fallback, failure modes."""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from psec_jax.checkpoint import CHECKSUM_FILE, CheckpointError, Checkpoints
from psec_jax.testing import assert_trees_close

# Orbax leaves aborted reads of damaged or mismatched checkpoints to the garbage collector, which
# pytest reports as unraisable exceptions; the errors themselves are asserted below.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def _state(scale=1.0):
    return {"params": {"w": scale * jnp.ones((3, 4)), "b": jnp.arange(4.0)}, "step": jnp.int32(7)}


CFG = ml_collections.ConfigDict({"lr": 1e-3, "model": {"sizes": (4, 4)}})


def _saved(directory, steps=(1, 2, 3), max_to_keep=3):
    with Checkpoints(directory, max_to_keep=max_to_keep) as ck:
        for step in steps:
            ck.save(step, _state(step), CFG)
    return directory


def _largest_array_file(step_dir):
    return max((f for f in (step_dir / "state").rglob("*") if f.is_file()), key=lambda f: f.stat().st_size)


def _damage(path, how):
    data = bytearray(path.read_bytes())
    if how == "flip":  # one bit, as a failing disk or a bad copy would
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))
    elif how == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2]))
    else:
        path.unlink()


def test_round_trip_with_config_and_retention(tmp_path):
    with Checkpoints(tmp_path / "ck", max_to_keep=2) as ck:
        assert ck.latest_step() is None and ck.resume_step() is None
        for step in (1, 2, 3):
            ck.save(step, _state(step), CFG)
    ck = Checkpoints(tmp_path / "ck")
    assert ck.all_steps() == [2, 3] and ck.latest_step() == 3
    assert all((tmp_path / "ck" / str(s) / CHECKSUM_FILE).is_file() for s in (2, 3))
    assert ck.verify(2) is None and ck.verify(3) is None
    state, cfg = ck.restore(target=_state())
    assert_trees_close(state, _state(3.0))
    assert cfg.lr == 1e-3 and list(cfg.model.sizes) == [4, 4]
    state2, _ = ck.restore(2)  # no target: the saved tree as arrays
    assert_trees_close(jax.tree.map(np.asarray, state2), jax.tree.map(np.asarray, _state(2.0)))
    assert Checkpoints.read_config(tmp_path / "ck").lr == 1e-3
    ck.close()


def test_abstract_target_restores_dtype(tmp_path):
    with Checkpoints(tmp_path) as ck:
        ck.save(5, _state(), CFG)
        target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _state())
        state, _ = ck.restore(target=target)
    assert state["step"].dtype == jnp.int32 and state["params"]["w"].shape == (3, 4)


def test_zero_size_arrays_round_trip(tmp_path):
    """Orbax cannot save an array with no elements (MJX's data.act of a walker): saved as a placeholder,
    restored into the target's shape, concrete or abstract."""
    state = {**_state(), "act": jnp.zeros((16, 0), jnp.float32), "ids": np.zeros((0,), np.int32)}
    with Checkpoints(tmp_path) as ck:
        ck.save(1, state, CFG)
        for target in (state, jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)):
            restored, _ = ck.restore(target=target)
            assert restored["act"].shape == (16, 0) and restored["ids"].shape == (0,)
            assert restored["ids"].dtype == np.int32
            assert_trees_close(restored["params"], state["params"])


def test_missing_and_mismatched_checkpoints_fail_clearly(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        Checkpoints(tmp_path / "nothing", create=False)
    with Checkpoints(tmp_path / "empty") as ck:
        with pytest.raises(CheckpointError, match="no checkpoint found"):
            ck.restore()
        ck.save(1, _state(), CFG)
        with pytest.raises(CheckpointError, match=r"no checkpoint for step 9 .*\[1\]"):
            ck.restore(9)
        wrong = {"params": {"w": jnp.ones((5, 5)), "b": jnp.arange(4.0)}, "step": jnp.int32(0)}
        with pytest.raises(CheckpointError, match="could not restore step 1") as err:
            ck.restore(target=wrong)
        assert "\n" not in str(err.value)  # Orbax's message is many lines; ours is one


@pytest.mark.parametrize(
    "how, problem",
    [("flip", "checksum mismatch in"), ("truncate", "truncated or changed file"), ("delete", "missing file")],
)
def test_damaged_file_is_named_at_restore(tmp_path, how, problem):
    _saved(tmp_path, steps=(1,))
    bad = _largest_array_file(tmp_path / "1")
    _damage(bad, how)
    with Checkpoints(tmp_path) as ck:
        with pytest.raises(CheckpointError) as err:
            ck.restore(target=_state())
        with pytest.raises(CheckpointError, match=problem):
            ck.restore_config()
    message = str(err.value)
    assert "\n" not in message and problem in message and str(bad.relative_to(tmp_path / "1")) in message


def test_edited_config_item_is_caught(tmp_path):
    _saved(tmp_path, steps=(1,))
    meta = next(f for f in (tmp_path / "1" / "config").rglob("*") if f.is_file() and "commit" not in f.name)
    meta.write_text(meta.read_text().replace("0.001", "0.002"))
    with Checkpoints(tmp_path) as ck:
        assert "config/" in ck.verify(1)


def test_resume_falls_back_to_the_newest_intact_step(tmp_path):
    _saved(tmp_path)
    _damage(_largest_array_file(tmp_path / "3"), "flip")
    _damage(_largest_array_file(tmp_path / "2"), "truncate")
    reports = []
    with Checkpoints(tmp_path) as ck:
        assert ck.resume_step(report=reports.append) == 1
        assert ck.all_steps() == [1]
        state, _ = ck.restore(1, target=_state())
        assert_trees_close(state, _state(1.0))
        ck.save(2, _state(20.0), CFG)  # the rejected steps no longer block new saves
        assert ck.all_steps() == [1, 2]
    assert len(reports) == 2 and all("\n" not in r for r in reports)
    assert "step 3" in reports[0] and "checksum mismatch" in reports[0] and "resuming from step 1" in reports[0]
    assert "step 2" in reports[1] and "truncated" in reports[1]
    assert sorted(os.listdir(tmp_path / "rejected")) == ["2", "3"]  # moved aside, never deleted


def test_no_intact_checkpoint_is_an_error_not_a_fresh_start(tmp_path):
    _saved(tmp_path, steps=(1, 2))
    for step in (1, 2):
        _damage(_largest_array_file(tmp_path / str(step)), "delete")
    with Checkpoints(tmp_path) as ck:
        with pytest.raises(CheckpointError, match=r"no intact checkpoint .*step 2: missing file .*step 1: missing"):
            ck.resume_step()
        assert ck.all_steps() == [1, 2]  # nothing moved


def test_unsealed_newest_step_is_not_trusted(tmp_path):
    """A kill between Orbax's commit and the checksum file leaves a step nothing can vouch for."""
    _saved(tmp_path, steps=(1, 2))
    (tmp_path / "2" / CHECKSUM_FILE).unlink()
    reports = []
    with Checkpoints(tmp_path) as ck:
        assert ck.resume_step(report=reports.append) == 1
    assert "step 2" in reports[0] and CHECKSUM_FILE in reports[0]


def test_checkpoints_without_any_checksums_resume_unverified_with_a_warning(tmp_path):
    _saved(tmp_path, steps=(1, 2))
    for step in (1, 2):
        (tmp_path / str(step) / CHECKSUM_FILE).unlink()
    reports = []
    with Checkpoints(tmp_path) as ck:
        assert ck.resume_step(report=reports.append) == 2
        assert "unverified" in reports[0]
        with pytest.raises(CheckpointError, match=CHECKSUM_FILE):
            ck.restore(2, target=_state())
        state, _ = ck.restore(2, target=_state(), verify=False)
    assert_trees_close(state, _state(2.0))


def test_a_committed_step_already_carries_its_checksums(tmp_path):
    """Written in Orbax's save thread before the commit rename: no moment where a kill -9 leaves a
    committed step without them."""
    ck = Checkpoints(tmp_path)
    ck.save(1, _state(), CFG)
    ck._manager.wait_until_finished()  # Orbax alone; not ck.wait(), which would seal a straggler
    assert (tmp_path / "1" / CHECKSUM_FILE).is_file() and not list(tmp_path.glob("*tmp*"))
    assert ck.verify(1) is None
    ck.close()


def test_a_readable_but_wrong_checksum_record_is_a_problem_not_a_crash(tmp_path):
    _saved(tmp_path, steps=(1,))
    for record in ('{"files": ["a"]}', '{"files": {"state/_METADATA": 3}}', "[]", "{not json"):
        (tmp_path / "1" / CHECKSUM_FILE).write_text(record)
        with Checkpoints(tmp_path) as ck:
            assert "unreadable" in ck.verify(1)


def test_checksum_record_lists_every_file(tmp_path):
    _saved(tmp_path, steps=(1,))
    record = json.loads((tmp_path / "1" / CHECKSUM_FILE).read_text())
    files = {
        str(f.relative_to(tmp_path / "1"))
        for f in (tmp_path / "1").rglob("*")
        if f.is_file() and f.name != CHECKSUM_FILE
    }
    assert set(record["files"]) == files and record["step"] == 1
