"""Checks that a config can train, run before anything is compiled; each failure is one line.

    from psec_jax import config_check as cc
    cc.positive_int(config, "train.batch_size", "train.log_every")
    cc.positive(config, "optim.learning_rate")
    cc.multiple_of(config, "train.num_steps", "train.log_every")

Fields are named by dotted path. Every function raises ``ConfigError`` (a ValueError) naming the field,
the rule and the value; the CLI prints it as one line and exits with code 2.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import ml_collections


class ConfigError(ValueError):
    """A config value that cannot work (the message names the field and the value)."""


def get(config: ml_collections.ConfigDict, field: str) -> Any:
    """The value at the dotted path ``field``; ConfigError if there is none."""
    value = config
    for part in field.split("."):
        try:
            value = value[part]
        except (KeyError, TypeError):
            raise ConfigError(f"config has no field {field}") from None
    return value


def leaves(config: Any, prefix: str = "") -> dict[str, Any]:
    """``{dotted name: value}`` of every non-ConfigDict field of ``config``."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, (ml_collections.ConfigDict, dict)):
            out.update(leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _numbers(value: Any) -> Iterable[Any]:
    return value if isinstance(value, (list, tuple)) else (value,)


def finite(config: ml_collections.ConfigDict) -> None:
    """Every float in the config (tuples included) is finite: NaN or Inf anywhere is an error."""
    for field, value in leaves(config).items():
        for x in _numbers(value):
            if isinstance(x, float) and not math.isfinite(x):
                raise ConfigError(f"config field {field} must be finite, got {x}")


def positive_int(config: ml_collections.ConfigDict, *fields: str) -> None:
    """Each field is an int >= 1 (a tuple field: every entry is)."""
    for field in fields:
        for x in _numbers(get(config, field)):
            if isinstance(x, bool) or not isinstance(x, int) or x < 1:
                raise ConfigError(f"config field {field} must be a positive integer, got {get(config, field)!r}")


def _number(config: ml_collections.ConfigDict, field: str) -> float:
    x = get(config, field)
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        raise ConfigError(f"config field {field} must be a finite number, got {x!r}")
    return x


def positive(config: ml_collections.ConfigDict, *fields: str) -> None:
    """Each field is a finite number > 0."""
    for field in fields:
        if _number(config, field) <= 0:
            raise ConfigError(f"config field {field} must be > 0, got {get(config, field)!r}")


def non_negative(config: ml_collections.ConfigDict, *fields: str) -> None:
    """Each field is a finite number >= 0."""
    for field in fields:
        if _number(config, field) < 0:
            raise ConfigError(f"config field {field} must be >= 0, got {get(config, field)!r}")


def in_range(config: ml_collections.ConfigDict, field: str, low: float, high: float, *,
             low_open: bool = False) -> None:
    """``low <= field <= high`` (``low < field`` with ``low_open``)."""
    x = _number(config, field)
    if x > high or x < low or (low_open and x == low):
        bracket = "(" if low_open else "["
        raise ConfigError(f"config field {field} must be in {bracket}{low}, {high}], got {x!r}")


def multiple_of(config: ml_collections.ConfigDict, field: str, of: str) -> None:
    """``field`` is a multiple of the (positive int) field ``of`` (checks both are positive ints)."""
    positive_int(config, field, of)
    if get(config, field) % get(config, of):
        raise ConfigError(f"config field {field} ({get(config, field)}) must be a multiple of {of} "
                          f"({get(config, of)})")


def one_of(config: ml_collections.ConfigDict, field: str, choices: Iterable[Any]) -> None:
    """``field`` is one of ``choices``."""
    choices = list(choices)
    if get(config, field) not in choices:
        raise ConfigError(f"config field {field} must be one of {choices}, got {get(config, field)!r}")


def same_fields(config: ml_collections.ConfigDict, reference: ml_collections.ConfigDict, what: str) -> None:
    """``config`` has exactly the fields of ``reference`` (the experiment's own default config), so a
    config written for another experiment, or a field the experiment would never read, is an error."""
    have, want = set(leaves(config)), set(leaves(reference))
    missing, extra = sorted(want - have), sorted(have - want)
    if missing or extra:
        show = lambda names: ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
        parts = ([f"it lacks {show(missing)}"] if missing else []) + ([f"it has {show(extra)}, which "
                                                                        f"{what} never reads"] if extra else [])
        raise ConfigError(f"this is not a {what} config: {'; '.join(parts)}")
