"""Tests of the smoke experiment and the chunked training driver it runs on."""

import json
import os

import jax
import pytest
from smoke_helpers import run, tiny_config

from psec_jax import runs, smoke, testing
from psec_jax.checkpoint import CheckpointError


def test_vmapped_seeds_equal_sequential_seeds_and_loss_falls():
    trainer = smoke.make_train(tiny_config())
    keys = jax.random.split(jax.random.key(0), 2)
    states, metrics = jax.jit(jax.vmap(trainer.train))(keys)
    assert metrics["loss"].shape == (2, 4, 10)
    for i in range(2):
        state_i, metrics_i = jax.jit(trainer.train)(keys[i])
        testing.assert_trees_close(jax.tree.map(lambda x: x[i], states.params), state_i.params)
        testing.assert_trees_close(metrics["loss"][i], metrics_i["loss"])
    assert float(metrics["loss"][:, -1].mean()) < 0.5 * float(metrics["loss"][:, 0].mean())


def test_chunk_does_not_recompile():
    trainer = smoke.make_train(tiny_config())
    root = jax.random.key(0)
    data = trainer.make_data(root)
    testing.assert_no_recompile(jax.jit(trainer.chunk), trainer.init(root), data, next_args=lambda out: (out[0], data))


def test_resume_continues_identically(tmp_path):
    straight, _ = run(tiny_config(), tmp_path / "straight")
    run(tiny_config(num_steps=20), tmp_path / "resumed")
    resumed, records = run(tiny_config(), tmp_path / "resumed")  # picks up at step 20
    assert [r["step"] for r in records] == [10, 20, 30, 40]  # the whole run's records
    assert resumed.step.tolist() == [40]  # one member (config.num_seeds = 1)
    testing.assert_trees_close(resumed.params, straight.params, rtol=0, atol=0)
    steps = [r["step"] for r in runs.read_metrics(tmp_path / "resumed")]
    assert steps == [10, 20, 30, 40]


def test_resume_refuses_a_changed_config(tmp_path):
    run(tiny_config(num_steps=20), tmp_path)
    changed = tiny_config()
    changed.optim.learning_rate = 0.5
    with pytest.raises(CheckpointError, match="optim.learning_rate"):
        run(changed, tmp_path)


def test_main_writes_the_workdir(tmp_path, capsys):
    summary = smoke.run(tiny_config(), str(tmp_path))
    assert summary["steps"] == 40 and summary["final_train_mse"] < summary["target_variance"]
    assert "final_train_mse" in capsys.readouterr().out
    assert json.loads((tmp_path / "config.json").read_text())["train"]["num_steps"] == 40
    assert len(runs.read_metrics(tmp_path)) == 4
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["20", "40"]


def test_bad_chunking_is_rejected():
    with pytest.raises(ValueError, match=r"train.num_steps \(45\) must be a multiple of train.log_every"):
        smoke.make_train(tiny_config(num_steps=45))


def test_main_trains_several_seeds_as_one_sweep(tmp_path):
    config = tiny_config()
    config.num_seeds = 2
    summary = smoke.run(config, str(tmp_path))
    one = smoke.run(tiny_config(), str(tmp_path / "one"))  # seed 0 alone is member 0 of the sweep
    assert summary["num_seeds"] == 2 and len(summary["final_train_mse_per_seed"]) == 2
    assert summary["final_train_mse_per_seed"][0] == pytest.approx(one["final_train_mse"], rel=1e-6)
    assert summary["final_train_mse_per_seed"][0] != summary["final_train_mse_per_seed"][1]
