"""Runs as they go on shared machines and clusters: SIGTERM / SIGHUP like Ctrl-C, a signal at every
moment, reused workdirs, directories the run did not write, full disks and file-size limits, progress in
log files, TensorBoard events, URL workdirs. Each CLI case checks the exit code and that stderr says
it in one line."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from smoke_helpers import run, tiny_config

from psec_jax import cli, loop, progress, runs, signals
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


def _smoke(workdir, *args):
    return ["smoke", f"--config={CONFIG}", f"--workdir={workdir}", *TINY, *args]


def _console(*args, setup=""):
    """``python -m psec_jax ARGS`` (the console script's own code path), after running ``setup`` in a
    Python that then execs it (what preexec_fn would do, without forking a multithreaded pytest)."""
    if not setup:
        return [sys.executable, "-m", "psec_jax", *args]
    exec_it = "os.execv(sys.executable, [sys.executable, '-m', 'psec_jax', *sys.argv[1:]])"
    return [sys.executable, "-c", f"import os, resource, signal, sys; {setup}; {exec_it}", *args]


# A shell without job control starts background jobs (`make test &`) with SIGINT ignored, and an ignored
# SIGINT stays ignored in the child, in Python and in psec-jax: give the child a terminal's.
SIGINT_DEFAULT = "signal.signal(signal.SIGINT, signal.SIG_DFL)"


def _file_size_limit(n):
    return f"resource.setrlimit(resource.RLIMIT_FSIZE, ({n}, {n}))"


def _messages(err):
    """stderr without the progress lines (``smoke: ...``): what the run said about how it ended."""
    return [l for l in err.strip().splitlines() if l.strip() and not l.startswith("smoke:")]


# ----- signals --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_checkpoint_and_exit_128_plus_signal(tmp_path, sig):
    args = _smoke(tmp_path, "--config.train.num_steps=400000", "--config.train.checkpoint_every=200000")
    proc = subprocess.Popen(_console(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics, deadline = tmp_path / "metrics.jsonl", time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be stopped"
    proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + sig, err
    lines = _messages(err)
    name = signal.Signals(sig).name
    assert len(lines) == 1 and f"interrupted by {name}; step" in lines[0] and "rerun to resume" in lines[0], err
    last = runs.read_metrics(tmp_path)[-1]["step"]
    assert f"step {last} is checkpointed" in lines[0]
    with Checkpoints(tmp_path / "checkpoints") as ck:
        assert ck.all_steps() == [last] and ck.verify(last) is None


def _handles_sigterm(pid):
    """Whether process ``pid`` has installed its SIGTERM handler (bit 15 of SigCgt in /proc)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = int(next(l for l in status.splitlines() if l.startswith("SigCgt:")).split()[1], 16)
    return bool(caught & (1 << (signal.SIGTERM - 1)))


@pytest.mark.parametrize("delay", [0.0, 0.4, 1.5])
def test_ctrl_c_while_starting_is_one_line_and_130(tmp_path, delay):
    """Counted from the moment the console script's handlers are in place (its first imports): during
    the imports of numpy and jax (0 s), the flags and the experiment's import (~0.4 s) and the first
    compilation (~1.5 s on this machine). Before, these gave a traceback, an empty message, a
    segmentation fault or nothing at all."""
    proc = subprocess.Popen(
        _console(*_smoke(tmp_path, "--config.train.num_steps=400000"), setup=SIGINT_DEFAULT),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 60
    while not _handles_sigterm(proc.pid) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.001)
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    lines = _messages(err)
    assert proc.returncode == 130, err
    assert len(lines) == 1 and "interrupted by SIGINT" in lines[0], err
    assert "Traceback" not in err and "Exception ignored" not in err


def test_a_reader_that_leaves_early_ends_the_command_quietly():
    proc = subprocess.Popen(_console("info"), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # `psec-jax info | head -0`
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) in (0, 141) and "Traceback" not in err, err


def test_a_signal_inside_a_deferred_block_is_raised_when_it_ends():
    with signals.handled():
        with pytest.raises(signals.Stopped) as stopped:
            with signals.deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.01)  # the handler has run by now: it held the signal
                held = True
        assert held and stopped.value.signum == signal.SIGTERM
    assert signals.received() is None  # nothing pending outside a run


def test_a_swallowed_signal_still_stops_the_run_at_the_next_chunk(tmp_path):
    def swallow_in_second_chunk(chunk):
        calls = []

        def wrapped(state):
            calls.append(1)
            if len(calls) == 2:
                try:  # as a garbage-collection callback does with the exception raised inside it
                    os.kill(os.getpid(), signal.SIGTERM)
                    time.sleep(0.01)
                except KeyboardInterrupt:
                    pass
            return chunk(state)

        return wrapped

    with signals.handled(), pytest.raises(loop.Interrupted, match="by SIGTERM; step 20 is checkpointed") as err:
        run(tiny_config(checkpoint_every=40), tmp_path, wrap=swallow_in_second_chunk)
    assert err.value.signum == signal.SIGTERM and [r["step"] for r in runs.read_metrics(tmp_path)] == [10, 20]


