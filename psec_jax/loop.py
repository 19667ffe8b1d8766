"""The outer training driver: jitted ``lax.scan`` chunks, metrics, progress, checkpoints, resume.

The inner loop is the experiment's own ``chunk(state) -> (state, metrics)``: one compiled call that
runs ``steps_per_chunk`` training steps in a ``lax.scan`` and returns per-step metrics with a leading
``[steps_per_chunk]`` axis. This driver only does what must happen between chunks on the host:
averaging and logging metrics, advancing the progress bar, saving checkpoints, and resuming from the
latest intact one. It never retraces ``chunk`` (test with ``psec_jax.testing.assert_no_recompile``).

What it guarantees about the workdir: one run at a time (a lock); ``config.json`` is written only once
the run is going ahead with that config; ``metrics.jsonl`` holds each step once, however often the run
was killed and resumed; a corrupt newest checkpoint is reported and the run falls back to the newest
intact one; a workdir holding another run's records (``config.json`` of another config, metrics without
a config) is refused, checkpoints or not; Ctrl-C, SIGTERM and SIGHUP checkpoint the last finished chunk
and raise ``Interrupted``; any other failure (a full disk during a save) cuts ``metrics.jsonl`` back to
the newest checkpoint, so the records never run ahead of what can be resumed.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from psec_jax import config_check, progress, runs, signals
from psec_jax import workdir as workdir_lib
from psec_jax.checkpoint import CheckpointError, Checkpoints
from psec_jax.parallel import distributed

CHECKPOINT_DIR = "checkpoints"


class Interrupted(signals.Stopped):
    """A signal (Ctrl-C, SIGTERM, SIGHUP) stopped ``run_chunks``; the last finished chunk was
    checkpointed (``step``, or None when no chunk had finished). Rerunning resumes from there."""

    def __init__(self, step: int | None, directory: Path, problem: str = "", signum: int = signal.SIGINT):
        super().__init__(signum)
        self.step, self.directory = step, directory
        by = f"interrupted by {signals.name(signum)}"
        if step is None:
            text = f"{by} before the first chunk finished{problem}; nothing was saved"
        else:
            text = f"{by}; step {step} is checkpointed in {directory}{problem} (rerun to resume)"
        self.args = (text,)


def warn(message: str) -> None:
    """One line on stderr (checkpoint fallbacks and other things a user must see but that do not stop
    the run)."""
    progress.say(f"psec_jax: warning: {message}")


# what a run leaves in its workdir besides config.json: a config.json beside any of them speaks for them
RECORDS = (runs.METRICS_FILE, runs.SUMMARY_FILE, "results.json", CHECKPOINT_DIR, "stages", "policies")
# the records only the workdir's config.json can vouch for (each of stages/ keeps its own config.json and
# checkpoints, which the training loop checks; a workdir of an older psec_jax has no top-level one)
OWNED_BY_CONFIG = (runs.METRICS_FILE, runs.SUMMARY_FILE, CHECKPOINT_DIR)


def holds_records(workdir: str | os.PathLike) -> list[str]:
    """The names of ``RECORDS`` that ``workdir`` holds (non-empty files and directories); a directory
    holding only a ``config.json`` holds none (a run stopped before it did anything)."""
    found = []
    for name in RECORDS:
        path = Path(workdir) / name
        try:
            if path.is_file() and path.stat().st_size or path.is_dir() and any(path.iterdir()):
                found.append(name)
        except OSError:
            found.append(name)
    return found


def check_workdir_config(
    workdir: str | os.PathLike, config: ml_collections.ConfigDict, may_change: Sequence[str] = ()
) -> None:
    """RecordsConflict (one line) when ``workdir`` holds another run's records (``holds_records``),
    checkpoints or not: its ``config.json`` differs from ``config`` in a field not in ``may_change``, or
    there is no ``config.json`` to say whose its ``OWNED_BY_CONFIG`` records are."""
    workdir = Path(workdir)
    records = holds_records(workdir)
    if not records:
        return
    fresh = f"use a new --workdir, or empty {workdir} to start fresh"
    path = workdir / runs.CONFIG_FILE
    if not path.exists():
        unowned = [r for r in records if r in OWNED_BY_CONFIG]
        if unowned:
            raise workdir_lib.RecordsConflict(
                f"workdir {workdir} holds {', '.join(unowned)} but no "
                f"{runs.CONFIG_FILE} to say which run wrote them; {fresh}"
            )
        return
    try:
        saved = runs.load_config(path)
    except (ValueError, OSError) as e:
        raise workdir_lib.RecordsConflict(
            f"workdir {workdir} holds an unreadable {runs.CONFIG_FILE} ({runs.one_line(e, with_type=False)}); {fresh}"
        ) from None
    changed = [k for k in config_differences(saved, config) if k not in may_change]
    if changed:
        shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
        raise workdir_lib.RecordsConflict(
            f"workdir {workdir} holds a run with another config (its {runs.CONFIG_FILE} differs in {shown}); {fresh}"
        )


def config_differences(saved: ml_collections.ConfigDict, current: ml_collections.ConfigDict) -> list[str]:
    """Dotted names of the fields whose values differ between two configs (or exist in only one)."""
    a = config_check.leaves(runs.to_jsonable(saved))
    b = config_check.leaves(runs.to_jsonable(current))
    return sorted(k for k in set(a) | set(b) if a.get(k, "<missing>") != b.get(k, "<missing>"))


def run_chunks(
    chunk: Callable[[Any], tuple[Any, Any]],
    init_state: Any,
    *,
    num_chunks: int,
    steps_per_chunk: int,
    workdir: str | os.PathLike,
    config: ml_collections.ConfigDict,
    checkpoint_every_chunks: int = 1,
    max_to_keep: int | None = 3,
    resume_may_change: Sequence[str] = (),
    desc: str = "train",
    tensorboard: bool = True,
) -> tuple[Any, list[dict[str, Any]]]:
    """Runs ``chunk`` ``num_chunks`` times from ``init_state`` (or the latest intact checkpoint) and logs.

    Writes ``config.json``, one record per chunk to ``metrics.jsonl`` (chunk means of every metric, plus
    ``steps_per_sec``), and saves ``(state, config)`` every ``checkpoint_every_chunks`` chunks and at
    the end. Checkpoint steps count training steps (chunks * steps_per_chunk).

    On resume the saved config must equal ``config`` except for the dotted fields listed in
    ``resume_may_change`` (e.g. ``"train.num_steps"`` to extend a run), and the checkpoint must not be
    past the ``num_chunks * steps_per_chunk`` steps asked for; otherwise CheckpointError, with
    ``config.json`` and ``metrics.jsonl`` left as they were. Without a checkpoint the workdir's
    ``config.json`` must match as well (``check_workdir_config``; RecordsConflict). Returns the final state
    and every metric record of the run (earlier sessions' included). Ctrl-C, SIGTERM and SIGHUP raise
    ``Interrupted`` after checkpointing the last finished chunk. ``tensorboard``: also write every metric
    to TensorBoard event files in ``workdir/tensorboard``.
    """
    if num_chunks < 0 or steps_per_chunk < 1 or checkpoint_every_chunks < 1:
        raise ValueError(
            f"need num_chunks >= 0, steps_per_chunk >= 1, checkpoint_every_chunks >= 1; got "
            f"{num_chunks}, {steps_per_chunk}, {checkpoint_every_chunks}"
        )
    workdir = workdir_lib.prepare(workdir)
    total = num_chunks * steps_per_chunk
    ckpt_dir = workdir / CHECKPOINT_DIR
    with (
        workdir_lib.lock(workdir),
        Checkpoints(ckpt_dir, max_to_keep=max_to_keep, cleanup_tmp=distributed.is_main()) as ckpts,
    ):
        signals.raise_if_received()  # a stop requested while this stage was being built
        state, step = init_state, ckpts.resume_step(report=warn)
        if step is None:
            check_workdir_config(workdir, config, resume_may_change)
            step = 0
        else:
            _check_resume(ckpts, step, total, steps_per_chunk, config, resume_may_change)
            state, _ = ckpts.restore(step, target=init_state, verify=False)  # resume_step verified it
        main = distributed.is_main()  # in a multi-process run only process 0 writes logs and metrics
        if main:
            runs.save_config(workdir, config)  # only now: this config is what runs from here on
            history = runs.rewind_metrics(workdir, step)
        else:
            history = []
        try:
            tb_from = step if tensorboard else None
            writer_cm = runs.MetricsWriter(workdir, tensorboard_from=tb_from) if main else _Records()
            if main:
                progress.say(f"{desc}: {'resuming at' if step else 'starting at'} step {step} of {total}")
            with writer_cm as writer, runs.progress(total, desc=desc, initial=step, disable=not main) as bar:
                for c in range(step // steps_per_chunk, num_chunks):
                    signals.raise_if_received()  # even if something swallowed the signal's exception
                    t0 = time.perf_counter()
                    new_state, metrics = chunk(state)
                    metrics = distributed.to_host(metrics)  # also waits for the chunk to finish
                    seconds = time.perf_counter() - t0
                    with signals.deferred():  # the record, the state and its save go together
                        means = {k: float(np.mean(v)) for k, v in metrics.items()}
                        rate = {"steps_per_sec": steps_per_chunk / seconds}
                        record = writer.write((c + 1) * steps_per_chunk, {**means, **rate})
                        history.append(record)
                        state, step = new_state, record["step"]  # only now is this chunk done
                        bar.update(steps_per_chunk, means)
                        if (c + 1) % checkpoint_every_chunks == 0 or c + 1 == num_chunks:
                            ckpts.save(step, state, config, force=True)
                ckpts.wait()  # a failed last save is this run's failure, not a later reader's
            if main:
                progress.say(f"{desc}: done, step {step} of {total}")
        except KeyboardInterrupt as e:
            with signals.deferred(raise_at_exit=False):  # a second signal does not cut the clean-up
                interrupted = _checkpoint_on_interrupt(ckpts, step, state, config, getattr(e, "signum", signal.SIGINT))
                if main:
                    _rewind_quietly(workdir, interrupted.step or 0)  # a chunk logged but not checkpointed
            raise interrupted from None
        except BaseException:  # e.g. a full disk: keep only the records a rerun can resume from
            with signals.deferred(raise_at_exit=False):
                ckpts.discard_unfinished()
                if main:
                    _rewind_quietly(workdir, ckpts.latest_step() or 0)
            raise
    return state, history


def _rewind_quietly(workdir: Path, step: int) -> None:
    """Cuts metrics.jsonl back to ``step`` if the disk lets it: the failure being reported matters more
    than this cleanup's own, and a rerun cuts the same records anyway."""
    try:
        runs.rewind_metrics(workdir, step)
    except (OSError, runs.MetricsError):
        pass


class _Records:
    """What a process other than 0 keeps of the metrics: the records, written nowhere."""

    def __enter__(self) -> _Records:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def write(self, step: int, metrics: dict[str, Any]) -> dict[str, Any]:
        return runs.metrics_record(step, metrics)


def _check_resume(
    ckpts: Checkpoints,
    step: int,
    total: int,
    steps_per_chunk: int,
    config: ml_collections.ConfigDict,
    resume_may_change: Sequence[str],
) -> None:
    if step % steps_per_chunk:
        raise CheckpointError(
            f"checkpoint step {step} in {ckpts.directory} is not a multiple of "
            f"steps_per_chunk={steps_per_chunk}; was the run started with another chunk size?"
        )
    if step > total:
        raise CheckpointError(
            f"the checkpoint in {ckpts.directory} is at step {step}, past the {total} steps this run "
            f"asks for; ask for at least {step} steps, or use a new --workdir"
        )
    changed = [
        k for k in config_differences(ckpts.restore_config(step, verify=False), config) if k not in resume_may_change
    ]
    if changed:
        raise CheckpointError(
            f"cannot resume from {ckpts.directory}: config fields changed since the checkpoint: "
            f"{', '.join(changed)} (use a new --workdir)"
        )


def _checkpoint_on_interrupt(
    ckpts: Checkpoints, step: int, state: Any, config: ml_collections.ConfigDict, signum: int
) -> Interrupted:
    """Saves the last finished chunk's ``state`` (at ``step``) unless it is saved already; further
    signals during this save are held, so they cannot leave a half-written checkpoint. In a multi-process
    run nothing is saved (a save is collective, and the processes may have stopped at different chunks):
    the newest periodic checkpoint is what a rerun resumes from."""
    problem = ""
    if jax.process_count() > 1:
        return Interrupted(
            ckpts.latest_step(),
            ckpts.directory,
            " (the newest periodic checkpoint: a multi-process run saves nothing more on a stop)",
            signum,
        )
    with signals.deferred(raise_at_exit=False):
        try:
            ckpts.wait()
            if step > 0 and step not in ckpts.all_steps():
                ckpts.save(step, state, config, force=True)
                ckpts.wait()
        except Exception as e:  # report it, and the newest checkpoint that is there
            problem, step = f" (saving step {step} failed: {runs.one_line(e)})", ckpts.latest_step() or 0
            ckpts.discard_unfinished()
    return Interrupted(step if step > 0 else None, ckpts.directory, problem, signum)
