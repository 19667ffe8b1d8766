"""A run's working directory: checked before anything is computed, and locked while a run uses it.

    path = workdir.prepare("runs/x")    # WorkdirError naming the problem: a file, below a file, read-only
    with workdir.lock(path):            # WorkdirBusy if another process holds it
        ...

The lock is an advisory ``flock`` on ``<workdir>/.psec_jax.lock``: the kernel releases it when the
holding process ends, however it ends (kill -9 included), so a crashed run never leaves a stale lock.
It is re-entrant within one process (the CLI locks the workdir and the training loop locks it again).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import os
import re
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

LOCK_FILE = ".psec_jax.lock"

_held: dict[Path, list] = {}  # resolved workdir -> [open lock file, depth]


class WorkdirError(RuntimeError):
    """The workdir cannot be used (the message names the path and the reason, in one line)."""


class WorkdirBusy(WorkdirError):
    """Another process is running in this workdir."""


class RecordsConflict(WorkdirError):
    """The workdir holds the records of another run (another config, or metrics nobody can vouch for)."""


def _reason(e: OSError) -> str:
    return e.strerror or type(e).__name__


def prepare(path: str | os.PathLike) -> Path:
    """Creates ``path`` (and its parents) if needed and checks that a run can write there.

    Raises WorkdirError when ``path`` is a file, lies below a file, or cannot be created or written, and
    for a URL (``gs://bucket/run``): runs write through the local file system only, and a URL would
    otherwise become a local directory named ``gs:``.
    """
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", os.fspath(path)):
        raise WorkdirError(
            f"workdir {os.fspath(path)} is a URL: remote workdirs are not supported; use a "
            f"local path or a mounted bucket (e.g. gcsfuse)"
        )
    path = Path(path)
    try:  # exists() itself raises when a parent cannot be entered
        if path.exists() and not path.is_dir():
            raise WorkdirError(f"workdir {path} is a file, not a directory")
        for parent in path.absolute().parents:
            if parent.exists():
                if not parent.is_dir():
                    raise WorkdirError(f"workdir {path} cannot be created: {parent} is a file")
                break
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WorkdirError(f"workdir {path} cannot be created: {_reason(e)}") from None
    try:
        check_writable(path)
    except OSError as e:
        raise WorkdirError(f"workdir {path} is not writable: {_reason(e)}") from None
    return path


def check_writable(directory: str | os.PathLike) -> None:
    """Creates ``directory`` (and its parents) if needed and a file in it, then removes the file; OSError
    when the system refuses. os.access is not enough: root passes it on read-only mounts, ACLs can
    refuse it."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    probe = directory / f".psec_jax.write-test-{os.getpid()}"
    probe.write_bytes(b"")
    probe.unlink()


@contextlib.contextmanager
def lock(path: str | os.PathLike) -> Iterator[Path]:
    """Holds an exclusive lock on the workdir ``path`` for the ``with`` block.

    Raises WorkdirBusy (naming the holder's pid, host and start time) if another process holds it.
    """
    key = Path(path).resolve()
    lock_file = LOCK_FILE
    jax = sys.modules.get("jax")  # never imported here: a run that has not started jax is one process
    if jax is not None and jax.distributed.is_initialized() and jax.process_index() > 0:
        # a multi-process run: its processes share the workdir; process 0 holds the usual lock
        lock_file = f"{LOCK_FILE}.{jax.process_index()}"
    if key in _held:
        _held[key][1] += 1
        try:
            yield Path(path)
        finally:
            _held[key][1] -= 1
        return
    try:
        f = open(key / lock_file, "a+", encoding="utf-8")
    except OSError as e:
        raise WorkdirError(f"cannot lock workdir {path}: {_reason(e)}") from None
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "unknown process"
        f.close()
        raise WorkdirBusy(
            f"workdir {path} is in use by another run ({holder}); wait for it to finish or use another --workdir"
        ) from None
    except OSError as e:  # e.g. a filesystem without flock: say so rather than run unprotected
        f.close()
        raise WorkdirError(f"cannot lock workdir {path}: {_reason(e)}") from None
    started = datetime.datetime.now().isoformat(timespec="seconds")
    try:
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}, since {started}\n")
        f.flush()
    except OSError as e:  # a full disk at start: the machine's failure, named with the file
        fcntl.flock(f, fcntl.LOCK_UN)
        try:
            f.close()  # (flushes again, and fails again)
        except OSError:
            pass
        raise OSError(e.errno, e.strerror, str(key / lock_file)) from None
    _held[key] = [f, 1]
    try:
        yield Path(path)
    finally:
        _held[key][1] -= 1
        if _held[key][1] == 0:
            del _held[key]
            f.truncate(0)
            fcntl.flock(f, fcntl.LOCK_UN)
            f.close()
