"""Failures of the machine a run uses (disk, file size, permissions, memory) told in one line.

problem = failures.environment_failure(error)   # None for an error that is not the machine's
logging.getLogger("absl").addFilter(failures.OrbaxErrorsReported())
"""

from __future__ import annotations

import errno
import logging

ENVIRONMENT_ERRNOS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large (a file-size limit: ulimit -f)",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.EIO: "input/output error",
    errno.EMFILE: "too many open files (ulimit -n)",
    errno.ENFILE: "too many open files on the system",
    errno.ENOMEM: "out of memory",
}


def environment_failure(e: BaseException) -> str | None:
    """One line for a failure of the machine a run writes to or runs on (an OSError of ``ENVIRONMENT_ERRNOS``,
    MemoryError, XLA's RESOURCE_EXHAUSTED), naming the file where there is one; None for other errors."""
    if isinstance(e, MemoryError):
        return "out of memory (MemoryError); use a smaller batch or model, or a machine with more memory"
    if "RESOURCE_EXHAUSTED" in str(e):  # XLA's out-of-memory, a runtime error of its own type
        return f"out of memory: {' '.join(str(e).split())[:300]}"
    if not isinstance(e, OSError):
        return None
    what = ENVIRONMENT_ERRNOS.get(e.errno)
    if what is None:
        return None
    where = " -> ".join(str(f) for f in (e.filename, getattr(e, "filename2", None)) if f)
    return f"{what}{f': {where}' if where else ''}"


class OrbaxErrorsReported(logging.Filter):
    """Drops Orbax's logged tracebacks: every failed save reaches the run as an exception that the CLI
    reports in one line (a full disk otherwise prints 300-400 lines of them)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno >= logging.ERROR and "orbax" in record.pathname)
