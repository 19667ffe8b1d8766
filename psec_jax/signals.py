"""Stopping a run on request: Ctrl-C (SIGINT), SIGTERM (``timeout``, a scheduler's preemption) and
SIGHUP (a closed terminal) all raise ``Stopped``, a KeyboardInterrupt, so every ``except
KeyboardInterrupt`` that saves work handles the three alike::

    with signals.handled():             # the CLI, from its first line to its last
        ...
        with signals.deferred():        # a record and its checkpoint: finished together, or not begun
            ...                         # a signal here is held and raised when the block ends

The first signal is remembered (``received()``), so a ``Stopped`` that was swallowed still stops the
run at the next chunk (``raise_if_received``): one raised inside a garbage-collection callback (XLA
has one) cannot propagate, and Python would print it as "Exception ignored in ..."; inside
``handled()`` such a swallowed ``Stopped`` prints nothing, and the exit code is the shell's convention,
128 + the signal number (130, 143, 129). Only the standard library is imported here: the console entry
point installs the handlers before anything heavy is imported.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

_received: int | None = None  # the first signal of this process's run
_deferring = 0  # depth of `deferred()` blocks
_held = False  # a signal arrived inside a deferred block
_installed = 0  # depth of `handled()` blocks (the entry point's and the CLI's nest)


class Stopped(KeyboardInterrupt):
    """A run was asked to stop by ``signum`` (SIGINT, SIGTERM or SIGHUP)."""

    def __init__(self, signum: int = signal.SIGINT):
        self.signum = signum
        super().__init__(f"interrupted by {name(signum)}")


def name(signum: int) -> str:
    """``"SIGTERM"`` for 15, and so on."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def exit_code(signum: int | None = None) -> int:
    """128 + the signal number (SIGINT 130, SIGTERM 143, SIGHUP 129): what a shell reports for a
    process its signal ended. Default: the signal received, else SIGINT."""
    return 128 + int(signum or _received or signal.SIGINT)


def received() -> int | None:
    """The first signal this run received, or None."""
    return _received


def raise_if_received() -> None:
    """Raises ``Stopped`` if a signal arrived (even one whose exception something swallowed)."""
    if _received is not None:
        raise Stopped(_received)


def _handler(signum: int, frame) -> None:
    global _received, _held
    if _received is None:
        _received = signum
    if _deferring:
        _held = True
        return
    raise Stopped(signum)


@contextlib.contextmanager
def handled() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP raise ``Stopped`` inside the block; the previous handlers come back
    after it. A signal that was ignored when the process started stays ignored (``nohup`` ignores
    SIGHUP, a shell without job control starts background jobs ignoring SIGINT): that is the user's
    choice. Outside the main thread nothing is installed."""
    global _received, _held, _installed
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    if not _installed:
        _received, _held = None, False
    _installed += 1
    hook = sys.unraisablehook
    sys.unraisablehook = lambda u: None if isinstance(u.exc_value, Stopped) else hook(u)
    for s, before in previous.items():
        if before is not signal.SIG_IGN:
            signal.signal(s, _handler)
    try:
        yield
    finally:
        _installed -= 1
        sys.unraisablehook = hook
        if not _installed:  # outside the run nothing is pending (tests run many in one process)
            _received, _held = None, False
        for s, before in previous.items():
            signal.signal(s, before if before is not None else signal.SIG_DFL)


@contextlib.contextmanager
def deferred(raise_at_exit: bool = True) -> Iterator[None]:
    """Holds signals for the block: one that arrives inside it is recorded, and (``raise_at_exit``)
    raised as ``Stopped`` when the outermost deferred block ends, so work in the block is never cut
    in half. A second signal during a save on the way out (``raise_at_exit=False``) changes nothing."""
    global _deferring, _held
    _deferring += 1
    try:
        yield
    except BaseException:  # already on the way out: the held signal is in received()
        _deferring -= 1
        _held = _held and _deferring > 0
        raise
    _deferring -= 1
    if _deferring == 0 and _held:
        _held = False
        if raise_at_exit and _received is not None:
            raise Stopped(_received)
