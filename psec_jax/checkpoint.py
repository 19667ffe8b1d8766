"""Orbax checkpoints that carry their config, so a run can be rebuilt from the checkpoint alone.

Each step directory holds two items: ``state`` (the array pytree, Orbax standard format) and
``config`` (the resolved ml-collections config as JSON)::

    ckpts = Checkpoints(workdir / "checkpoints", max_to_keep=3)
    ckpts.save(step, state, config)               # async; writes are committed atomically by Orbax
    step = ckpts.latest_step()                    # None when there is nothing to resume from
    state, config = ckpts.restore(target=state)   # target: a concrete or abstract (ShapeDtypeStruct) tree
    config = Checkpoints.read_config(directory)   # no arrays needed
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

from psec_jax.runs import to_jsonable

_ITEMS = ("state", "config")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated, corrupt or does not match the requested structure."""


def _abstract(tree: Any) -> Any:
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


class Checkpoints:
    """A directory of step checkpoints, each holding ``state`` and ``config`` (thin Orbax wrapper)."""

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        max_to_keep: int | None = 3,
        save_interval_steps: int = 1,
        create: bool = True,
    ):
        self.directory = Path(directory).absolute()
        if not create and not self.directory.is_dir():
            raise CheckpointError(f"checkpoint directory {self.directory} does not exist")
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, save_interval_steps=save_interval_steps, create=create
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=_ITEMS)

    def all_steps(self) -> list[int]:
        """Steps with a committed checkpoint, ascending."""
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        """The newest committed step, or None when the directory holds no checkpoint."""
        return self._manager.latest_step()

    def save(self, step: int, state: Any, config: ml_collections.ConfigDict | dict, *, force: bool = False) -> bool:
        """Saves ``state`` and ``config`` at ``step`` (asynchronously); returns whether a save started.

        ``force`` saves even when ``step`` is off the save interval (use it for the final step).
        """
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(to_jsonable(config))
        )
        return self._manager.save(int(step), args=args, force=force)

    def _step_or_latest(self, step: int | None) -> int:
        self._manager.wait_until_finished()
        if step is None:
            step = self.latest_step()
            if step is None:
                raise CheckpointError(f"no checkpoint found in {self.directory}")
        elif step not in self._manager.all_steps():
            raise CheckpointError(f"no checkpoint for step {step} in {self.directory} (have {self.all_steps()})")
        return step

    def restore(self, step: int | None = None, target: Any = None) -> tuple[Any, ml_collections.ConfigDict]:
        """Returns ``(state, config)`` at ``step`` (default: latest).

        With ``target`` (a pytree of arrays or ShapeDtypeStructs) the state is restored into that
        structure, dtypes and shardings; without it, as the saved tree of arrays.
        """
        step = self._step_or_latest(step)
        state_args = ocp.args.StandardRestore(_abstract(target) if target is not None else None)
        try:
            restored = self._manager.restore(
                step, args=ocp.args.Composite(state=state_args, config=ocp.args.JsonRestore())
            )
        except Exception as e:  # Orbax raises many types; all mean "this checkpoint is unusable".
            raise CheckpointError(
                f"could not restore step {step} from {self.directory}: {type(e).__name__}: {e}"
            ) from e
        return restored.state, ml_collections.ConfigDict(restored.config)

    def restore_config(self, step: int | None = None) -> ml_collections.ConfigDict:
        """The config saved with ``step`` (default: latest), without reading any arrays."""
        step = self._step_or_latest(step)
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
        except Exception as e:
            raise CheckpointError(f"could not read the config of step {step} in {self.directory}: {e}") from e
        return ml_collections.ConfigDict(restored.config)

    @classmethod
    def read_config(cls, directory: str | os.PathLike, step: int | None = None) -> ml_collections.ConfigDict:
        """The config saved in an existing checkpoint directory (default: latest step)."""
        with cls(directory, create=False) as ckpts:
            return ckpts.restore_config(step)

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are committed."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases Orbax's resources."""
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self) -> "Checkpoints":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
