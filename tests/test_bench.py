"""psec_jax.bench: the timing helpers the benchmarks share."""

from __future__ import annotations

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
