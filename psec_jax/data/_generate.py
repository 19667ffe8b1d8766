"""The child process of ``psec_jax.data.pinned``: ``python -m psec_jax.data._generate NAME SEED NOISE PATH``
generates one dataset into PATH; on failure it leaves one line in ``PATH.error`` and exits 1 (130 on
SIGINT, quietly: the parent reports the stop). It asks Linux to end it when its parent dies, so a killed
run leaves no generation behind."""

from __future__ import annotations

import ctypes
import signal
import sys
from pathlib import Path

from psec_jax.data import datasets, pinned

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the parent's kill on its own stop still applies
        pass


def main(argv: list[str]) -> int:
    name, seed, noise, path = argv
    path = Path(path)
    _die_with_parent()
    try:
        datasets.generate(datasets.parse(name, seed=int(seed), noise=float(noise)), path)
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # one line for the parent, whatever failed
        pinned.error_file(path).write_text(f"{type(e).__name__}: {e}".splitlines()[0] + "\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
