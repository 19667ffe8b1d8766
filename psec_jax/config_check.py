"""Checks that a config can train, run before anything is compiled; each failure is one line.

    from psec_jax import config_check as cc
    cc.positive_int(config, "train.batch_size", "train.log_every")
    cc.positive(config, "optim.learning_rate")
    cc.multiple_of(config, "train.num_steps", "train.log_every")

Fields are named by dotted path. Every function raises ``ConfigError`` (a ValueError) naming the field,
the rule and the value; the CLI prints it as one line and exits with code 2.

``psec_jax.experiment_flags`` runs the rules every config shares (``same_fields``, ``same_types``,
``finite``, ``int32``, ``seeds``) before the experiment's own ``check_config``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import ml_collections

INT32_MAX = 2**31 - 1


class ConfigError(ValueError):
    """A config value that cannot work (the message names the field and the value)."""


class UsageError(Exception):
    """A command-line mistake (flags, config, workdir), found before or while a run starts; the CLI reports
    it as one line on stderr with exit code 2."""


def get(config: ml_collections.ConfigDict, field: str) -> Any:
    """The value at the dotted path ``field``; ConfigError if there is none."""
    value = config
    for part in field.split("."):
        try:
            value = value[part]
        except (KeyError, TypeError):
            raise ConfigError(f"config has no field {field}") from None
    return value


def set_field(config: ml_collections.ConfigDict, field: str, value: Any) -> None:
    """Sets the dotted path ``field`` to ``value`` in place; ConfigError if its parent section is missing."""
    parent, _, name = field.rpartition(".")
    node = get(config, parent) if parent else config
    try:
        node[name] = value
    except (KeyError, AttributeError, TypeError) as e:
        raise ConfigError(f"config field {field}: {e}") from None


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


def int32(config: ml_collections.ConfigDict) -> None:
    """Every int in the config (tuples included) fits int32: counts and sizes become JAX int32 values
    (scan lengths, step counters, shapes), where a larger one overflows or wraps around."""
    for field, value in leaves(config).items():
        for x in _numbers(value):
            if isinstance(x, int) and not isinstance(x, bool) and not -INT32_MAX - 1 <= x <= INT32_MAX:
                raise ConfigError(f"config field {field} must fit in int32 (at most {INT32_MAX}), got {x}")


def seeds(config: ml_collections.ConfigDict) -> None:
    """Every field named ``seed`` is an int in [0, 2**31): ``jax.random.key`` keeps the low 32 bits of
    a larger seed (``key(2**32)`` is ``key(0)``) and JAX's int32 arithmetic on seeds would overflow."""
    for field, value in leaves(config).items():
        if field.rpartition(".")[2] == "seed" and (
            isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= INT32_MAX
        ):
            raise ConfigError(f"config field {field} must be an integer in [0, {INT32_MAX}], got {value!r}")


# the type a config value stands for (an int field takes no float or bool, a float field any number),
# as (singular, plural) for the messages
_KINDS = {
    bool: ("a bool", "bools"),
    int: ("an integer", "integers"),
    float: ("a number", "numbers"),
    str: ("a string", "strings"),
    tuple: ("a tuple", "tuples"),
    list: ("a tuple", "tuples"),
}


def _kind(x: Any) -> tuple[str, str] | None:
    return None if x is None else _KINDS.get(type(x), (type(x).__name__,) * 2)


def _fits(x: Any, kind: tuple[str, str] | None) -> bool:
    return kind is None or _kind(x) == kind or kind == _KINDS[float] and _kind(x) == _KINDS[int]


def same_types(config: ml_collections.ConfigDict, reference: ml_collections.ConfigDict) -> None:
    """Each field of ``config`` has the type of that field in ``reference`` (the experiment's default
    config): an integer field an int (not a bool, not a float), a number field an int or a float, a bool
    a bool, and a tuple a tuple whose entries have the type of the reference's entries. A field that is
    None in the reference, or absent from it, takes anything."""
    want = leaves(reference)
    for field, value in leaves(config).items():
        ref = want.get(field)
        if not _fits(value, _kind(ref)):
            raise ConfigError(f"config field {field} must be {_kind(ref)[0]}, got {value!r}")
        if isinstance(ref, (tuple, list)) and ref:
            kinds = {_kind(r) for r in ref}
            entry = _KINDS[float] if kinds == {_KINDS[float], _KINDS[int]} else kinds.pop() if len(kinds) == 1 else None
            if entry and not all(_fits(x, entry) for x in value):
                raise ConfigError(f"config field {field} must be a tuple of {entry[1]}, got {tuple(value)!r}")


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


def in_range(config: ml_collections.ConfigDict, field: str, low: float, high: float, *, low_open: bool = False) -> None:
    """``low <= field <= high`` (``low < field`` with ``low_open``)."""
    x = _number(config, field)
    if x > high or x < low or (low_open and x == low):
        bracket = "(" if low_open else "["
        raise ConfigError(f"config field {field} must be in {bracket}{low}, {high}], got {x!r}")


def multiple_of(config: ml_collections.ConfigDict, field: str, of: str) -> None:
    """``field`` is a multiple of the (positive int) field ``of`` (checks both are positive ints)."""
    positive_int(config, field, of)
    if get(config, field) % get(config, of):
        raise ConfigError(f"config field {field} ({get(config, field)}) must be a multiple of {of} ({get(config, of)})")


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
        parts = ([f"it lacks {show(missing)}"] if missing else []) + (
            [f"it has {show(extra)}, which {what} never reads"] if extra else []
        )
        raise ConfigError(f"this is not a {what} config: {'; '.join(parts)}")
