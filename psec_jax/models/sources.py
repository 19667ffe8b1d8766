"""Corpus sources for the language model: which files make each split, as (identifier, bytes) pairs.

Nothing is downloaded; every source reads what this interpreter has installed.

- "stdlib": every `*.py` file of the interpreter's standard library, without site-/dist-packages and
  test suites (any path part `test`, `tests`, `idle_test`); the identifier is the path relative to
  the stdlib root. No deduplication. ~12 MB on CPython 3.11.
- "packages": the `*.py` files of the distributions in `PACKAGES` (every one pinned in
  constraints.txt, so `make install` puts them in .venv), as their `RECORD` (`dist.files`) lists
  them. Left out: test suites (a path part in `test`, `tests`, `testing`, `_tests`, `idle_test`, or a
  file named `test_*.py`, `*_test.py`, `conftest.py`), vendored copies (a path part such as `_vendor`,
  `vendored` or `third_party`) and files outside the install root (scripts). The identifier is
  `"{distribution}/{path in RECORD}"`. Files whose bytes are equal after normalising line endings are
  kept once, under the first identifier in sorted order. ~92 MB in ~5200 files with the pinned versions
  (160 copies dropped), ~33 M tokens at vocabulary 2048.

In both sources a file is validation iff `int(sha256(identifier).hexdigest(), 16) % 20 == 0` (~5%),
so the split is by file and depends on the identifier alone.

The held-out "other" text is not Python: the long descriptions (README text of the `METADATA` file)
of the `PACKAGES` distributions, one document per distribution, whatever the training source, so an
evaluation on it compares models trained on either source.

A source depends on the installed versions; `Listing.versions` records them. Another set of versions
gives other files and another checksum, which a build records.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import os
import sysconfig
import tokenize
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path, PurePosixPath
from typing import NamedTuple

SOURCES = ("stdlib", "packages")
SPLITS = ("train", "val")  # the splits of a source; "other" comes from `other_files`
# Installed by `make install` (the package and its `dev` extra, at the versions pinned in constraints.txt;
# a test checks that a fresh install has every one), with pure Python source of their own (jaxlib's
# Python is generated MLIR bindings, so it is left out).
PACKAGES = (
    "absl-py",
    "arch",
    "brax",
    "etils",
    "flax",
    "fonttools",
    "h5py",
    "huggingface_hub",
    "hypothesis",
    "ipython",
    "jax",
    "jaxopt",
    "jedi",
    "matplotlib",
    "ml_collections",
    "mujoco-mjx",
    "numpy",
    "optax",
    "orbax-checkpoint",
    "pandas",
    "parso",
    "patsy",
    "pillow",
    "prompt_toolkit",
    "pygments",
    "pytest",
    "rich",
    "scipy",
    "seaborn",
    "statsmodels",
    "tqdm",
    "trimesh",
    "warp-lang",
)
_STDLIB_EXCLUDED = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test"})
_TEST_PARTS = frozenset({"test", "tests", "testing", "_tests", "idle_test"})
_VENDORED_PARTS = frozenset(
    {"_vendor", "vendor", "_vendored", "vendored", "third_party", "_third_party", "extern", "_extern", "externals"}
)


class MissingDistributionError(ValueError):
    """A distribution a source needs is not installed (the message names it and how to install it)."""


class Listing(NamedTuple):
    """The files of a source, split and deduplicated."""

    splits: dict[str, list[tuple[str, bytes]]]  # split -> (identifier, raw bytes), sorted by identifier
    duplicates: dict[str, int]  # split -> files dropped as copies of an earlier identifier (by their own id)
    versions: dict[str, str]  # distribution -> installed version ({} for the stdlib)


class Split(NamedTuple):
    """The files of one split as a build takes them."""

    paths: list[str]  # identifiers, sorted
    texts: list[str]  # decoded texts
    num_bytes: int  # raw bytes
    checksum: str  # sha256 over the sorted "identifier sha256" lines
    duplicates: int = 0  # files of the split dropped as copies of another


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def is_validation(identifier: str) -> bool:
    """The split rule: validation iff sha256 of the identifier is 0 mod 20 (~5%)."""
    return int(sha256_hex(identifier.encode()), 16) % 20 == 0


# --- stdlib ------------------------------------------------------------------------------------


def stdlib_root() -> Path:
    """The directory of this interpreter's standard library."""
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(root: str | os.PathLike | None = None) -> list[Path]:
    """Every `*.py` file under `root` (default: the stdlib) outside site-/dist-packages and test
    suites, sorted by path relative to `root`."""
    root = Path(root) if root is not None else stdlib_root()
    files = []
    for folder, subfolders, names in os.walk(root):  # pruned: site-packages alone can be ~1 GB
        subfolders[:] = [d for d in subfolders if d not in _STDLIB_EXCLUDED]
        files += [Path(folder) / n for n in names if n.endswith(".py") and (Path(folder) / n).is_file()]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


