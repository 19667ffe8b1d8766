"""Training the MoE language model (psec_jax.models.train, psec_jax.models.runner): no recompilation,
bit-identical resume, train(key) = the chunked loop, members in one program, outputs and config errors."""

from __future__ import annotations

import dataclasses
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from psec_jax import cli, testing
from psec_jax.checkpoint import Checkpoints
from psec_jax.configs import lm_moe as lm_config
from psec_jax.models import pipeline
from psec_jax.models import runner as lm_moe
from psec_jax.models import train as lm_train


@pytest.fixture(scope="module", autouse=True)
def data_dir(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PSEC_JAX_DATA_DIR", str(tmp_path_factory.mktemp("data")))
        yield


def tiny(**train):
    config = lm_config.get_config("tiny")
    config.train.update({"routers": ("top_p",), "seeds": 2, "sweep_p": (), **train})
    return config


def pipeline_of(config, member=0):
    """Member `member`'s batch stream (data_order "member") and the chunk validation batch."""
    data = lm_moe.load_data(config)
    d = config.data
    batches = pipeline.Batches(data, d.batch_size, d.seq_len, d.task_rows, config.seed, member)
    return batches, lm_moe.chunk_validation(config, data)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One tiny run of the experiment (top-p, 2 seeds, 2 chunks of 4 steps)."""
    workdir = tmp_path_factory.mktemp("lm")
    config = tiny()
    summary = lm_moe.run(config, str(workdir))
    return config, workdir, summary


def final_params(workdir, stage="top_p"):
    with Checkpoints(workdir / "stages" / stage / "checkpoints") as ckpts:
        step = ckpts.latest_step()
        state, _ = ckpts.restore(step)
    return step, state


def test_chunk_never_recompiles():
    config = tiny()
    batches, val = pipeline_of(config)
    trainer = lm_train.make_train(config, "top_p", validation=val)
    chunk = jax.jit(trainer.chunk)
    b = lambda s: jax.tree.map(jnp.asarray, batches.chunk(int(s.step), config.train.log_every))
    state = trainer.init(jax.random.key(0))
    testing.assert_no_recompile(
        chunk, state, b(state), jnp.float32(0.4), next_args=lambda out: (out[0], b(out[0]), jnp.float32(0.5))
    )


def test_resume_continues_bit_identically(finished, tmp_path):
    config, workdir, _ = finished
    # A run killed after its first checkpoint: copy the finished run, drop the newest step, rerun.
    resumed = tmp_path / "resumed"
    shutil.copytree(workdir, resumed)
    shutil.rmtree(resumed / "stages" / "top_p" / "checkpoints" / "8")
    lm_moe.run(config, str(resumed))
    step_a, a = final_params(workdir)
    step_b, b = final_params(resumed)
    assert step_a == step_b == 8
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    lines = lambda w: [json.loads(l) for l in (w / "stages" / "top_p" / "metrics.jsonl").read_text().splitlines()]
    strip = lambda rs: [{k: v for k, v in r.items() if k not in ("wall_time", "steps_per_sec")} for r in rs]
    assert strip(lines(workdir)) == strip(lines(resumed))  # every step once, same values


def test_train_in_one_scan_equals_the_chunked_loop(finished):
    config, workdir, _ = finished
    batches, val = pipeline_of(config)
    trainer = lm_train.make_train(
        config, "top_p", host_batches=lambda s: batches.chunk(s, config.train.log_every), validation=val
    )
    key = jax.random.fold_in(lm_moe.prng.stream(jax.random.key(config.seed), "init"), 0)  # member 0's key
    state, metrics = jax.jit(trainer.train)(key, jnp.float32(config.router.p))
    _, saved = final_params(workdir)
    member0 = jax.tree.map(lambda a: a[0], saved["params"] if isinstance(saved, dict) else saved.params)
    testing.assert_trees_close(state.params, member0)
    assert metrics["val_loss"].shape == (config.train.num_steps // config.train.log_every,)


def test_members_in_one_program_differ_by_seed_and_improve(finished):
    config, workdir, summary = finished
    results = json.loads((workdir / "results.json").read_text())
    top_p = results["routers"]["top_p"]
    # provenance: the results rebuild from their own record
    assert results["config"]["train"]["num_steps"] == config.train.num_steps and results["commit"]
    losses = top_p["val_loss"]["per_seed"]
    assert len(losses) == 2 and losses[0] != losses[1]
    for member in top_p["members"].values():
        assert member["curve_val_loss"][-1] < member["curve_val_loss"][0]  # it learns
        assert 1.0 <= member["val_experts"] <= config.model.num_experts
        assert len(member["val_experts_per_layer"]) == config.model.num_layers
    assert summary["top_p_val_loss"] == pytest.approx(np.mean(losses))
    for name in ("results.md", "results.png"):
        assert (workdir / name).stat().st_size > 0
    events = list((workdir / "stages" / "top_p" / "tensorboard").glob("events.out.tfevents.*"))
    assert events and b"val_loss/seed1" in b"".join(e.read_bytes() for e in events)


@pytest.mark.slow  # two more compilations (~40 s); the default suite runs lax.map members via main()
def test_vmap_and_map_members_agree():
    config = tiny()
    batches, val = pipeline_of(config)
    trainer = lm_train.make_train(config, "top_p", validation=val)
    states = jax.vmap(trainer.init)(jax.random.split(jax.random.key(0), 2))
    b = jax.tree.map(jnp.asarray, batches.chunk(0, config.train.log_every))
    ps = jnp.array([0.3, 0.6])
    _, by_vmap = jax.jit(jax.vmap(trainer.chunk, in_axes=(0, None, 0)))(states, b, ps)
    _, by_map = jax.jit(lambda s, p: jax.lax.map(lambda a: trainer.chunk(a[0], b, a[1]), (s, p)))(states, ps)
    testing.assert_trees_close(by_map, by_vmap)
    assert float(by_map["experts"][1]) > float(by_map["experts"][0])  # p is a traced per-member value


def test_paper_preset_counts_parameters_without_allocating(capsys):
    counts = lm_moe.run(lm_config.get_config("paper"), "/nonexistent/never/written")
    assert 3.45e9 < counts["total"] < 3.55e9 and 3.70e8 < counts["active_top1"] < 3.78e8
    assert "3488." in capsys.readouterr().out


@pytest.mark.parametrize(
    "override,message",
    [
        ("--config.data.task_rows=9", "task_rows"),
        ("--config.train.routers=('top9',)", "train.routers"),
        ("--config.train.arm_p=(0.4,)", "arm_p"),
        ("--config.train.data_order=random", "train.data_order"),
        ("--config.train.sweep_p=(0.0,)", "sweep_p"),
        ("--config.model.num_heads=3", "heads"),
        ("--config.router.p=1.5", "router.p"),
        ("--config.train.members=pmap", "train.members"),
    ],
)
def test_bad_config_is_one_line_exit_2(override, message, tmp_path, capsys):
    code = cli.main(["lm_moe", "--config=psec_jax/configs/lm_moe.py:tiny", override, f"--workdir={tmp_path / 'w'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "w").exists()


def test_evaluation_masks_by_hand():
    # Two rows of 4 positions: row 0 is text (its last target is padding), row 1 a task row whose
    # targets at positions 1 and 2 are answer tokens of label 3 (sort_hard), position 3 padding.
    config = tiny()
    spec = lm_train.model_spec(config, "top_p")
    params = jax.jit(lambda k: lm_train.make_train(config, "top_p").init(k).params)(jax.random.key(0))
    inputs = jnp.array([[5, 6, 7, 8], [9, 10, 11, 12]], jnp.int32)
    targets = jnp.array([[6, 7, 8, 1], [10, 11, 12, 1]], jnp.int32)
    weights = jnp.array([[1, 1, 1, 0], [1, 1, 1, 0]], jnp.float32)
    labels = jnp.array([[-1, -1, -1, -1], [-1, 3, 3, -1]], jnp.int8)
    batch = pipeline.Batch(inputs, targets, weights, labels)
    m = lm_train.eval_metrics(lm_train.eval_sums(spec, params, batch, jnp.array([True, False]), jnp.float32(0.4)))
    out = lm_train.tf.apply(params, inputs, spec, 0.4)
    _, nll = lm_train.tf.cross_entropy(out.logits, targets, weights)
    experts = np.asarray(out.stats["experts_per_token"], float)  # [G, B, T]
    np.testing.assert_allclose(m["val_loss"], np.mean(nll[0, :3]), rtol=1e-5)
    np.testing.assert_allclose(m["val_experts_per_layer"], experts[:, 0, :3].mean(-1), rtol=1e-5)
    np.testing.assert_allclose(m["task_loss"][3], np.mean(nll[1, 1:3]), rtol=1e-5)
    np.testing.assert_allclose(m["task_experts_per_layer"][:, 3], experts[:, 1, 1:3].mean(-1), rtol=1e-5)
    greedy = np.asarray(jnp.argmax(out.logits[1, 1:3], -1) == targets[1, 1:3], float).mean()
    np.testing.assert_allclose(m["task_accuracy"][3], greedy)
    others = [c for c in range(6) if c != 3]
    assert np.isnan(np.asarray(m["task_loss"])[others]).all()  # no answer tokens of those labels: NaN, not 0
    assert np.isnan(np.asarray(m["task_experts"])[others]).all()


def test_stage_config_ignores_other_stages_and_pins_the_data(finished):
    config, _, _ = finished
    data = lm_moe.load_data(config)
    stage = lm_moe.stages(config)[0]
    wider = tiny(sweep_p=(0.3, 0.5))
    wider.train.routers = ("top1", "top_p")
    assert (
        lm_moe.loop.config_differences(
            lm_moe.stage_config(config, stage, data), lm_moe.stage_config(wider, stage, data)
        )
        == []
    )
    meta = {**data.meta, "sha256": {**data.meta["sha256"], "train.npy": "0" * 64}}
    assert lm_moe.loop.config_differences(
        lm_moe.stage_config(config, stage, data), lm_moe.stage_config(config, stage, data._replace(meta=meta))
    ) == ["data_identity.train_npy"]


def test_gradient_accumulation_equals_the_whole_batch_for_the_lm_loss():
    config = tiny()
    batches, _ = pipeline_of(config)
    batch = jax.tree.map(lambda a: jnp.asarray(a[0]), batches.chunk(0, 1))  # [B=4, T]
    spec = lm_train.model_spec(config, "top_p")
    params = lm_train.make_train(config, "top_p").init(jax.random.key(0)).params
    p = jnp.float32(0.4)
    grads = jax.jit(lm_train.accumulate_gradients, static_argnums=(0, 4))
    g1, m1 = grads(spec, params, batch, p, 1)
    g2, m2 = grads(spec, params, batch, p, 2)
    # the LM loss (a token-weighted mean) is the same function of the batch; only the aux losses see
    # two slices of 2 rows instead of 4 rows: without them the gradients agree
    testing.assert_trees_close(m2["loss"], m1["loss"])
    assert float(m2["load_balance"]) != float(m1["load_balance"])
    np.testing.assert_allclose(m2["experts_per_layer"], m1["experts_per_layer"], rtol=1e-6)
    no_aux = dataclasses.replace(
        spec, moe=dataclasses.replace(spec.moe, load_balance_weight=0.0, dynamic_weight=0.0, z_weight=0.0)
    )
    testing.assert_trees_close(grads(no_aux, params, batch, p, 2)[0], grads(no_aux, params, batch, p, 1)[0])
    with pytest.raises(ValueError, match="train.microbatches=3 must be >= 1 and divide the batch's 4 rows"):
        lm_train.accumulate_gradients(spec, params, batch, p, 3)
    bad = tiny(microbatches=3)
    with pytest.raises(Exception, match="train.microbatches=3 must divide data.batch_size=4"):
        lm_moe.check_config(bad)


def test_a_failing_comparison_keeps_the_results(finished, monkeypatch):
    config, workdir, _ = finished
    (workdir / "results.json").unlink()
    assert (workdir / "comparison.md").is_file()

    def broken(*args, **kwargs):
        raise KeyError("a field the comparison did not expect")

    monkeypatch.setattr(lm_moe.compare, "compare", broken)
    with pytest.raises(lm_moe.compare.ComparisonError, match=r"failed \(KeyError.*rerun the same command"):
        lm_moe.run(config, str(workdir))  # every stage finished: resumes, evaluates from its caches
    assert "routers" in json.loads((workdir / "results.json").read_text())
    assert not (workdir / "comparison.md").exists()  # the earlier run's, which would not match
