"""Dataset generation on one instruction set, so that every x86-64 machine writes the same bytes.

XLA:CPU compiles the simulator and the behaviour policy for the widest vector instructions of the host,
and the walker amplifies last-bit differences over 1000 steps. Measured on one machine with
``--xla_cpu_max_isa`` (``psec-jax dataset walker-walk-expert-10traj``): SSE4_2, AVX and AVX2 write three
different files (AVX2 the same as the host's own AVX-512), and SSE4_2 writes the same bytes on one core
as on two. So generation runs in a child process pinned to SSE4_2, which every x86-64 CPU has, on the
CPU backend (an accelerator would write other bytes again). Elsewhere (ARM) the pin does not apply: the
data is generated in process and checked against the references (``psec_jax.data.references``).
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

from psec_jax.data.formats import DatasetError

ISA = "SSE4_2"  # the instruction set every x86-64 CPU has
FLAG = f"--xla_cpu_max_isa={ISA}"
CHILD = "psec_jax.data._generate"  # the module the child runs: python -m CHILD NAME SEED NOISE PATH


def applies() -> bool:
    """Whether this machine can pin generation (x86-64: the flag names an x86 instruction set)."""
    return platform.machine().lower() in ("x86_64", "amd64")


def in_pinned_process() -> bool:
    """Whether this process already runs XLA pinned to ``ISA`` on the CPU (the child, or a user who
    started the whole run that way): it can generate in process."""
    return FLAG in os.environ.get("XLA_FLAGS", "").split() and os.environ.get("JAX_PLATFORMS", "") == "cpu"


def environment() -> dict[str, str]:
    """This process's environment with XLA pinned to ``ISA`` on the CPU backend and no other XLA flag: the
    bytes must not depend on the caller's flags (e.g. the test suite's optimisation level)."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = FLAG
    env["JAX_PLATFORMS"] = "cpu"
    return env


def error_file(path: Path) -> Path:
    """Where the child leaves its one-line error for ``path``."""
    return path.with_name(path.name + ".error")


def generate_in_child(name: str, seed: int, noise: float, path: Path) -> None:
    """Runs ``CHILD`` to write dataset ``name`` (``seed``, ``noise``) to ``path`` under ``environment()``;
    its progress goes to this process's stderr. DatasetError (one line with the child's error) if it
    fails. The child runs in its own session, so a Ctrl-C reaches this process alone, which then kills it
    (``subprocess.run`` does); it also dies with this process (``_generate`` asks Linux for that)."""
    error = error_file(path)
    try:
        code = subprocess.run(
            [sys.executable, "-m", CHILD, name, str(seed), repr(noise), str(path)],
            env=environment(),
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        ).returncode
        if code:
            why = error.read_text().strip() if error.is_file() else "it wrote no error (killed, out of memory?)"
            raise DatasetError(f"generating {name} pinned to {ISA} in a child process failed (exit {code}): {why}")
    finally:
        error.unlink(missing_ok=True)
