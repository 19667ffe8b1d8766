"""What a run does to its workdir when things go wrong: refused resumes, replays after kill -9, Ctrl-C,
corrupt checkpoints, two runs at once. The CLI cases run through `cli.main` or a subprocess and check
the exit code and that stderr is one line."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from smoke_helpers import run, tiny_config

from psec_jax import cli, loop, runs, smoke, testing
from psec_jax.checkpoint import CheckpointError, Checkpoints

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "psec_jax" / "configs" / "smoke.py")
TINY = [
    "--config.model.hidden_sizes=(8,)",
    "--config.data.num_examples=32",
    "--config.train.batch_size=16",
    "--config.train.log_every=10",
    "--config.train.checkpoint_every=20",
    "--config.train.max_to_keep=3",
]


def _without_timing(records):
    return [{k: v for k, v in r.items() if k not in ("wall_time", "steps_per_sec")} for r in records]


def _final_state(workdir, step):
    with Checkpoints(Path(workdir) / "checkpoints") as ck:
        state, _ = ck.restore(step)
    as_numpy = lambda x: np.asarray(
        jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x
    )
    return jax.tree.map(as_numpy, state)


def _assert_bitwise_equal(a, b):
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
        assert x.dtype == y.dtype and np.array_equal(x, y), jax.tree_util.keystr(path)


# ----- the training loop ------------------------------------------------------------------------------


def test_refused_resume_leaves_config_json_as_it_was(tmp_path):
    run(tiny_config(num_steps=20), tmp_path)
    before = (tmp_path / "config.json").read_bytes()
    changed = tiny_config()
    changed.optim.learning_rate = 0.5
    with pytest.raises(CheckpointError, match="optim.learning_rate"):
        run(changed, tmp_path)
    with pytest.raises(CheckpointError, match="at step 20, past the 10 steps this run asks for"):
        run(tiny_config(num_steps=10), tmp_path)
    assert (tmp_path / "config.json").read_bytes() == before
    assert [r["step"] for r in runs.read_metrics(tmp_path)] == [10, 20]


def test_rerunning_a_finished_run_keeps_its_record(tmp_path, capsys):
    smoke.run(tiny_config(), str(tmp_path))
    first = json.loads((tmp_path / "summary.json").read_text())
    metrics = (tmp_path / "metrics.jsonl").read_text()
    smoke.run(tiny_config(), str(tmp_path))  # nothing left to train
    again = json.loads((tmp_path / "summary.json").read_text())
    assert (tmp_path / "metrics.jsonl").read_text() == metrics
    assert again == first and isinstance(again["steps_per_sec"], float)


def test_ctrl_c_checkpoints_the_last_finished_chunk_and_resumes_identically(tmp_path):
    straight, _ = run(tiny_config(checkpoint_every=40), tmp_path / "straight")

    def interrupt_third_call(chunk):
        calls = []

        def wrapped(state):
            calls.append(1)
            if len(calls) == 3:
                raise KeyboardInterrupt  # as Ctrl-C inside the third chunk would
            return chunk(state)

        return wrapped

    with pytest.raises(loop.Interrupted, match="step 20 is checkpointed") as err:
        run(tiny_config(checkpoint_every=40), tmp_path / "cut", wrap=interrupt_third_call)
    assert err.value.step == 20 and isinstance(err.value, KeyboardInterrupt)
    with Checkpoints(tmp_path / "cut" / "checkpoints") as ck:
        assert ck.all_steps() == [20] and ck.verify(20) is None  # not a checkpoint step: saved for Ctrl-C
    resumed, records = run(tiny_config(checkpoint_every=40), tmp_path / "cut")
    testing.assert_trees_close(resumed.params, straight.params, rtol=0, atol=0)
    assert [r["step"] for r in records] == [10, 20, 30, 40]


def test_resume_drops_the_metrics_of_replayed_steps(tmp_path):
    run(tiny_config(), tmp_path)
    with open(tmp_path / "metrics.jsonl", "a") as f:  # a run killed after logging step 50 and half of 60
        f.write(json.dumps({"step": 50, "loss": 1.0}) + "\n" + '{"step": 60, "lo')
    _, records = run(tiny_config(num_steps=60), tmp_path)
    assert [r["step"] for r in runs.read_metrics(tmp_path)] == [10, 20, 30, 40, 50, 60]
    assert records == runs.read_metrics(tmp_path) and records[4]["loss"] != 1.0


def test_corrupt_latest_checkpoint_falls_back_with_one_warning(tmp_path, capsys):
    straight, _ = run(tiny_config(num_steps=60), tmp_path / "straight")
    run(tiny_config(), tmp_path / "flipped")
    bad = max(
        (f for f in (tmp_path / "flipped" / "checkpoints" / "40" / "state").rglob("*") if f.is_file()),
        key=lambda f: f.stat().st_size,
    )
    data = bytearray(bad.read_bytes())
    data[len(data) // 2] ^= 0x04
    bad.write_bytes(bytes(data))
    capsys.readouterr()
    resumed, records = run(tiny_config(num_steps=60), tmp_path / "flipped")
    warning = [l for l in capsys.readouterr().err.strip().splitlines() if not l.startswith("smoke:")]  # progress
    assert len(warning) == 1 and bad.name in warning[0] and "resuming from step 20" in warning[0]
    testing.assert_trees_close(resumed.params, straight.params, rtol=0, atol=0)
    assert [r["step"] for r in records] == [10, 20, 30, 40, 50, 60]


# ----- through the command line ------------------------------------------------------------------------


def _cli(*args):
    return [sys.executable, "-m", "psec_jax", "smoke", f"--config={CONFIG}", *TINY, *args]


KILL_DRIVER = """
import os, signal, sys
from psec_jax import checkpoint, cli, runs
kill_after_save, kill_after_log = int(sys.argv[1]), int(sys.argv[2])
save, write = checkpoint.Checkpoints.save, runs.MetricsWriter.write
def save_then_die(self, step, *args, **kwargs):
    started = save(self, step, *args, **kwargs)
    if step == kill_after_save:
        os.kill(os.getpid(), signal.SIGKILL)  # while Orbax is still writing the step
    return started
