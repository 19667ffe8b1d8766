"""Runs the multi-device checks (tests/multidevice/check_*.py) in their own pytest process with 8
emulated CPU devices, so the device count never leaks into the rest of the suite."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent


def _run_checks(marker: str) -> None:
    """pytest -m `marker` over every check file, in a subprocess with 8 emulated CPU devices."""
    checks = sorted(str(p) for p in (HERE / "multidevice").glob("check_*.py"))
    assert checks, "no multi-device checks found"
    # XLA:CPU aborts the process (SIGABRT, no Python traceback) when a collective's device threads do not
    # all arrive within its rendezvous timeout. The aborts seen here were a real deadlock (the gathered-
    # weight LM path, now off on CPU meshes), but 8 device threads on CI's 2 cores can also arrive far
    # apart: 300 s tolerates slow spells and still fails a deadlock well inside the subprocess timeout
    flags = (
        "--xla_force_host_platform_device_count=8 --xla_cpu_collective_call_terminate_timeout_seconds=300 "
        "--xla_cpu_collective_timeout_seconds=300"
    )
    env = {**os.environ, "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} {flags}", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(HERE.parent),
            "-m",
            marker,
            *checks,
        ],
        cwd=HERE.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    if proc.returncode != 0:
        pytest.fail(
            f"multi-device checks failed (exit {proc.returncode}):\n{proc.stdout[-6000:]}\n"
            f"stderr:\n{proc.stderr[:3000]}\n...\n{proc.stderr[-3000:]}"
        )
    assert " passed" in proc.stdout and "skipped" not in proc.stdout.split("\n")[-2], proc.stdout[-2000:]


def test_multidevice_checks_pass_on_eight_emulated_devices():
    _run_checks("not slow")


@pytest.mark.slow
def test_slow_multidevice_checks_pass_on_eight_emulated_devices():
    """More meshes, the dropless LM under FSDP, the paper configs' compiles (`make test-all`)."""
    _run_checks("slow")
