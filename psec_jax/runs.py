"""What every run writes into its workdir, and how it reports progress.

Layout of a workdir::

    config.json        the resolved config (after command-line overrides)
    metrics.jsonl      one JSON object per logging step: {"step", "wall_time", <metric>: value, ...}
    summary.json       the final summary (also printed as a table)
    checkpoints/       Orbax checkpoints (see psec_jax.checkpoint)
    tensorboard/       TensorBoard event files of the same metrics (runs that ask for them)
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from psec_jax import signals
from psec_jax.progress import Progress

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"


def one_line(e: BaseException, limit: int = 300, with_type: bool = True) -> str:
    """``Type: first line of the message`` (Orbax, TensorStore and absl errors run to many lines)."""
    lines = str(e).strip().splitlines()
    text = lines[0].strip() if lines else ""
    text = text if len(text) <= limit else text[:limit] + "..."
    text += " [...]" if len(lines) > 1 else ""
    return f"{type(e).__name__}: {text}" if with_type else text


def _finite_or_none(x: Any) -> Any:
    return None if isinstance(x, float) and not math.isfinite(x) else x


def to_jsonable(value: Any) -> Any:
    """Converts arrays (numpy or jax), numpy scalars, ConfigDicts and tuples into plain JSON values.

    NaN and +-Inf become None (JSON null): JSON has no NaN, and strict readers reject the ``NaN`` token
    Python would otherwise write."""
    if isinstance(value, (ml_collections.ConfigDict, ml_collections.FrozenConfigDict)):
        return to_jsonable(value.to_dict())
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, (str, bool, int, float)) or value is None:
        return _finite_or_none(value)
    if hasattr(value, "__array__") or isinstance(value, np.generic):
        arr = np.asarray(value)
        if arr.dtype.kind in "fc" and arr.dtype.itemsize < 4:
            arr = arr.astype(np.float32)
        if arr.ndim == 0:
            return _finite_or_none(arr.item())
        return to_jsonable(arr.tolist()) if arr.dtype.kind in "fc" else arr.tolist()
    return str(value)


def git_commit() -> str:
    """The psec_jax checkout's HEAD commit (with "-dirty" when tracked files are modified), or
    "unknown" outside a git checkout: what results files record about the code that made them."""
    import subprocess

    try:
        root = Path(__file__).resolve().parents[1]
        run = lambda *a: subprocess.run(["git", *a], cwd=root, capture_output=True, text=True, check=True).stdout
        return run("rev-parse", "HEAD").strip() + (
            "-dirty" if run("status", "--porcelain", "--untracked-files=no").strip() else ""
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def dumps(obj: Any, **kwargs: Any) -> str:
    """``json.dumps(to_jsonable(obj))`` that can never write a bare NaN or Infinity."""
    return json.dumps(to_jsonable(obj), allow_nan=False, **kwargs)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Writes ``obj`` as indented JSON via a temporary file and rename, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = dumps(obj, indent=2, sort_keys=True) + "\n"
    replace_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return path


def replace_atomic(path: Path, write: Callable[[Path], Any]) -> None:
    """``write(tmp)`` into a temporary sibling of ``path``, then a rename onto ``path``: readers see the
    old file or the new one, and a failed write (full disk, file-size limit) leaves the old file and no
    temporary."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_config(workdir: str | os.PathLike, config: ml_collections.ConfigDict) -> Path:
    """Writes the resolved config to ``workdir/config.json`` and returns the path."""
    return write_json_atomic(Path(workdir) / CONFIG_FILE, config)


def load_config(path: str | os.PathLike) -> ml_collections.ConfigDict:
    """Reads a config written by ``save_config`` (a workdir or the JSON file itself)."""
    path = Path(path)
    if path.is_dir():
        path = path / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no config file at {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"config file {path} is not valid JSON: {e}") from e
    return ml_collections.ConfigDict(data)


class MetricsError(ValueError):
    """A metrics file has an unreadable line that is not a torn last line (the message names it)."""


TENSORBOARD_DIR = "tensorboard"


