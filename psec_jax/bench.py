"""Helpers shared by the scripts in ``benchmarks/``: timing jitted functions, the machine's load and CPU
features beside the results, and writing them.

    with bench.LoadMonitor() as load:                  # /proc/stat and this process's CPU time
        best = bench.time_interleaved(calls)
    bench.write_results("name", rows, directory=RESULTS, load=load.report())   # "quiet": no other work ran

Ratios between two implementations are only evidence from a quiet machine: PyTorch's OpenMP threads and
XLA's pool suffer differently from a shared core, so a ratio measured beside other work moves with it.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import platform
import resource
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


# CPU flags that decide matmul speed (XLA:CPU and MKL pick kernels by them)
CPU_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_bf16",
)
# a run is quiet when other processes used at most this share of the machine's CPU time during it
QUIET_SHARE = 0.05


def cpu_info(path: str | Path = "/proc/cpuinfo") -> dict[str, Any]:
    """The CPU's model name, logical core count and which of ``CPU_FLAGS`` it reports ({} off Linux)."""
    try:
        text = Path(path).read_text()
    except OSError:
        return {}
    fields = {k.strip(): v for k, v in (line.split(":", 1) for line in text.splitlines() if ":" in line)}
    flags = set(fields.get("flags", "").split())
    return {
        "model": fields.get("model name", "").strip(),
        "cores": os.cpu_count(),
        "flags": [f for f in CPU_FLAGS if f in flags],
    }


def _busy_seconds(path: str | Path = "/proc/stat") -> float | None:
    """CPU seconds every process on the machine has spent busy since boot (None off Linux)."""
    try:
        first = Path(path).read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    ticks = [int(v) for v in first[1:8]]  # user nice system idle iowait irq softirq
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    """CPU seconds of this process (all its threads: XLA's pool, OpenMP) and its finished children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


@dataclasses.dataclass
class LoadMonitor:
    """The machine's load over a ``with`` block: load averages at its ends, and the CPU time other
    processes spent during it (all busy time in /proc/stat less this process's own)."""

    stat_path: str = "/proc/stat"
    _start: tuple[float, float | None, float, tuple[float, ...]] | None = None
    _end: tuple[float, float | None, float, tuple[float, ...]] | None = None

    def _sample(self) -> tuple[float, float | None, float, tuple[float, ...]]:
        return time.perf_counter(), _busy_seconds(self.stat_path), _own_seconds(), os.getloadavg()

    def start(self) -> LoadMonitor:
        """Starts measuring (also ``with LoadMonitor() as load:``); returns self."""
        self._start, self._end = self._sample(), None
        return self

    def stop(self) -> None:
        """Ends the measured span (``report`` before it measures up to now)."""
        self._end = self._sample()

    def __enter__(self) -> LoadMonitor:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def report(self) -> dict[str, Any]:
        """``{"wall_s", "own_cpu_s", "others_cpu_s", "others_share", "load_avg_start", "load_avg_end",
        "quiet"}``: others_share = other processes' CPU seconds / (wall x cores); quiet when it is at most
        ``QUIET_SHARE`` (None, and not quiet, where /proc/stat cannot be read)."""
        if self._start is None:
            raise RuntimeError("LoadMonitor.report() before the `with` block ran")
        end = self._end or self._sample()
        (t0, busy0, own0, avg0), (t1, busy1, own1, avg1) = self._start, end
        wall, own = t1 - t0, own1 - own0
        others = None if busy0 is None or busy1 is None else max(0.0, busy1 - busy0 - own)
        share = None if others is None or wall <= 0 else others / (wall * (os.cpu_count() or 1))
        return {
            "wall_s": wall,
            "own_cpu_s": own,
            "others_cpu_s": others,
            "others_share": share,
            "load_avg_start": list(avg0),
            "load_avg_end": list(avg1),
            "quiet": share is not None and share <= QUIET_SHARE,
        }


def describe_load(load: dict[str, Any]) -> str:
    """One line for the log: quiet or not, and how busy the rest of the machine was."""
    share = "unknown" if load["others_share"] is None else f"{100 * load['others_share']:.1f}%"
    verdict = "quiet" if load["quiet"] else "BUSY (ratios between implementations are not evidence)"
    return (
        f"machine {verdict}: other processes used {share} of the CPU over {load['wall_s']:.0f} s "
        f"(load average {load['load_avg_start'][0]:.2f} -> {load['load_avg_end'][0]:.2f})"
    )


def environment() -> dict[str, Any]:
    """Versions, devices and the CPU, stored with every result file."""
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": [d.device_kind for d in jax.devices()],
        "machine": platform.machine(),
        "cpu": cpu_info(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "commit": runs.git_commit(),
    }


def write_results(
    name: str,
    rows: Sequence[dict[str, Any]],
    extra: dict[str, Any] | None = None,
    *,
    directory: str | Path,
    load: dict[str, Any] | None = None,
) -> Path:
    """Writes ``{"environment", "load", "rows", **extra}`` to ``<directory>/<name>.json`` (the benchmarks
    write into the checkout's ``benchmarks/results``); ``load``: a ``LoadMonitor.report()`` of the run."""
    path = Path(directory) / f"{name}.json"
    record = {"environment": environment(), **({"load": load} if load is not None else {}), **(extra or {})}
    return runs.write_json_atomic(path, {**record, "rows": list(rows)})