def write_then_die(self, step, metrics):
    record = write(self, step, metrics)
    if step == kill_after_log:
        os.kill(os.getpid(), signal.SIGKILL)  # logged but not checkpointed
    return record
checkpoint.Checkpoints.save = save_then_die
runs.MetricsWriter.write = write_then_die
sys.exit(cli.main(sys.argv[3:]))
"""


def test_kill_9_and_resume_equals_an_uninterrupted_run(tmp_path):
    straight = tmp_path / "straight"
    out = subprocess.run(_cli(f"--workdir={straight}", "--config.train.num_steps=80"), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    killed = tmp_path / "killed"
    args = [f"--workdir={killed}", "--config.train.num_steps=80"]
    for kill_after_save, kill_after_log in ((-1, 50), (60, -1)):  # killed twice, then left to finish
        cmd = [sys.executable, "-c", KILL_DRIVER, str(kill_after_save), str(kill_after_log), *_cli(*args)[3:]]
        out = subprocess.run(cmd, capture_output=True, text=True)
        assert out.returncode == -signal.SIGKILL, out.stderr
    out = subprocess.run(_cli(*args), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    a, b = runs.read_metrics(straight), runs.read_metrics(killed)
    assert [r["step"] for r in b] == list(range(10, 90, 10))  # every step once
    assert _without_timing(a) == _without_timing(b)  # bit for bit: JSON floats round-trip exactly
    _assert_bitwise_equal(_final_state(straight, 80), _final_state(killed, 80))
    summary = lambda d: {k: v for k, v in json.loads((d / "summary.json").read_text()).items() if k != "steps_per_sec"}
    assert summary(straight) == summary(killed)


def test_sigint_saves_a_checkpoint_and_exits_130_with_one_line(tmp_path):
    args = _cli(f"--workdir={tmp_path}", "--config.train.num_steps=400000", "--config.train.checkpoint_every=200000")
    # A shell without job control starts background jobs with SIGINT ignored, and Python keeps an
    # ignored SIGINT ignored: the child installs Python's own handler, as in a terminal.
    cmd = [
        sys.executable,
        "-c",
        "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "from psec_jax.cli import main; sys.exit(main(sys.argv[1:]))",
        *args[3:],
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics, deadline = tmp_path / "metrics.jsonl", time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()  # never leave a 400k-step run holding the workdir
    assert proc.returncode == 130, err
    lines = [l for l in err.strip().splitlines() if not l.startswith("smoke:")]  # progress lines
    assert len(lines) == 1 and "interrupted by SIGINT; step" in lines[0] and "rerun to resume" in lines[0], err
    last = runs.read_metrics(tmp_path)[-1]["step"]
    assert f"step {last} is checkpointed" in lines[0]
    with Checkpoints(tmp_path / "checkpoints") as ck:
        assert ck.all_steps() == [last] and ck.verify(last) is None


def test_a_second_run_on_a_locked_workdir_is_refused_in_one_line(tmp_path, capsys):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from psec_jax import workdir\n"
            "with workdir.lock(sys.argv[1]):\n    print('locked', flush=True); time.sleep(120)",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        args = ["smoke", f"--config={CONFIG}", f"--workdir={tmp_path}", *TINY, "--config.train.num_steps=20"]
        assert cli.main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"in use by another run (pid {holder.pid}" in err[0]
        assert not (tmp_path / "config.json").exists()
    finally:
        holder.kill()  # kill -9 releases the lock: the kernel drops it with the process
        holder.wait()
    assert cli.main(args) == 0