# --- installed distributions -------------------------------------------------------------------


def distribution(name: str, path: Sequence[str] | None = None) -> importlib.metadata.Distribution:
    """The installed distribution `name`, found on `path` (default `sys.path`) as `import` would.

    Raises:
      MissingDistributionError: it is not installed.
    """
    where = {} if path is None else {"path": list(path)}  # Context(path=None) would not search sys.path
    found = next(iter(importlib.metadata.distributions(name=name, **where)), None)
    if found is None:
        raise MissingDistributionError(
            f"the corpus needs the distribution {name!r}, which is not installed: "
            f"run `make install` (or `.venv/bin/pip install --constraint constraints.txt {name}`)"
        )
    return found


def is_library_source(relative_path: str) -> bool:
    """Whether a path in a distribution's RECORD is library Python: a `*.py` file inside the install
    root, outside test suites and vendored copies."""
    p = PurePosixPath(relative_path)
    parts = set(p.parts[:-1])
    return (
        p.suffix == ".py"
        and not p.is_absolute()
        and ".." not in p.parts
        and not parts & (_TEST_PARTS | _VENDORED_PARTS)
        and not (p.name.startswith("test_") or p.name.endswith("_test.py") or p.name == "conftest.py")
    )


def package_files(
    names: Iterable[str] | None = None, path: Sequence[str] | None = None
) -> tuple[list[tuple[str, Path]], dict[str, str]]:
    """The library `*.py` files of the distributions `names` (default `PACKAGES`; see
    `is_library_source`), unread.

    Returns:
      files: (identifier "{name}/{path in RECORD}", location on disk), sorted by identifier.
      versions: name -> installed version.
    """
    files, versions = [], {}
    for name in PACKAGES if names is None else names:
        dist = distribution(name, path)
        versions[name] = dist.version
        if dist.files is None:
            raise MissingDistributionError(f"the distribution {name!r} lists no files (no RECORD); reinstall it")
        files += [(f"{name}/{f}", Path(dist.locate_file(f))) for f in dist.files if is_library_source(str(f))]
    return sorted(files), versions


