"""Training helpers: optimizers that update only chosen leaves, and parameter counts."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
import optax

from psec_jax.lora import core

TRAINABLE, FROZEN = "trainable", "frozen"


def trainable_labels(tree: Any, patterns: Sequence[str]) -> Any:
    """A tree like ``tree`` whose leaves are ``"trainable"`` where the leaf's path matches one of the
    regular expressions ``patterns`` (searched in ``"a/b/c"`` paths), else ``"frozen"``.
    """
    compiled = [re.compile(p) for p in patterns]

    def label(path: tuple, _: Any) -> str:
        name = core.path_str(path)
        return TRAINABLE if any(p.search(name) for p in compiled) else FROZEN

    labels = jax.tree_util.tree_map_with_path(label, tree)
    if TRAINABLE not in jax.tree.leaves(labels):
        raise ValueError(f"no leaf matches the trainable patterns {list(patterns)}")
    return labels


def partition_optimizer(
    tx: optax.GradientTransformation, tree: Any, trainable: Sequence[str] = (r"(^|/)lora(/|$)",)
) -> optax.GradientTransformation:
    """``tx`` on the leaves whose paths match ``trainable``; every other leaf gets a zero update.

    For a combined tree such as ``{"base": ..., "lora": ..., "composer": ...}`` use
    ``trainable=(r"^lora/", r"^composer/")``. Frozen leaves keep no optimizer state.
    """
    labels = trainable_labels(tree, trainable)
    return optax.multi_transform({TRAINABLE: tx, FROZEN: optax.set_to_zero()}, labels)


def count_params(tree: Any) -> int:
    """Number of scalars in a pytree (``LoRAPair`` leaves count both factors)."""
    return int(sum(np.prod(np.shape(x)) for x in jax.tree.leaves(tree)))


def param_counts(base_params: Any, library: Any) -> dict[str, Any]:
    """``{"base": n, "per_skill": {name: n}, "library": n_stored}`` for a SkillLibrary on its base.

    ``per_skill`` counts each skill at its own rank; ``library`` counts the stored (padded) arrays.
    """
    return {
        "base": count_params(base_params),
        "per_skill": {name: count_params(library.skill(name)) for name in library.names},
        "library": count_params(library.adapters),
    }
