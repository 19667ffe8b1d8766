"""Orbax checkpoints that carry their config and verify their own bytes.

Each step directory holds two Orbax items, ``state`` (the array pytree) and ``config`` (the resolved
ml-collections config as JSON), plus ``psec_checksums.json``: the sha256 and size of every file of the
step. It is written in Orbax's save thread after the files are final and before the rename that
commits the step, so every committed step carries the checksums of its data; the two step-level files
Orbax writes at the commit itself (its step metadata) are added when the next save or ``wait`` sees the
commit. Restores check every file first, so a flipped bit or a truncated file is reported by name
instead of restoring wrong numbers::

    ckpts = Checkpoints(workdir / "checkpoints", max_to_keep=3)
    ckpts.save(step, state, config)               # async
    step = ckpts.resume_step(report=print)        # newest intact step; broken newer ones moved aside
    state, config = ckpts.restore(step, target=state)   # target: a concrete or abstract tree
    config = Checkpoints.read_config(directory)   # no arrays needed

A broken step is never deleted: ``resume_step`` moves it to ``<directory>/rejected/<step>``. Orbax
takes every directory with a number for a name as a step, and retention deletes old steps: a numbered
directory that psec_jax did not write (a user's ``checkpoints/1/`` of notes) is refused when the
directory is opened, so it is neither deleted nor mistaken for the newest step.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from psec_jax import artifacts, signals
from psec_jax.runs import one_line, to_jsonable

_ITEMS = ("state", "config")
CHECKSUM_FILE = "psec_checksums.json"
REJECTED_DIR = "rejected"
_SKIP = "psec_checksums"  # file names starting with it are the record itself (and its temporary file)
_AT_COMMIT = ("_CHECKPOINT_METADATA", "commit_success.txt")  # step-level files Orbax (re)writes at commit


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated, corrupt or does not match the requested structure."""


def _failure(e: BaseException) -> str:
    """One line for a failed Orbax save or restore; TensorStore buries the OS error at the end of a
    long message (``... [os_error_code='28']``), so it is named first."""
    code = re.search(r"os_error_code='(\d+)'", str(e))
    if code is None:
        return one_line(e)
    path = re.search(r'Failed writing: "([^"]+)"', str(e))
    return os.strerror(int(code.group(1))) + (f" (writing {path.group(1)})" if path else f": {one_line(e)}")


def _abstract(tree: Any) -> Any:
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def _is_empty(x: Any) -> bool:
    return getattr(x, "size", None) == 0 and hasattr(x, "dtype")


def _fill_empty(tree: Any) -> Any:
    """Zero-size arrays (e.g. MJX's ``data.act`` of a body without actuator state) as one-element
    placeholders: Orbax cannot save an array with no elements."""
    return jax.tree.map(lambda x: np.zeros((1,), x.dtype) if _is_empty(x) else x, tree)


def _abstract_target(target: Any) -> Any:
    """``target``'s abstract tree, its zero-size leaves as the placeholders `_fill_empty` saved."""
    return _abstract(jax.tree.map(lambda x: jax.ShapeDtypeStruct((1,), x.dtype) if _is_empty(x) else x, target))


def _restore_empty(restored: Any, target: Any) -> Any:
    """The restored tree with ``target``'s zero-size leaves put back in place of their placeholders."""
    return jax.tree.map(lambda r, t: jnp.zeros(t.shape, t.dtype) if _is_empty(t) else r, restored, target)


