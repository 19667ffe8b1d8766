"""Tests of the Orbax checkpoint helpers: round trip with config, resume, and every failure mode."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from psec_jax.checkpoint import CheckpointError, Checkpoints
from psec_jax.testing import assert_trees_close


def _state(scale=1.0):
    return {"params": {"w": scale * jnp.ones((3, 4)), "b": jnp.arange(4.0)}, "step": jnp.int32(7)}


CFG = ml_collections.ConfigDict({"lr": 1e-3, "model": {"sizes": (4, 4)}})


def test_round_trip_with_config_and_retention(tmp_path):
    with Checkpoints(tmp_path / "ck", max_to_keep=2) as ck:
        assert ck.latest_step() is None
        for step in (1, 2, 3):
            ck.save(step, _state(step), CFG)
    ck = Checkpoints(tmp_path / "ck")
    assert ck.all_steps() == [2, 3] and ck.latest_step() == 3
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
        with pytest.raises(CheckpointError, match="could not restore step 1"):
            ck.restore(target=wrong)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # Orbax aborting its reads
def test_corrupt_checkpoint_fails_clearly(tmp_path):
    with Checkpoints(tmp_path) as ck:
        ck.save(1, _state(), CFG)
    for f in (tmp_path / "1" / "state").rglob("*"):
        if f.is_file() and f.name not in ("commit_success.txt",):
            f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2])  # truncate every data file
    with Checkpoints(tmp_path) as ck:
        with pytest.raises(CheckpointError, match="could not restore step 1"):
            ck.restore(target=_state())
