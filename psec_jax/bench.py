"""Helpers shared by the scripts in ``benchmarks/``: timing jitted functions and writing results."""

from __future__ import annotations

import datetime
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax

from psec_jax import runs


def time_call(
    fn: Callable[..., Any], *args: Any, reps: int = 5, min_seconds: float = 0.2, slow_seconds: float | None = None
) -> float:
    """Best wall time in seconds of ``fn(*args)`` (outputs blocked on), after one warm-up call.

    Runs at least ``reps`` timed calls and keeps going until ``min_seconds`` have passed; the minimum
    is reported because on a shared machine noise only ever adds time. With ``slow_seconds``, stops
    early once the best call took longer than that (long calls are timed once or twice, not ``reps``
    times).
    """
    jax.block_until_ready(fn(*args))
    best, total, n = float("inf"), 0.0, 0
    while n < reps or total < min_seconds:
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        dt = time.perf_counter() - t0
        best, total, n = min(best, dt), total + dt, n + 1
        if slow_seconds is not None and best > slow_seconds:
            break
    return best


def time_interleaved(
    calls: dict[str, tuple[Callable[..., Any], tuple]],
    reps: int = 5,
    slow_seconds: float | None = None,
    min_seconds: float = 0.0,
    probes: Sequence[str] = (),
) -> dict[str, float]:
    """Best wall time in seconds of each ``fn(*args)`` in ``calls`` (name -> (fn, args)), timed in turns.

    One warm-up call each, then ``reps`` rounds that call every function once, so a slow spell of a
    shared machine lands on all of them rather than on whichever was being timed then: ratios
    between them are steadier than from back-to-back ``time_call``s. Keeps adding rounds past
    ``reps`` until the rounds took ``min_seconds`` in all (fast calls get more samples: the minimum
    of three ~0.3 s calls still moved by 10-20% between runs here). With ``slow_seconds``, stops
    after the round in which every best time is longer than that, not counting the ``probes``
    (short reference calls timed alongside, e.g. a matmul ceiling).
    """
    for fn, args in calls.values():
        jax.block_until_ready(fn(*args))
    best = {name: float("inf") for name in calls}
    rounds, start = 0, time.perf_counter()
    while rounds < reps or time.perf_counter() - start < min_seconds:
        for name, (fn, args) in calls.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*args))
            best[name] = min(best[name], time.perf_counter() - t0)
        rounds += 1
        if slow_seconds is not None and min(v for k, v in best.items() if k not in probes) > slow_seconds:
            break
    return best


def environment() -> dict[str, Any]:
    """Versions and devices, stored with every result file."""
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": [d.device_kind for d in jax.devices()],
        "machine": platform.machine(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "commit": runs.git_commit(),
    }


def write_results(
    name: str, rows: Sequence[dict[str, Any]], extra: dict[str, Any] | None = None, *, directory: str | Path
) -> Path:
    """Writes ``{"environment", "rows", **extra}`` to ``<directory>/<name>.json`` (the benchmarks write
    into the checkout's ``benchmarks/results``)."""
    path = Path(directory) / f"{name}.json"
    return runs.write_json_atomic(path, {"environment": environment(), **(extra or {}), "rows": list(rows)})