def metrics_record(step: int, metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The record of one logged chunk: ``{"step": step, "wall_time": unix seconds, **metrics}`` (JSON-able)."""
    return {"step": int(step), "wall_time": time.time(), **to_jsonable(dict(metrics))}


class MetricsWriter:
    """Appends one JSON line per call to ``workdir/metrics.jsonl``; flushed on every write.

    Appending (not truncating) means a resumed run continues the same file. With
    ``tensorboard_from=step`` every numeric metric also goes to TensorBoard event files in
    ``workdir/tensorboard`` (tensorboardX); events past ``step`` left by an earlier, killed session
    are purged by TensorBoard, as the replayed lines are dropped from metrics.jsonl.
    """

    def __init__(self, workdir: str | os.PathLike, filename: str = METRICS_FILE, tensorboard_from: int | None = None):
        self.path = Path(workdir) / filename
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")
        self._tb = None
        if tensorboard_from is not None:
            from tensorboardX import SummaryWriter  # only runs that ask for TensorBoard import it

            self._tb = SummaryWriter(
                str(Path(workdir) / TENSORBOARD_DIR), purge_step=int(tensorboard_from) + 1, flush_secs=10
            )

    def write(self, step: int, metrics: Mapping[str, Any]) -> dict[str, Any]:
        """Writes ``{"step": step, "wall_time": unix seconds, **metrics}`` and returns that record."""
        record = metrics_record(step, metrics)
        self._file.write(dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for name, value in record.items():
                if (
                    name not in ("step", "wall_time")
                    and isinstance(value, (int, float))
                    and not isinstance(value, bool)
                ):
                    self._tb.add_scalar(name, value, int(step), walltime=record["wall_time"])
        return record

    def close(self) -> None:
        """Closes the file and flushes the TensorBoard events (a signal meanwhile is held, not lost)."""
        with signals.deferred(raise_at_exit=False):
            self._file.close()
            if self._tb is not None:
                self._tb.close()

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Reads a metrics JSONL file (or a workdir's ``metrics.jsonl``) into a list of records."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    records = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise MetricsError(f"{path}:{lineno} is not valid JSON: {e}") from e
    return records


def rewind_metrics(workdir: str | os.PathLike, last_step: int, filename: str = METRICS_FILE) -> list[dict]:
    """Keeps only the records of ``workdir/metrics.jsonl`` up to ``last_step``; returns them.

    A run that resumes from the checkpoint at ``last_step`` replays the steps after it: their earlier
    records (written before a crash or kill) are dropped so that every step appears once. A torn final
    line (the process died while writing it) is dropped too; any other unreadable line is an error.
    The file is rewritten atomically.
    """
    path = Path(workdir) / filename
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept, records = [], []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            if lineno == len(lines) and not line.endswith("\n"):
                break  # torn by a kill mid-write
            raise MetricsError(f"{path}:{lineno} is not valid JSON: {e}") from e
        if record.get("step", 0) <= last_step:
            kept.append(line if line.endswith("\n") else line + "\n")
            records.append(record)
    if len(kept) != len(lines):
        replace_atomic(path, lambda tmp: tmp.write_text("".join(kept), encoding="utf-8"))
    return records


def progress(total: int, desc: str = "", initial: int = 0, unit: str = "step", disable: bool = False):
    """Progress on stderr for long loops (``psec_jax.progress.Progress``): a bar on a terminal, one
    flushed line per update (at most one a second) in a log file; nothing when ``disable`` (every
    process of a multi-process run but the first)."""
    return Progress(total, desc=desc, initial=initial, unit=unit, disable=disable)


def _fmt(value: Any, floatfmt: str) -> str:
    if isinstance(value, (float, np.floating)):
        return "nan" if math.isnan(value) else format(float(value), floatfmt)
    return str(value)


def format_table(rows: Sequence[Mapping[str, Any]], columns: Iterable[str] | None = None, floatfmt: str = ".4g") -> str:
    """A Markdown table of ``rows`` (dicts); ``columns`` defaults to the keys in order of appearance."""
    if columns is None:
        columns = list(dict.fromkeys(k for row in rows for k in row))
    columns = list(columns)
    cells = [[_fmt(row.get(c, ""), floatfmt) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    line = lambda vals: "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(columns), sep] + [line(r) for r in cells])


def write_summary(workdir: str | os.PathLike, summary: Mapping[str, Any], floatfmt: str = ".4g") -> str:
    """Writes ``summary.json`` and returns the summary as a two-column table for printing."""
    write_json_atomic(Path(workdir) / SUMMARY_FILE, summary)  # NaN -> null there; the table shows nan
    scalar = lambda v: np.asarray(v).item() if np.ndim(v) == 0 and not isinstance(v, str) else to_jsonable(v)
    return format_table([{"metric": k, "value": scalar(v)} for k, v in summary.items()], floatfmt=floatfmt)
