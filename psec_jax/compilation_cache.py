"""JAX's persistent compilation cache, on by default for every psec_jax entry point.

On a 2-core CPU a Brax step takes ~40 s to compile; researchers re-run the same shapes all day, so
compiled executables are kept on disk and reused across processes.

Location, first match wins: an explicit ``directory`` argument, ``$PSEC_JAX_CACHE_DIR``, a cache dir
already given to JAX (``$JAX_COMPILATION_CACHE_DIR``), ``$XDG_CACHE_HOME/psec_jax/jax``, then
``~/.cache/psec_jax/jax``. ``PSEC_JAX_COMPILATION_CACHE=0`` (or ``--nocompilation_cache`` on the CLI)
turns it off.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from psec_jax import workdir

ENV_DIR = "PSEC_JAX_CACHE_DIR"
ENV_SWITCH = "PSEC_JAX_COMPILATION_CACHE"


def default_cache_dir() -> Path:
    """The cache directory used when none is given explicitly (see module docstring)."""
    if os.environ.get(ENV_DIR):
        return Path(os.environ[ENV_DIR]).expanduser()
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return Path(os.environ["JAX_COMPILATION_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "psec_jax" / "jax"


def enabled_by_env() -> bool:
    """False when ``$PSEC_JAX_COMPILATION_CACHE`` is set to 0/false/no/off."""
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "false", "no", "off")


def enable(directory: str | os.PathLike | None = None) -> Path | None:
    """Points JAX's persistent compilation cache at ``directory`` (or the default) and returns it.

    Returns None, leaving JAX untouched, when the cache is switched off by the environment, or when the
    directory cannot be created or written (one warning line on stderr: the cache only saves time, so a
    run goes on without it). Safe to call more than once; must be called before the first compilation
    to cover it.
    """
    if directory is None and not enabled_by_env():
        return None
    import jax

    path = Path(directory).expanduser() if directory is not None else default_cache_dir()
    try:
        workdir.check_writable(path)
    except OSError as e:
        print(
            f"psec_jax: warning: compilation cache {path} is not usable ({e.strerror or type(e).__name__}); "
            f"compiling without it",
            file=sys.stderr,
            flush=True,
        )
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    return path


def current() -> Path | None:
    """The cache directory JAX is using now, or None when the persistent cache is off."""
    import jax

    value = jax.config.jax_compilation_cache_dir
    return Path(value) if value else None