class Checkpoints:
    """A directory of verified step checkpoints, each holding ``state`` and ``config``."""

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        max_to_keep: int | None = 3,
        save_interval_steps: int = 1,
        create: bool = True,
        cleanup_tmp: bool = False,
    ):
        """``cleanup_tmp`` removes the half-written saves of a killed run: only for the one process
        that owns the directory (the training loop, holding the workdir lock), never for a reader,
        whose cleanup would delete the save a running run is writing."""
        self.directory = Path(directory).absolute()
        if not create and not self.directory.is_dir():
            raise CheckpointError(f"checkpoint directory {self.directory} does not exist")
        self._cleanup_tmp = cleanup_tmp
        foreign = self._foreign_entries()
        if foreign:
            raise CheckpointError(
                f"{self.directory / foreign[0]} is not a checkpoint psec_jax wrote (no Orbax metadata, no "
                f"{CHECKSUM_FILE}); move it out of {self.directory}: old steps there are deleted"
            )
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            save_interval_steps=save_interval_steps,
            create=create,
            cleanup_tmp_directories=cleanup_tmp,
            async_options=ocp.AsyncOptions(post_finalization_callback=self._seal_uncommitted),
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=_ITEMS)
        self._lock = threading.Lock()
        self._pending: list[int] = []  # steps handed to Orbax whose checksums are not written yet
        self._failed = False  # a save failed (waiting on Orbax again after that prints tracebacks)

    def _foreign_entries(self) -> list[str]:
        """Names in the directory that Orbax would take for steps but that no save of ours made."""
        try:
            entries = sorted(self.directory.iterdir()) if self.directory.is_dir() else []
        except OSError:
            return []
        mine = ("_CHECKPOINT_METADATA", CHECKSUM_FILE, "state")
        return [
            e.name for e in entries if e.name.isdigit() and (not e.is_dir() or not any((e / n).exists() for n in mine))
        ]

    def discard_unfinished(self) -> None:
        """Removes the temporary directories of saves that failed (a full disk, a file-size limit), so
        a failure leaves nothing half-written; only for the directory's owner (``cleanup_tmp``)."""
        if not self._cleanup_tmp:
            return
        if not self._failed:  # a save still in flight is not unfinished yet
            try:
                self.wait()
            except CheckpointError:
                pass
        try:
            for tmp in self.directory.glob("*.orbax-checkpoint-tmp*"):
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            pass

    # ----- saving -----------------------------------------------------------------------------------
    def save(self, step: int, state: Any, config: ml_collections.ConfigDict | dict, *, force: bool = False) -> bool:
        """Saves ``state`` and ``config`` at ``step`` (asynchronously); returns whether a save started.

        ``force`` saves even when ``step`` is off the save interval (use it for the final step).
        Raises CheckpointError (one line) when the save cannot be started or the previous one failed.
        """
        state = _fill_empty(state)
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(to_jsonable(config)))
        self.wait()
        self._preflight(step, state)
        with self._lock:
            self._pending.append(int(step))  # before Orbax sees it: a Ctrl-C inside save() keeps it here
        try:
            return self._manager.save(int(step), args=args, force=force)
        except Exception as e:
            raise CheckpointError(f"could not save step {step} to {self.directory}: {_failure(e)}") from e

    def _preflight(self, step: int, state: Any) -> None:
        """CheckpointError (one line) when the step cannot fit: less free space than its bytes, or a
        file-size limit (``ulimit -f``) below them. Checked before Orbax starts writing, since a save that
        fails halfway leaves Orbax's threads printing tracebacks after the failure is reported."""
        leaves = jax.tree.leaves(state)
        sizes = [int(getattr(x, "nbytes", 0)) for x in leaves] or [0]
        need = sum(sizes) + 16_384 + 512 * len(leaves)  # + Orbax's metadata files
        largest = max(sizes) + 16_384  # the file-size limit is per file: the largest array must fit in one
        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        if limit != resource.RLIM_INFINITY and limit < largest:
            raise CheckpointError(
                f"could not save step {step} to {self.directory}: File too large: the "
                f"file-size limit (ulimit -f) of {limit} bytes is below the checkpoint's "
                f"~{largest}-byte files"
            )
        try:
            free = shutil.disk_usage(self.directory).free
        except OSError:
            return
        if free < need:
            raise CheckpointError(
                f"could not save step {step} to {self.directory}: No space left on device "
                f"(~{need / 2**20:.1f} MiB needed, {free / 2**20:.1f} MiB free)"
            )

    def _seal_uncommitted(self) -> None:
        """Orbax's post-finalization hook (its save thread): the step's files are final but still in
        ``<step>.orbax-checkpoint-tmp*``; record their checksums there, so the rename commits both.
        Orbax rewrites its step metadata at the commit: those files are added by ``wait``. In a
        multi-process run process 0 writes the record (Orbax has every process's files by then)."""
        if jax.process_index() != 0:
            return
        with self._lock:
            steps = list(self._pending)
        for step in steps:
            for step_dir in self.directory.glob(f"{step}.orbax-checkpoint-tmp*"):
                self._write_checksums(step, step_dir, skip=_AT_COMMIT)

    def _write_checksums(self, step: int, step_dir: Path, skip: tuple[str, ...] = ()) -> None:
        files = artifacts.record_files(step_dir, skip=lambda n: n.startswith(_SKIP))
        record = {"step": step, "files": {k: v for k, v in files.items() if k not in skip}}
        tmp = step_dir / f"{_SKIP}.tmp"
        tmp.write_text(json.dumps(record, indent=1))
        os.replace(tmp, step_dir / CHECKSUM_FILE)

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are committed, then completes their checksum records
        with the files Orbax writes at the commit; raises CheckpointError (one line) if a save failed."""
        try:
            self._manager.wait_until_finished()
        except Exception as e:
            self._failed = True
            raise CheckpointError(f"a save to {self.directory} failed: {_failure(e)}") from e
        with self._lock:
            steps, self._pending = self._pending, []
        for step in steps if jax.process_index() == 0 else ():
            step_dir = self.directory / str(step)
            if step_dir.is_dir():  # (max_to_keep may have removed it already)
                self._write_checksums(step, step_dir)

    # ----- checking ---------------------------------------------------------------------------------
    def all_steps(self) -> list[int]:
        """Steps with a committed checkpoint, ascending."""
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        """The newest committed step, or None when the directory holds no checkpoint."""
        return self._manager.latest_step()

    def has_checksums(self, step: int) -> bool:
        return (self.directory / str(step) / CHECKSUM_FILE).is_file()

    def verify(self, step: int) -> str | None:
        """None when every file of ``step`` matches its recorded checksum, else the problem in one line
        (naming the file)."""
        self.wait()
        path = self.directory / str(step) / CHECKSUM_FILE
        if not path.is_file():
            return f"no {CHECKSUM_FILE} (the save did not finish, or an older psec_jax wrote it)"
        try:
            recorded = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError):
            return f"{CHECKSUM_FILE} is unreadable"
        files = recorded.get("files") if isinstance(recorded, dict) else None
        return artifacts.check_files(self.directory / str(step), files)

    def _reject(self, step: int) -> Path:
        """Moves a broken step out of Orbax's sight (never deletes it); returns where it went."""
        dest = self.directory / REJECTED_DIR / str(step)
        n = 1
        while dest.exists():
            n += 1
            dest = self.directory / REJECTED_DIR / f"{step}-{n}"
        dest.parent.mkdir(exist_ok=True)
        shutil.move(str(self.directory / str(step)), str(dest))
        self._manager.reload()
        return dest

    def resume_step(self, report: Callable[[str], Any] | None = None) -> int | None:
        """The newest step whose files all verify (None if the directory holds no checkpoint).

        Newer steps that fail verification are moved to ``rejected/`` and ``report``ed, one line each,
        saying which file is wrong and which step the run falls back to. A directory in which no step
        has checksums (written before checksums existed) resumes from its newest step, unverified, with
        a report. Raises CheckpointError when checkpoints exist but none is intact.
        """
        report = report or (lambda msg: None)
        self.wait()
        steps = self.all_steps()
        if not steps:
            return None
        if not any(self.has_checksums(s) for s in steps):
            report(
                f"checkpoints in {self.directory} carry no checksums (written by an older psec_jax); "
                f"resuming from step {steps[-1]} unverified"
            )
            return steps[-1]
        broken, step = [], None
        for s in reversed(steps):
            problem = self.verify(s)
            if problem is None:
                step = s
                break
            broken.append((s, problem))
        if step is None:
            details = "; ".join(f"step {s}: {p}" for s, p in broken)
            raise CheckpointError(
                f"no intact checkpoint in {self.directory} ({details}); use a new --workdir to start again"
            )
        for bad, problem in broken:
            if jax.process_index() != 0:  # process 0 moves it; the others only skip it
                report(f"checkpoint step {bad} in {self.directory} is unusable: {problem}; resuming from step {step}")
                continue
            dest = self._reject(bad)
            report(
                f"checkpoint step {bad} in {self.directory} is unusable: {problem}; moved it to "
                f"{dest.relative_to(self.directory)}, resuming from step {step}"
            )
        return step

    # ----- restoring --------------------------------------------------------------------------------
    def _step_or_latest(self, step: int | None) -> int:
        self.wait()
        if step is None:
            step = self.latest_step()
            if step is None:
                raise CheckpointError(f"no checkpoint found in {self.directory}")
        elif step not in self._manager.all_steps():
            raise CheckpointError(f"no checkpoint for step {step} in {self.directory} (have {self.all_steps()})")
        return step

    def _check(self, step: int, verify: bool) -> None:
        problem = self.verify(step) if verify else None
        if problem is not None:
            raise CheckpointError(f"checkpoint step {step} in {self.directory} is unusable: {problem}")

    def restore(
        self, step: int | None = None, target: Any = None, *, verify: bool = True
    ) -> tuple[Any, ml_collections.ConfigDict]:
        """Returns ``(state, config)`` at ``step`` (default: latest), after checking every file's
        checksum (``verify=False`` skips that, e.g. for checkpoints written before checksums existed).

        With ``target`` (a pytree of arrays or ShapeDtypeStructs) the state is restored into that
        structure, dtypes and shardings; without it, as the saved tree of arrays (a zero-size array then
        comes back as the one-element placeholder it was saved as).
        """
        step = self._step_or_latest(step)
        self._check(step, verify)
        state_args = ocp.args.StandardRestore(_abstract_target(target) if target is not None else None)
        try:
            restored = self._manager.restore(
                step, args=ocp.args.Composite(state=state_args, config=ocp.args.JsonRestore())
            )
        except Exception as e:  # Orbax raises many types; all mean "this checkpoint is unusable".
            raise CheckpointError(f"could not restore step {step} from {self.directory}: {one_line(e)}") from e
        state = restored.state if target is None else _restore_empty(restored.state, target)
        return state, ml_collections.ConfigDict(restored.config)

    def restore_config(self, step: int | None = None, *, verify: bool = True) -> ml_collections.ConfigDict:
        """The config saved with ``step`` (default: latest), without reading any arrays."""
        step = self._step_or_latest(step)
        self._check(step, verify)
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
        except Exception as e:
            raise CheckpointError(f"could not read the config of step {step} in {self.directory}: {one_line(e)}") from e
        return ml_collections.ConfigDict(restored.config)

    @classmethod
    def read_config(cls, directory: str | os.PathLike, step: int | None = None) -> ml_collections.ConfigDict:
        """The config saved in an existing checkpoint directory (default: latest step)."""
        with cls(directory, create=False) as ckpts:
            return ckpts.restore_config(step)

    def close(self) -> None:
        """Waits for pending saves and releases Orbax's resources (a signal meanwhile is held: a save is
        not cut in half, and the run still stops, at its next check)."""
        with signals.deferred(raise_at_exit=False):
            try:
                if not self._failed:  # (the failure was raised already)
                    self.wait()
            finally:
                self._manager.close()

    def __enter__(self) -> Checkpoints:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