def deduplicate(files: Iterable[tuple[str, bytes]]) -> tuple[list[tuple[str, bytes]], list[str]]:
    """Keep one file per content: files whose bytes are equal once `\\r\\n` and `\\r` become `\\n`
    keep the first identifier in sorted order.

    Returns:
      kept: (identifier, bytes) sorted by identifier.
      dropped: identifiers of the copies left out, sorted.
    """
    kept, dropped, seen = [], [], set()
    for identifier, raw in sorted(files):
        digest = sha256_hex(raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n"))
        if digest in seen:
            dropped.append(identifier)
        else:
            seen.add(digest)
            kept.append((identifier, raw))
    return kept, dropped


def _split(files: list[tuple[str, bytes]], dropped: list[str], versions: dict[str, str]) -> Listing:
    splits: dict[str, list[tuple[str, bytes]]] = {s: [] for s in SPLITS}
    for identifier, raw in files:
        splits["val" if is_validation(identifier) else "train"].append((identifier, raw))
    duplicates = {s: sum(("val" if is_validation(i) else "train") == s for i in dropped) for s in SPLITS}
    return Listing(splits, duplicates, versions)


def listing(source: str, names: Iterable[str] | None = None, path: Sequence[str] | None = None) -> Listing:
    """The train and val files of `source` (one of `SOURCES`), read whole.

    Args:
      source: "stdlib" or "packages".
      names, path: for "packages", the distributions (default `PACKAGES`) and where to look for them
        (default `sys.path`).
    """
    if source == "stdlib":
        root = stdlib_root()
        files = [(p.relative_to(root).as_posix(), p.read_bytes()) for p in stdlib_files(root)]
        return _split(files, [], {})
    if source == "packages":
        located, versions = package_files(names, path)
        kept, dropped = deduplicate((identifier, p.read_bytes()) for identifier, p in located)
        return _split(kept, dropped, versions)
    raise ValueError(f"source must be one of {SOURCES}, got {source!r}")


# --- other text --------------------------------------------------------------------------------


def long_description(dist: importlib.metadata.Distribution) -> str:
    """The long description of an installed distribution: the body of its METADATA file (metadata
    2.1+), else its `Description` field; "" if it has none."""
    raw = (dist.read_text("METADATA") or dist.read_text("PKG-INFO") or "").replace("\r\n", "\n")
    body = raw.split("\n\n", 1)[1] if "\n\n" in raw else ""
    return body if body.strip() else (dist.metadata.get("Description") or "")


def other_files(names: Iterable[str] | None = None, path: Sequence[str] | None = None) -> Listing:
    """The held-out non-Python text: one document "{name}/METADATA" per distribution (default
    `PACKAGES`) with a long description, deduplicated as code is; `Listing.splits` has the one split
    "other"."""
    docs, versions = [], {}
    for name in PACKAGES if names is None else names:
        dist = distribution(name, path)
        versions[name] = dist.version
        if text := long_description(dist):
            docs.append((f"{name}/METADATA", text.encode()))
    kept, dropped = deduplicate(docs)
    return Listing({"other": kept}, {"other": len(dropped)}, versions)


# --- what a build takes ------------------------------------------------------------------------


def prefix(files: list[tuple[str, bytes]], max_bytes: int | None) -> list[tuple[str, bytes]]:
    """The first `files` totalling at most `max_bytes` bytes (all of them for None), stopping at the
    first that does not fit, so a larger cap only adds files."""
    total = 0
    for n, (_, raw) in enumerate(files):
        total += len(raw)
        if max_bytes is not None and total > max_bytes:
            return files[:n]
    return files


def decode_source(raw: bytes) -> str:
    """A Python file's text, in the encoding its coding cookie names (utf-8 without one)."""
    return raw.decode(tokenize.detect_encoding(io.BytesIO(raw).readline)[0])


def take(listing: Listing, max_bytes: int | None, decode: Callable[[bytes], str] = decode_source) -> dict[str, Split]:
    """Each split of `listing` cut to its first files totalling at most `max_bytes` (`prefix`), decoded."""
    out = {}
    for split, files in listing.splits.items():
        chosen = prefix(files, max_bytes)
        lines = "".join(f"{identifier} {sha256_hex(raw)}\n" for identifier, raw in chosen)
        out[split] = Split(
            [identifier for identifier, _ in chosen],
            [decode(raw) for _, raw in chosen],
            sum(len(raw) for _, raw in chosen),
            sha256_hex(lines.encode()),
            listing.duplicates[split],
        )
    return out


def sample(split: Split, max_bytes: int) -> list[str]:
    """A deterministic subset of a split's texts totalling at most `max_bytes` (UTF-8): all of them if
    they fit, else files in sha256(identifier) order (an even sample of every distribution) while they
    fit, returned in sorted order."""
    if split.num_bytes <= max_bytes:
        return split.texts
    sizes = [len(t.encode()) for t in split.texts]
    total, keep = 0, set()
    for i in sorted(range(len(split.paths)), key=lambda i: sha256_hex(split.paths[i].encode())):
        if total + sizes[i] <= max_bytes:
            keep.add(i)
            total += sizes[i]
    return [t for i, t in enumerate(split.texts) if i in keep]


def line_overlap(train: Iterable[bytes], val: Iterable[bytes], min_chars: int = 20) -> dict[str, float]:
    """How much of the validation text the train text already holds, line by line: of the validation
    lines at least `min_chars` long once stripped (shorter ones, `return x`, `)`, repeat everywhere), the
    share (by bytes and by count) that occur verbatim, stripped, in a train file. Exact deduplication
    keeps templated or generated near-copies (round one found 12.6% of stdlib validation bytes in codec
    tables): this says how many remain. Returns {"lines", "bytes", "line_share", "byte_share"}."""
    seen = {line.strip() for raw in train for line in raw.splitlines() if len(line.strip()) >= min_chars}
    lines = shared = total = shared_bytes = 0
    for raw in val:
        for line in raw.splitlines():
            s = line.strip()
            if len(s) < min_chars:
                continue
            lines, total = lines + 1, total + len(s)
            if s in seen:
                shared, shared_bytes = shared + 1, shared_bytes + len(s)
    return {
        "lines": lines,
        "bytes": total,
        "line_share": shared / max(lines, 1),
        "byte_share": shared_bytes / max(total, 1),
    }
