"""Self-checking artifact directories: an Orbax array tree plus a JSON manifest.

    <dir>/arrays/              Orbax StandardCheckpointer save of a nested dict of arrays
    <dir>/<manifest>           JSON: caller's metadata (with a "format"), array shapes/dtypes, sha256 of
                               every file under arrays/
    <dir>/<manifest>.sha256    sha256 of the manifest itself (`sha256sum -c` format), so an edited
                               value in the metadata is caught like a flipped bit in the arrays

`save_tree` writes to a temporary sibling and swaps it into place in one atomic rename (Linux
`renameat2` exchange; two renames elsewhere), so a failed or killed save never leaves less than the
previous artifact. It replaces only an artifact of the same kind that it wrote: a file, a directory
of someone else's files, or an artifact with extra files in it is refused, never deleted. `load_tree`
verifies every checksum before reading and rebuilds the arrays from the manifest alone. Skill
libraries, behaviour policies, pretrained policies and composers are stored this way.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

ARRAYS_DIR = "arrays"


class ArtifactError(RuntimeError):
    """A missing, incomplete or corrupt artifact directory (the message names the file)."""


def sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def record_files(root: Path, skip: Callable[[str], bool] = lambda name: False) -> dict[str, dict]:
    """``{path relative to root: {"sha256", "bytes"}}`` of every file below ``root`` whose name
    ``skip`` does not exclude."""
    return {
        str(f.relative_to(root)): {"sha256": sha256(f), "bytes": f.stat().st_size}
        for f in sorted(root.rglob("*"))
        if f.is_file() and not skip(f.name)
    }


def check_files(root: Path, record: Any) -> str | None:
    """None when every file of ``record`` (from ``record_files``; a bare sha256 string per file is
    accepted too) is below ``root`` with its size and checksum; else the first problem, naming the file."""
    if not isinstance(record, dict):
        return "the checksum record is unreadable"
    for rel, want in record.items():
        want = {"sha256": want} if isinstance(want, str) else want
        if not isinstance(want, dict) or not isinstance(want.get("sha256"), str):
            return f"the checksum record of {rel} is unreadable"
        f = root / rel
        if not f.is_file():
            return f"missing file {rel}"
        size = f.stat().st_size
        if want.get("bytes", size) != size:
            return f"truncated or changed file {rel} ({size} bytes, {want['bytes']} were saved)"
        if sha256(f) != want["sha256"]:
            return f"checksum mismatch in {rel}"
    return None


def _exchange(a: Path, b: Path) -> bool:
    """Swaps two directories in one atomic step (Linux renameat2 RENAME_EXCHANGE); False where the
    system or filesystem cannot."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _shapes(tree: Any) -> Any:
    return jax.tree.map(lambda x: {"shape": list(np.shape(x)), "dtype": str(np.asarray(x).dtype)}, tree)


def _abstract(shapes: Any) -> Any:
    def is_leaf(x: Any) -> bool:
        return isinstance(x, dict) and set(x) == {"shape", "dtype"}

    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(tuple(s["shape"]), s["dtype"]), shapes, is_leaf=is_leaf)


def _sidecar(manifest: str) -> str:
    return manifest + ".sha256"


def _kind(fmt: Any) -> str:
    """A format without its version: ``psec_jax.skill_library/2`` -> ``psec_jax.skill_library``."""
    return re.sub(r"(/|\.v)\d+$", "", str(fmt))


def _check_replaceable(directory: Path, manifest: str, fmt: Any, error: type[Exception]) -> None:
    """Raises ``error`` unless ``directory`` is absent, empty, or an artifact of kind ``fmt`` holding
    only its own files: anything else at that path belongs to someone and must not be deleted."""
    if not directory.exists() and not directory.is_symlink():
        return
    if not directory.is_dir() or directory.is_symlink():
        raise error(f"refusing to save to {directory}: it is a file, not a saved artifact")
    present = {str(f.relative_to(directory)) for f in directory.rglob("*") if not f.is_dir()}
    if not present:
        return
    what = _kind(fmt).removeprefix("psec_jax.").replace("_", " ") if fmt else "artifact"
    try:
        meta = json.loads((directory / manifest).read_text())
        ours = set(meta["files"]) | {manifest, _sidecar(manifest)}
        same_kind = _kind(meta.get("format")) == _kind(fmt)
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise error(
            f"refusing to replace {directory}: it is not a {what} saved by psec_jax "
            f"(no readable {manifest}); choose another path or move it away"
        ) from None
    if not same_kind:
        other = _kind(meta.get("format")).removeprefix("psec_jax.").replace("_", " ")
        raise error(f"refusing to replace {directory}: it holds a {other}, not a {what}")
    foreign = sorted(present - ours)
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise error(
            f"refusing to replace {directory}: it holds {shown}, which the saved {what} does not "
            f"include; move them away first"
        )


