"""Named PRNG streams: one root key, one independent stream per purpose.

``stream(root, "params")`` folds a stable hash of the name into the key, so adding or removing a stream
never changes the others (unlike positional ``split``), and per-step keys come from
``jax.random.fold_in(stream_key, step)``.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable

import jax


def name_to_int(name: str) -> int:
    """A stable 31-bit integer for ``name`` (crc32; identical across processes and platforms)."""
    return zlib.crc32(name.encode("utf-8")) & 0x7FFFFFFF


def stream(key: jax.Array, name: str) -> jax.Array:
    """The key of the stream called ``name`` derived from ``key``. Works under jit and vmap."""
    return jax.random.fold_in(key, name_to_int(name))


def streams(key: jax.Array, names: Iterable[str]) -> dict[str, jax.Array]:
    """``{name: stream(key, name)}`` for each name; names must be unique."""
    names = list(names)
    if len(set(names)) != len(names):
        raise ValueError(f"stream names must be unique, got {names}")
    return {name: stream(key, name) for name in names}
