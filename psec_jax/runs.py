"""What every run writes into its workdir, and how it reports progress.

Layout of a workdir::

    config.json        the resolved config (after command-line overrides)
    metrics.jsonl      one JSON object per logging step: {"step", "wall_time", <metric>: value, ...}
    summary.json       the final summary (also printed as a table)
    checkpoints/       Orbax checkpoints (see psec_jax.checkpoint)
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import ml_collections
import numpy as np
from tqdm.auto import tqdm

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"


def to_jsonable(value: Any) -> Any:
    """Converts arrays (numpy or jax), numpy scalars, ConfigDicts and tuples into plain JSON values."""
    if isinstance(value, (ml_collections.ConfigDict, ml_collections.FrozenConfigDict)):
        return to_jsonable(value.to_dict())
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, (str, bool, int, float)) or value is None:
        return value
    if hasattr(value, "__array__") or isinstance(value, np.generic):
        arr = np.asarray(value)
        if arr.dtype.kind in "fc" and arr.dtype.itemsize < 4:
            arr = arr.astype(np.float32)
        return arr.item() if arr.ndim == 0 else arr.tolist()
    return str(value)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Writes ``obj`` as indented JSON via a temporary file and rename, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(to_jsonable(obj), indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


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


class MetricsWriter:
    """Appends one JSON line per call to ``workdir/metrics.jsonl``; flushed on every write.

    Appending (not truncating) means a resumed run continues the same file.
    """

    def __init__(self, workdir: str | os.PathLike, filename: str = METRICS_FILE):
        self.path = Path(workdir) / filename
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")

    def write(self, step: int, metrics: Mapping[str, Any]) -> dict[str, Any]:
        """Writes ``{"step": step, "wall_time": unix seconds, **metrics}`` and returns that record."""
        record = {"step": int(step), "wall_time": time.time(), **to_jsonable(dict(metrics))}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        return record

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "MetricsWriter":
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
                    raise ValueError(f"{path}:{lineno} is not valid JSON: {e}") from e
    return records


def progress(total: int, desc: str = "", initial: int = 0, unit: str = "step") -> tqdm:
    """A progress bar on stderr for long loops; silent when stderr is not a terminal (CI, logs)."""
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=None, dynamic_ncols=True)


def _fmt(value: Any, floatfmt: str) -> str:
    if isinstance(value, (float, np.floating)):
        return "nan" if math.isnan(value) else format(float(value), floatfmt)
    return str(value)


def format_table(
    rows: Sequence[Mapping[str, Any]], columns: Iterable[str] | None = None, floatfmt: str = ".4g"
) -> str:
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
    write_json_atomic(Path(workdir) / SUMMARY_FILE, summary)
    flat = to_jsonable(dict(summary))
    return format_table([{"metric": k, "value": v} for k, v in flat.items()], floatfmt=floatfmt)