def save_tree(
    directory: str | os.PathLike,
    tree: Any,
    meta: Mapping[str, Any],
    *,
    manifest: str = "manifest.json",
    error: type[Exception] = ArtifactError,
) -> Path:
    """Write `tree` (nested dicts of arrays) and `meta` (JSON-able) to `directory`, atomically.

    An existing artifact of the same kind (``meta["format"]``) is replaced; anything else at
    ``directory`` is refused with ``error``."""
    directory = Path(directory).absolute()
    _check_replaceable(directory, manifest, meta.get("format"), error)
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise error(f"could not save {directory}: {e.strerror or e}") from None
    tmp = directory.with_name(f".{directory.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(tmp / ARRAYS_DIR, tree)
            ckptr.wait_until_finished()
        full = dict(meta)
        full["array_shapes"] = _shapes(tree)
        full["files"] = record_files(tmp)
        (tmp / manifest).write_text(json.dumps(full, indent=1, default=str))
        (tmp / _sidecar(manifest)).write_text(f"{sha256(tmp / manifest)}  {manifest}\n")
        if not directory.exists():
            os.replace(tmp, directory)
        elif not _exchange(tmp, directory):  # then tmp holds the previous artifact, removed below
            old = directory.with_name(f".{directory.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(directory, old)  # no atomic swap here: a kill between the renames leaves `old`
            try:
                os.replace(tmp, directory)
            except BaseException:
                os.replace(old, directory)  # put the previous artifact back
                raise
            shutil.rmtree(old, ignore_errors=True)
    except error:
        raise
    except Exception as e:
        raise error(f"could not save {directory}: {type(e).__name__}: {e}") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


def read_manifest(
    directory: str | os.PathLike, *, manifest: str = "manifest.json", error: type[Exception] = ArtifactError
) -> dict[str, Any]:
    """The manifest of an artifact directory, after checking every file against its sha256."""
    directory = Path(directory)
    path = directory / manifest
    if not path.is_file():
        raise error(f"nothing saved at {directory} (missing {manifest})")
    side = directory / _sidecar(manifest)
    if not side.is_file():
        raise error(
            f"{directory} has no {side.name} (the checksum of {manifest}): it is incomplete, or was "
            f"saved by a psec_jax older than metadata checksums (re-create it with this version)"
        )
    if side.read_text().split()[:1] != [sha256(path)]:
        raise error(f"{path} was changed after it was saved (its checksum in {side.name} does not match)")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"corrupt manifest {path}: {e}") from None
    files = meta.get("files") if isinstance(meta, dict) else None
    if not isinstance(files, dict):
        raise error(f"malformed manifest {path}: no 'files' table")
    problem = check_files(directory, files)
    if problem:
        raise error(f"{directory} is corrupt: {problem}")
    return meta


def load_arrays(
    directory: str | os.PathLike, meta: Mapping[str, Any], *, error: type[Exception] = ArtifactError
) -> Any:
    """The array tree of an artifact whose manifest `meta` was read (and checked) already."""
    directory = Path(directory)
    try:
        with ocp.StandardCheckpointer() as ckptr:
            return ckptr.restore((directory / ARRAYS_DIR).absolute(), _abstract(meta["array_shapes"]))
    except Exception as e:
        raise error(f"could not read the arrays of {directory}: {type(e).__name__}: {e}") from e


def load_tree(
    directory: str | os.PathLike, *, manifest: str = "manifest.json", error: type[Exception] = ArtifactError
) -> tuple[Any, dict[str, Any]]:
    """Read an artifact written by `save_tree`. Returns (tree of arrays, manifest)."""
    meta = read_manifest(directory, manifest=manifest, error=error)
    return load_arrays(directory, meta, error=error), meta
