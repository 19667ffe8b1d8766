"""psec_jax.bench: the timing helpers the benchmarks share."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from psec_jax import bench


def test_time_interleaved_times_every_call_in_turns_and_keeps_the_best():
    order = []

    def make(name, seconds):
        def fn():
            order.append(name)
            time.sleep(seconds)
            return 0

        return fn

    best = bench.time_interleaved({"fast": (make("fast", 0.001), ()), "slow": (make("slow", 0.02), ())}, reps=3)
    assert set(best) == {"fast", "slow"} and 0.001 <= best["fast"] < best["slow"]
    assert order == ["fast", "slow"] * 4  # one warm-up each, then three rounds in turns
    order.clear()
    bench.time_interleaved({"a": (make("a", 0.01), ()), "b": (make("b", 0.01), ())}, reps=5, slow_seconds=0.005)
    assert order == ["a", "b"] * 2  # stops after the first round in which both exceeded slow_seconds
    order.clear()
    bench.time_interleaved(
        {"a": (make("a", 0.01), ()), "probe": (make("probe", 0.0), ())}, reps=5, slow_seconds=0.005, probes=("probe",)
    )
    assert order == ["a", "probe"] * 2  # a fast probe does not keep the slow call running
    order.clear()
    bench.time_interleaved({"a": (make("a", 0.01), ())}, reps=2, min_seconds=0.1)
    assert 3 < len(order) <= 12  # warm-up + rounds until 0.1 s had passed (~10 of 10 ms each), not 2


def test_load_monitor_counts_other_processes_cpu_time_and_not_its_own():
    """A child spinning a core for 1 s of CPU while this process waits is other work; this process's own
    busy loop is its own."""
    spin = (
        "import sys, time\nt = time.process_time()\nwhile time.process_time() - t < 1.0: pass\n"
        "sys.stdout.write('x'); sys.stdout.flush(); time.sleep(30)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", spin], stdout=subprocess.PIPE)
    try:
        with bench.LoadMonitor() as load:
            assert child.stdout.read(1) == b"x"  # spun; still running (unreaped), so not this process's time
    finally:
        child.kill()
        child.wait()
    with bench.LoadMonitor() as mine:
        t = time.process_time()
        while time.process_time() - t < 0.5:
            pass
    report, own = load.report(), mine.report()
    assert report["others_cpu_s"] >= 0.9 and report["others_share"] > 0
    # its own loop is its own (others' share is not asserted: the suite's other worker runs meanwhile)
    assert own["own_cpu_s"] >= 0.45


def test_load_monitor_flags_a_busy_machine_from_proc_stat(tmp_path):
    stat = tmp_path / "stat"
    tick = os.sysconf("SC_CLK_TCK")
    stat.write_text("cpu  100 0 100 5000 0 0 0 0 0 0\n")
    with bench.LoadMonitor(stat_path=str(stat)) as quiet:
        time.sleep(0.2)
    assert quiet.report()["others_cpu_s"] == 0.0 and quiet.report()["quiet"]
    with bench.LoadMonitor(stat_path=str(stat)) as busy:
        time.sleep(0.2)  # meanwhile another process used every core fully for the whole second
        stat.write_text(f"cpu  {100 + tick * (os.cpu_count() or 1)} 0 100 5000 0 0 0 0 0 0\n")
    report = busy.report()
    assert report["others_share"] > 0.5 and not report["quiet"]
    assert "BUSY" in bench.describe_load(report) and "quiet" in bench.describe_load(quiet.report())


def test_results_record_the_cpu_and_the_load(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("model name\t: Test CPU\nflags\t\t: fpu sse4_2 avx avx2 avx512f amx_tile\n")
    assert bench.cpu_info(info) == {
        "model": "Test CPU",
        "cores": os.cpu_count(),
        "flags": ["sse4_2", "avx", "avx2", "avx512f", "amx_tile"],
    }
    with bench.LoadMonitor() as load:
        pass
    path = bench.write_results("x", [{"a": 1}], {"args": {}}, directory=tmp_path, load=load.report())
    saved = json.loads(path.read_text())
    assert saved["load"]["wall_s"] >= 0 and "flags" in saved["environment"]["cpu"] and saved["rows"] == [{"a": 1}]
