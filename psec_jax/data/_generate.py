"""The child process of ``psec_jax.data.pinned``: ``python -m psec_jax.data._generate NAME SEED NOISE PATH``
generates one dataset into PATH; on failure it leaves one line in ``PATH.error`` and exits 1 (130 on
SIGINT, quietly: the parent reports the stop)."""

from __future__ import annotations

import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    name, seed, noise, path = argv
    path = Path(path)
    try:
        from psec_jax.data import datasets

        datasets.generate(datasets.parse(name, seed=int(seed), noise=float(noise)), path)
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # one line for the parent, whatever failed
        from psec_jax.data import pinned

        pinned.error_file(path).write_text(f"{type(e).__name__}: {e}".splitlines()[0] + "\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
