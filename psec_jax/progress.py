"""Progress a person can follow, on a terminal or in a log file.

On a terminal: a tqdm bar whose postfix shows the loss first. When stderr is not a terminal (nohup, a
batch scheduler, ``2> log``) tqdm turns itself off, so a plain line per update takes its place,
flushed at once::

    smoke: step 400/2000 (20%) loss 0.0123 | 812 steps/s | ETA 2s

and phases (a stage, dataset generation, an evaluation) announce their start and end in one line each
(``phase``). Lines closer together than ``min_interval`` seconds are folded into the next one (a chunk
of a tiny run takes milliseconds); the last update is always printed.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator, Mapping
from typing import Any

from tqdm.auto import tqdm


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


def say(message: str) -> None:
    """One flushed line on stderr; a closed terminal (SIGHUP) or a full log disk does not stop the run."""
    try:
        print(message, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


def loss_first(metrics: Mapping[str, Any]) -> list[str]:
    """Metric names with the headline first (``return``, an RL run's, or ``loss``), then ``<prefix>/loss``,
    every other ``*loss*``, then the rest."""
    rank = lambda k: 0 if k in ("loss", "return") else 1 if k.rsplit("/", 1)[-1] == "loss" else 2 if "loss" in k else 3
    return sorted(metrics, key=rank)  # stable: the others keep their order


def duration(seconds: float) -> str:
    """``"45s"``, ``"12m05s"``, ``"3h02m"``."""
    s = int(round(max(seconds, 0)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Progress:
    """Progress of ``total`` units (steps, episodes, chunks) from ``initial``; see the module docstring.

    ``update(n, metrics)`` advances by ``n`` and shows up to ``shown`` metrics, losses first.
    ``disable``: nothing at all (every process of a multi-process run but the first).
    """

    def __init__(
        self,
        total: int,
        desc: str = "",
        initial: int = 0,
        unit: str = "step",
        disable: bool = False,
        shown: int = 3,
        min_interval: float = 1.0,
        terminal: bool | None = None,
    ):
        self.total, self.desc, self.unit, self.shown = int(total), desc, unit, shown
        self.done, self._start_done = int(initial), int(initial)
        self.disable, self.min_interval = disable, min_interval
        self.terminal = _stderr_is_terminal() if terminal is None else terminal
        self._t0 = self._last = time.perf_counter()
        self._bar = None
        if not disable and self.terminal:
            self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True)

    def update(self, n: int = 1, metrics: Mapping[str, Any] | None = None) -> None:
        self.done += n
        metrics = metrics or {}
        names = loss_first(metrics)[: self.shown]
        if self._bar is not None:
            try:
                self._bar.update(n)
                self._bar.set_postfix({k: f"{metrics[k]:.4g}" for k in names}, refresh=False)
            except (OSError, ValueError):  # the terminal went away (SIGHUP under nohup): go on without it
                self._bar = None
            return
        now = time.perf_counter()
        if self.disable or (now - self._last < self.min_interval and self.done < self.total):
            return
        self._last = now
        rate = (self.done - self._start_done) / max(now - self._t0, 1e-9)
        eta = duration((self.total - self.done) / rate) if rate > 0 else "?"
        shown = "".join(f" {k} {metrics[k]:.4g}" for k in names)
        pct = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        say(f"{self.desc}: {self.unit} {self.done}/{self.total}{pct}{shown} | {rate:.3g} {self.unit}s/s | ETA {eta}")

    def close(self) -> None:
        if self._bar is not None:
            try:
                self._bar.close()
            except (OSError, ValueError):
                pass

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


@contextlib.contextmanager
def phase(what: str, disable: bool = False) -> Iterator[None]:
    """Announces ``what`` (e.g. "psec_continual: evaluating 5 methods") when it starts and when it ends,
    with its duration; nothing when ``disable``. An exception leaves the end line out."""
    t0 = time.perf_counter()
    if not disable:
        say(f"{what} ...")
    yield
    if not disable:
        say(f"{what}: done in {duration(time.perf_counter() - t0)}")
