"""The outer training driver: jitted ``lax.scan`` chunks, metrics, progress, checkpoints, resume.

The inner loop is the experiment's own ``chunk(state) -> (state, metrics)``: one compiled call that
runs ``steps_per_chunk`` training steps in a ``lax.scan`` and returns per-step metrics with a leading
``[steps_per_chunk]`` axis. This driver only does what must happen between chunks on the host:
averaging and logging metrics, advancing the progress bar, saving checkpoints, and resuming from the
latest intact one. It never retraces ``chunk`` (test with ``psec_jax.testing.assert_no_recompile``).

What it guarantees about the workdir: one run at a time (a lock); ``config.json`` is written only once
the run is going ahead with that config; ``metrics.jsonl`` holds each step once, however often the run
was killed and resumed; a corrupt newest checkpoint is reported and the run falls back to the newest
intact one; Ctrl-C checkpoints the last finished chunk and raises ``Interrupted``.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import ml_collections
import numpy as np

from psec_jax import config_check, runs, workdir as workdir_lib
from psec_jax.checkpoint import CheckpointError, Checkpoints
from psec_jax.parallel import distributed

CHECKPOINT_DIR = "checkpoints"


class Interrupted(KeyboardInterrupt):
    """Ctrl-C stopped ``run_chunks``; the last finished chunk was checkpointed (``step``, or None when
    no chunk had finished). Rerunning with the same workdir resumes from there."""

    def __init__(self, step: int | None, directory: Path, problem: str = ""):
        self.step, self.directory = step, directory
        if step is None:
            text = f"interrupted before the first chunk finished{problem}; nothing was saved"
        else:
            text = f"interrupted; step {step} is checkpointed in {directory}{problem} (rerun to resume)"
        super().__init__(text)


def warn(message: str) -> None:
    """One line on stderr (checkpoint fallbacks and other things a user must see but that do not stop
    the run)."""
    print(f"psec_jax: warning: {message}", file=sys.stderr, flush=True)


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
    tensorboard: bool = False,
) -> tuple[Any, list[dict[str, Any]]]:
    """Runs ``chunk`` ``num_chunks`` times from ``init_state`` (or the latest intact checkpoint) and logs.

    Writes ``config.json``, one record per chunk to ``metrics.jsonl`` (chunk means of every metric, plus
    ``steps_per_sec``), and saves ``(state, config)`` every ``checkpoint_every_chunks`` chunks and at
    the end. Checkpoint steps count training steps (chunks * steps_per_chunk).

    On resume the saved config must equal ``config`` except for the dotted fields listed in
    ``resume_may_change`` (e.g. ``"train.num_steps"`` to extend a run), and the checkpoint must not be
    past the ``num_chunks * steps_per_chunk`` steps asked for; otherwise CheckpointError, with
    ``config.json`` and ``metrics.jsonl`` left as they were. Returns the final state and every metric record of the run (earlier
    sessions' included). Ctrl-C raises ``Interrupted`` after checkpointing the last finished chunk.
    ``tensorboard``: also write every metric to TensorBoard event files in ``workdir/tensorboard``.
    """
    if num_chunks < 0 or steps_per_chunk < 1 or checkpoint_every_chunks < 1:
        raise ValueError(
            f"need num_chunks >= 0, steps_per_chunk >= 1, checkpoint_every_chunks >= 1; got "
            f"{num_chunks}, {steps_per_chunk}, {checkpoint_every_chunks}"
        )
    workdir = workdir_lib.prepare(workdir)
    total = num_chunks * steps_per_chunk
    ckpt_dir = workdir / CHECKPOINT_DIR
    with workdir_lib.lock(workdir), Checkpoints(ckpt_dir, max_to_keep=max_to_keep, cleanup_tmp=distributed.is_main()) as ckpts:
        state, step = init_state, ckpts.resume_step(report=warn)
        if step is None:
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
            with writer_cm as writer, runs.progress(total, desc=desc, initial=step, disable=not main) as bar:
                for c in range(step // steps_per_chunk, num_chunks):
                    t0 = time.perf_counter()
                    new_state, metrics = chunk(state)
                    metrics = distributed.to_host(metrics)  # also waits for the chunk to finish
                    seconds = time.perf_counter() - t0
                    means = {k: float(np.mean(v)) for k, v in metrics.items()}
                    rate = {"steps_per_sec": steps_per_chunk / seconds}
                    record = writer.write((c + 1) * steps_per_chunk, {**means, **rate})
                    history.append(record)
                    state, step = new_state, record["step"]  # only now is this chunk done
                    bar.update(steps_per_chunk)
                    bar.set_postfix({k: f"{v:.4g}" for k, v in list(means.items())[:3]})
                    if (c + 1) % checkpoint_every_chunks == 0 or c + 1 == num_chunks:
                        ckpts.save(step, state, config, force=True)
        except KeyboardInterrupt:
            interrupted = _checkpoint_on_interrupt(ckpts, step, state, config)
            if main:
                runs.rewind_metrics(workdir, interrupted.step or 0)  # a chunk logged but not checkpointed
            raise interrupted from None
    return state, history


class _Records:
    """What a process other than 0 keeps of the metrics: the records, written nowhere."""

    def __enter__(self) -> "_Records":
        return self

    def __exit__(self, *exc) -> None:
        return None

    def write(self, step: int, metrics: dict[str, Any]) -> dict[str, Any]:
        return runs.metrics_record(step, metrics)


def _check_resume(ckpts: Checkpoints, step: int, total: int, steps_per_chunk: int,
                  config: ml_collections.ConfigDict, resume_may_change: Sequence[str]) -> None:
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
    changed = [k for k in config_differences(ckpts.restore_config(step, verify=False), config)
               if k not in resume_may_change]
    if changed:
        raise CheckpointError(
            f"cannot resume from {ckpts.directory}: config fields changed since the checkpoint: "
            f"{', '.join(changed)} (use a new --workdir)"
        )


def _checkpoint_on_interrupt(ckpts: Checkpoints, step: int, state: Any, config: ml_collections.ConfigDict
                             ) -> Interrupted:
    """Saves the last finished chunk's ``state`` (at ``step``) unless it is saved already; a second
    Ctrl-C during this save is ignored so that it cannot leave a half-written checkpoint."""
    try:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread
        previous = None
    problem = ""
    try:
        ckpts.wait()
        if step > 0 and step not in ckpts.all_steps():
            ckpts.save(step, state, config, force=True)
            ckpts.wait()
    except Exception as e:  # report it, and the newest checkpoint that is there
        problem, step = f" (saving step {step} failed: {runs.one_line(e)})", ckpts.latest_step() or 0
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    return Interrupted(step if step > 0 else None, ckpts.directory, problem)
