"""The outer training driver: jitted ``lax.scan`` chunks, metrics, progress, checkpoints, resume.

The inner loop is the experiment's own ``chunk(state) -> (state, metrics)``: one compiled call that
runs ``steps_per_chunk`` training steps in a ``lax.scan`` and returns per-step metrics with a leading
``[steps_per_chunk]`` axis. This driver only does what must happen between chunks on the host:
averaging and logging metrics, advancing the progress bar, saving checkpoints, and resuming from the
latest one. It never retraces ``chunk`` (test with ``psec_jax.testing.assert_no_recompile``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import ml_collections
import numpy as np

from psec_jax import runs
from psec_jax.checkpoint import CheckpointError, Checkpoints

CHECKPOINT_DIR = "checkpoints"


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in (d.items() if isinstance(d, dict) else []):
        key = f"{prefix}{k}"
        out.update(_flat(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def config_differences(saved: ml_collections.ConfigDict, current: ml_collections.ConfigDict) -> list[str]:
    """Dotted names of the fields whose values differ between two configs (or exist in only one)."""
    a = _flat(runs.to_jsonable(saved))
    b = _flat(runs.to_jsonable(current))
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
) -> tuple[Any, list[dict[str, Any]]]:
    """Runs ``chunk`` ``num_chunks`` times from ``init_state`` (or the latest checkpoint) and logs.

    Writes ``config.json``, appends one record per chunk to ``metrics.jsonl`` (chunk means of every
    metric, plus ``steps_per_sec``), and saves ``(state, config)`` every ``checkpoint_every_chunks``
    chunks and at the end. Checkpoint steps count training steps (chunks * steps_per_chunk).

    On resume the saved config must equal ``config`` except for the dotted fields listed in
    ``resume_may_change`` (e.g. ``"train.num_steps"`` to extend a run); otherwise CheckpointError.
    Returns the final state and the metric records written by this call.
    """
    if num_chunks < 0 or steps_per_chunk < 1 or checkpoint_every_chunks < 1:
        raise ValueError(
            f"need num_chunks >= 0, steps_per_chunk >= 1, checkpoint_every_chunks >= 1; got "
            f"{num_chunks}, {steps_per_chunk}, {checkpoint_every_chunks}"
        )
    workdir = Path(workdir)
    runs.save_config(workdir, config)
    records: list[dict[str, Any]] = []
    with Checkpoints(workdir / CHECKPOINT_DIR, max_to_keep=max_to_keep) as ckpts:
        state, start = init_state, 0
        latest = ckpts.latest_step()
        if latest is not None:
            if latest % steps_per_chunk:
                raise CheckpointError(
                    f"checkpoint step {latest} in {ckpts.directory} is not a multiple of "
                    f"steps_per_chunk={steps_per_chunk}; was the run started with another chunk size?"
                )
            changed = [k for k in config_differences(ckpts.restore_config(latest), config)
                       if k not in resume_may_change]
            if changed:
                raise CheckpointError(
                    f"cannot resume from {ckpts.directory}: config fields changed since the checkpoint: "
                    f"{', '.join(changed)} (use a new --workdir)"
                )
            state, _ = ckpts.restore(latest, target=init_state)
            start = latest // steps_per_chunk
        with runs.MetricsWriter(workdir) as writer, runs.progress(
            num_chunks * steps_per_chunk, desc=desc, initial=start * steps_per_chunk
        ) as bar:
            for c in range(start, num_chunks):
                t0 = time.perf_counter()
                state, metrics = chunk(state)
                metrics = jax.device_get(metrics)  # also waits for the chunk to finish
                seconds = time.perf_counter() - t0
                step = (c + 1) * steps_per_chunk
                means = {k: float(np.mean(v)) for k, v in metrics.items()}
                records.append(writer.write(step, {**means, "steps_per_sec": steps_per_chunk / seconds}))
                bar.update(steps_per_chunk)
                bar.set_postfix({k: f"{v:.4g}" for k, v in list(means.items())[:3]})
                if (c + 1) % checkpoint_every_chunks == 0 or c + 1 == num_chunks:
                    ckpts.save(step, state, config, force=True)
    return state, records
