"""The ``psec-jax`` console script and ``python -m psec_jax``: signals are handled from the first line.

Only the standard library is loaded before the handlers are in place, and a signal while numpy, jax or
an experiment is being imported is held until the import is done (raised inside a C extension's import
it crashed the interpreter), so Ctrl-C, SIGTERM or SIGHUP at start-up is the same one line and exit
code as during training. A stopped run ends with ``os._exit``: by then its checkpoint is committed and its files
are closed, and letting the interpreter tear down XLA's and Orbax's threads mid-work crashed it
(segmentation faults, "cannot schedule new futures after interpreter shutdown" tracebacks).
"""

from __future__ import annotations

import os
import sys

from psec_jax import signals


def main() -> int:
    """Runs ``psec_jax.cli.main`` on ``sys.argv[1:]``; returns its exit code (a stopped run exits here)."""
    started = False
    with signals.handled():
        try:
            with signals.deferred():  # a signal inside a C extension's import crashed the interpreter
                from psec_jax import cli
            started = True
            code = cli.main()
        except BrokenPipeError:  # `psec-jax info | head -1`: the reader left, as SIGPIPE would end us
            code = 128 + 13
        except KeyboardInterrupt as e:  # still importing (nothing written), or cli.main had returned
            code = signals.exit_code(getattr(e, "signum", None))
            if not started:
                try:
                    print(
                        f"psec-jax: interrupted by {signals.name(code - 128)} while starting; nothing was written",
                        file=sys.stderr,
                        flush=True,
                    )
                except (OSError, ValueError):
                    pass
    if code > 128:  # (no flush of a broken pipe's stdout: it would fail again at exit)
        for stream in (sys.stdout, sys.stderr) if code != 141 else (sys.stderr,):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)
    return code
