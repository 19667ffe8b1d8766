"""The shipped ml-collections configs, one file per experiment, each defining ``get_config([preset])``.

A config is addressed by name or by path, with an optional preset after a colon:

    --config=lm_moe:tiny                     psec_jax/configs/lm_moe.py, get_config("tiny")
    --config=path/to/my_config.py:small      any file defining get_config()

A path that exists wins over a name, so a local file is never shadowed by a shipped config.
"""

from __future__ import annotations

import os
from pathlib import Path

DIRECTORY = Path(__file__).resolve().parent


def names() -> tuple[str, ...]:
    """The shipped configs' names, sorted (``lm_moe``, ``psec_continual``, ...)."""
    return tuple(sorted(p.stem for p in DIRECTORY.glob("*.py") if not p.stem.startswith("_")))


def resolve(value: str) -> tuple[str, list[str]]:
    """``--config``'s value -> (config file path, preset arguments for ``get_config``): ``"NAME[:PRESET]"``
    for a shipped config, else ``"PATH[:PRESET]"``; the path is returned as given when nothing matches
    (the caller says it is missing)."""
    if os.path.isfile(value):
        return value, []
    path, sep, preset = value.partition(":")
    args = [preset] if sep else []
    if not os.path.isfile(path) and path in names():
        return str(DIRECTORY / f"{path}.py"), args
    return path, args