def test_a_second_signal_during_the_save_does_not_cut_it(tmp_path, monkeypatch):
    save = Checkpoints.save

    def save_and_signal_again(self, step, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # the impatient second Ctrl-C, while the save is going on
        time.sleep(0.01)
        return save(self, step, *args, **kwargs)

    def stop_in_third_chunk(chunk):
        calls = []

        def wrapped(state):
            calls.append(1)
            if len(calls) == 3:
                monkeypatch.setattr(Checkpoints, "save", save_and_signal_again)
                raise signals.Stopped(signal.SIGTERM)
            return chunk(state)

        return wrapped

    with signals.handled(), pytest.raises(loop.Interrupted, match="step 20 is checkpointed"):
        run(tiny_config(checkpoint_every=40), tmp_path, wrap=stop_in_third_chunk)
    with Checkpoints(tmp_path / "checkpoints") as ck:
        assert ck.all_steps() == [20] and ck.verify(20) is None


# ----- workdirs that hold other things -----------------------------------------------------------------------


def test_a_workdir_without_checkpoints_refuses_another_config(tmp_path, capsys):
    assert cli.main(_smoke(tmp_path, "--config.train.num_steps=40")) == 0
    records = {f: (tmp_path / f).read_bytes() for f in ("config.json", "metrics.jsonl", "summary.json")}
    for ckpt in sorted((tmp_path / "checkpoints").iterdir()):  # freeing disk in a sweep
        subprocess.run(["rm", "-r", str(ckpt)], check=True)
    capsys.readouterr()
    assert cli.main(_smoke(tmp_path, "--config.train.num_steps=40", "--config.optim.learning_rate=0.1")) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "optim.learning_rate" in err[0] and "start fresh" in err[0], err
    assert {f: (tmp_path / f).read_bytes() for f in records} == records
    (tmp_path / "config.json").unlink()  # records nobody can vouch for
    assert cli.main(_smoke(tmp_path, "--config.train.num_steps=40")) == 1
    assert "no config.json" in capsys.readouterr().err
    assert (tmp_path / "metrics.jsonl").read_bytes() == records["metrics.jsonl"]


def test_a_run_that_did_nothing_does_not_claim_its_workdir(tmp_path, capsys):
    """Stopped (or failed) before its first record, a run leaves at most its config.json: a corrected
    config runs there (a dry run, or a typo found at start-up, must not lock the workdir)."""
    runs.save_config(tmp_path, tiny_config(num_steps=20))  # all a run stopped at start-up leaves
    (tmp_path / "checkpoints").mkdir()
    assert cli.main(_smoke(tmp_path, "--config.train.num_steps=20", "--config.optim.learning_rate=0.1")) == 0
    assert runs.load_config(tmp_path).optim.learning_rate == 0.1


@pytest.mark.parametrize("name", ["1", "999999"])
def test_numbered_directories_psec_jax_did_not_write_are_never_deleted_or_rejected(tmp_path, capsys, name):
    assert cli.main(_smoke(tmp_path, "--config.train.num_steps=40", "--config.train.max_to_keep=1")) == 0
    notes = tmp_path / "checkpoints" / name / "notes.txt"
    notes.parent.mkdir()
    notes.write_text("mine")
    capsys.readouterr()
    assert cli.main(_smoke(tmp_path, "--config.train.num_steps=80", "--config.train.max_to_keep=1")) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"checkpoints/{name} is not a checkpoint psec_jax wrote" in err[0], err
    assert notes.read_text() == "mine" and not (tmp_path / "checkpoints" / "rejected").exists()
    with pytest.raises(CheckpointError, match="not a checkpoint psec_jax wrote"):
        Checkpoints(tmp_path / "checkpoints")


def test_a_url_workdir_is_refused_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(_smoke("gs://bucket/run", "--config.train.num_steps=20")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "remote workdirs are not supported" in err[0]
    assert not (tmp_path / "gs:").exists()


def test_an_unusable_compilation_cache_is_one_warning_and_the_run_goes_on(tmp_path, capsys):
    from psec_jax import compilation_cache

    before = compilation_cache.current()
    try:
        args = _smoke(tmp_path, "--config.train.num_steps=20", f"--compilation_cache_dir={tmp_path / 'f' / 'c'}")
        (tmp_path / "f").write_text("a file where the cache's parent should be")
        assert cli.main(args) == 0
        lines = _messages(capsys.readouterr().err)
        assert len(lines) == 1 and "compilation cache" in lines[0] and "compiling without it" in lines[0], lines
    finally:
        if before is not None:
            compilation_cache.enable(before)


# ----- the machine refusing ------------------------------------------------------------------------------------


def test_a_file_size_limit_during_a_save_is_one_line_and_leaves_nothing_half_written(tmp_path):
    out = subprocess.run(
        _console(*_smoke(tmp_path, "--config.train.num_steps=40"), setup=_file_size_limit(2_000)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = _messages(out.stderr)
    assert out.returncode == 1, out.stderr
    assert len(lines) == 1 and "File too large" in lines[0] and str(tmp_path / "checkpoints") in lines[0], out.stderr
    assert "Traceback" not in out.stderr
    assert not list((tmp_path / "checkpoints").glob("*orbax-checkpoint-tmp*"))  # no half-written step
    assert runs.read_metrics(tmp_path) == []  # no record past the newest checkpoint (none)


def test_a_full_disk_before_a_save_is_one_line(tmp_path, capsys, monkeypatch):
    from psec_jax import checkpoint

    usage = checkpoint.shutil.disk_usage
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda p: usage(p)._replace(free=1000))
    assert cli.main(_smoke(tmp_path, "--config.train.num_steps=40")) == 1
    lines = _messages(capsys.readouterr().err)
    assert len(lines) == 1 and "No space left on device" in lines[0] and "MiB free" in lines[0], lines
    assert runs.read_metrics(tmp_path) == [] and not (tmp_path / "checkpoints" / "20").exists()


def test_a_full_disk_at_start_is_one_line(tmp_path):
    out = subprocess.run(
        _console(*_smoke(tmp_path, "--config.train.num_steps=40"), setup=_file_size_limit(0)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = _messages(out.stderr)
    assert out.returncode == 1, out.stderr
    assert len(lines) == 1 and "file too large" in lines[0] and ".psec_jax.lock" in lines[0], out.stderr


# ----- what a person watching sees --------------------------------------------------------------------------


def test_progress_in_a_log_file_is_one_line_per_chunk_with_the_loss_first(capsys):
    with progress.Progress(40, desc="stage", min_interval=0, terminal=False) as bar:
        for _ in range(4):
            bar.update(10, {"grad_norm": 1.0, "actor/loss": 0.5, "loss": 0.25})
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 4 and lines[-1].startswith("stage: step 40/40 (100%) loss 0.25 actor/loss 0.5 grad_norm 1")
    assert "steps/s" in lines[0] and "ETA" in lines[0]


def test_a_run_logging_to_a_file_says_where_it_is_and_writes_tensorboard_events(tmp_path):
    out = subprocess.run(
        _console(*_smoke(tmp_path, "--config.train.num_steps=40")), capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    lines = out.stderr.strip().splitlines()
    assert lines[0] == "smoke: starting at step 0 of 40" and lines[-1] == "smoke: done, step 40 of 40", lines
    assert any(l.startswith("smoke: step 40/40 (100%) loss ") for l in lines), lines
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_environment_failures_are_named_in_one_line():
    from psec_jax import failures

    full = OSError(28, "No space left on device", "/runs/x/metrics.jsonl")
    assert failures.environment_failure(full) == "no space left on the device: /runs/x/metrics.jsonl"
    assert failures.environment_failure(MemoryError()).startswith("out of memory")
    assert (
        failures.environment_failure(RuntimeError("RESOURCE_EXHAUSTED: Out of memory\n allocating"))
        == "out of memory: RESOURCE_EXHAUSTED: Out of memory allocating"
    )
    assert failures.environment_failure(OSError(2, "No such file or directory", "x")) is None  # a bug or a typo
    assert failures.environment_failure(ValueError("bad")) is None


def test_a_multi_stage_workdir_resumes_and_one_of_an_older_psec_jax_is_not_refused(tmp_path):
    """A PSEC / LM workdir keeps its records in stages/ (each with its own config.json and checkpoints):
    one stopped halfway has the top-level config.json written at its start; one written before
    config.json existed at the top is left to the stages' own checks."""
    config = tiny_config(num_steps=20)
    (tmp_path / "stages" / "pretrain").mkdir(parents=True)
    (tmp_path / "stages" / "pretrain" / "config.json").write_text("{}")
    loop.check_workdir_config(tmp_path, config)  # an older psec_jax's workdir: no top-level config.json
    runs.save_config(tmp_path, config)
    loop.check_workdir_config(tmp_path, config)  # resuming with the same config
    config.optim.learning_rate = 0.5
    with pytest.raises(loop.workdir_lib.RecordsConflict, match="optim.learning_rate"):
        loop.check_workdir_config(tmp_path, config)
