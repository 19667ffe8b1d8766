"""Tests of the run-output helpers (config JSON, metrics JSONL, tables)."""

import json

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from psec_jax import runs


def test_to_jsonable_handles_arrays_scalars_and_configs():
    cfg = ml_collections.ConfigDict({"sizes": (1, 2), "lr": 1e-3})
    out = runs.to_jsonable(
        {"a": jnp.float32(1.5), "b": jnp.arange(3), "c": np.bool_(True), "d": jnp.bfloat16(2.0), "cfg": cfg}
    )
    assert out == {"a": 1.5, "b": [0, 1, 2], "c": True, "d": 2.0, "cfg": {"sizes": [1, 2], "lr": 1e-3}}
    json.dumps(out)


def test_config_round_trip_and_errors(tmp_path):
    cfg = ml_collections.ConfigDict({"model": {"width": 4, "sizes": (8, 8)}, "name": "x"})
    path = runs.save_config(tmp_path, cfg)
    assert path == tmp_path / runs.CONFIG_FILE and not list(tmp_path.glob(".*tmp*"))
    back = runs.load_config(tmp_path)
    assert back.model.width == 4 and list(back.model.sizes) == [8, 8] and back.name == "x"
    with pytest.raises(FileNotFoundError, match="no config file"):
        runs.load_config(tmp_path / "missing")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json is not valid JSON"):
        runs.load_config(tmp_path / "bad.json")


def test_metrics_append_across_writers(tmp_path):
    with runs.MetricsWriter(tmp_path) as w:
        w.write(10, {"loss": jnp.float32(0.5)})
    with runs.MetricsWriter(tmp_path) as w:  # a resumed run appends
        w.write(20, {"loss": 0.25, "hist": np.array([1, 2])})
    records = runs.read_metrics(tmp_path)
    assert [r["step"] for r in records] == [10, 20]
    assert records[0]["loss"] == 0.5 and records[1]["hist"] == [1, 2]
    assert all(r["wall_time"] > 1e9 for r in records)
    with open(tmp_path / runs.METRICS_FILE, "a") as f:
        f.write("{truncated\n")
    with pytest.raises(ValueError, match=r"metrics.jsonl:3"):
        runs.read_metrics(tmp_path)


def test_tables_and_summary(tmp_path):
    table = runs.format_table([{"method": "psec", "score": 688.0}, {"method": "scratch", "score": 58.9}])
    lines = table.splitlines()
    assert lines[0].split("|")[1].strip() == "method" and "58.9" in lines[3]
    assert len({len(line) for line in lines}) == 1  # aligned columns
    text = runs.write_summary(tmp_path, {"mse": 0.125, "steps": 10})
    assert "0.125" in text and json.loads((tmp_path / runs.SUMMARY_FILE).read_text())["steps"] == 10


def test_json_files_never_hold_a_bare_nan(tmp_path):
    out = runs.to_jsonable(
        {
            "a": float("nan"),
            "b": np.array([1.0, np.inf]),
            "c": jnp.float32(np.nan),
            "d": [float("-inf"), 2],
            "e": np.array([1, 2]),
        }
    )
    assert out == {"a": None, "b": [1.0, None], "c": None, "d": [None, 2], "e": [1, 2]}
    runs.write_json_atomic(tmp_path / "s.json", {"loss": float("nan")})
    assert json.loads((tmp_path / "s.json").read_text()) == {"loss": None}
    with runs.MetricsWriter(tmp_path) as w:
        w.write(1, {"loss": np.float32("nan")})
    assert "NaN" not in (tmp_path / runs.METRICS_FILE).read_text()
    assert "| nan" in runs.write_summary(tmp_path, {"mse": float("nan")})  # the table still says nan


def test_rewind_metrics_keeps_each_step_once(tmp_path):
    path = tmp_path / runs.METRICS_FILE
    assert runs.rewind_metrics(tmp_path, 10) == []  # no file yet
    path.write_text("".join(json.dumps({"step": s, "loss": s / 10}) + "\n" for s in (10, 20, 30)) + '{"step": 4')
    kept = runs.rewind_metrics(tmp_path, 20)
    assert [r["step"] for r in kept] == [10, 20] == [r["step"] for r in runs.read_metrics(tmp_path)]
    path.write_text(path.read_text() + "{torn in the middle\n" + json.dumps({"step": 30}) + "\n")
    with pytest.raises(ValueError, match=r"metrics.jsonl:3 is not valid JSON"):
        runs.rewind_metrics(tmp_path, 30)


def test_workdir_lock_is_reentrant_within_a_process(tmp_path):
    import fcntl

    from psec_jax import workdir

    def locked_by_someone():
        with open(tmp_path / workdir.LOCK_FILE) as f:  # a second open file: flock sees a competitor
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(f, fcntl.LOCK_UN)
            return False

    with workdir.lock(tmp_path):
        with workdir.lock(tmp_path / "."):  # the training loop locks the CLI's workdir again
            assert locked_by_someone()
        assert locked_by_someone()  # still held by the outer block
    assert not locked_by_someone()


def test_prepare_workdir_names_the_problem(tmp_path):
    from psec_jax import workdir

    (tmp_path / "f").write_text("x")
    with pytest.raises(workdir.WorkdirError, match="is a file, not a directory"):
        workdir.prepare(tmp_path / "f")
    with pytest.raises(workdir.WorkdirError, match=f"{tmp_path / 'f'} is a file"):
        workdir.prepare(tmp_path / "f" / "a" / "b")
    assert workdir.prepare(tmp_path / "new" / "run").is_dir()
