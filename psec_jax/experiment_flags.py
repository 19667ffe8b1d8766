"""Flags and configs of ``psec-jax <experiment>``: every way they can be wrong becomes one line.

``parse(name, argv, experiment)`` loads ``--config=NAME|PATH[:PRESET]`` (a shipped config or a file;
ml-collections, locked), applies
``--config.FIELD=VALUE`` overrides, and checks the result before anything is compiled: the experiment's
own fields exactly (a config written for another experiment is refused), each of its default's type,
every float finite, every int within int32, every seed in [0, 2**31), and the experiment module's
``check_config``. Mistakes raise ``UsageError`` with a one-line message.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import inspect
import os
import re
from collections.abc import Sequence
from typing import Any

import ml_collections

from psec_jax import config_check, configs, registry
from psec_jax.runs import one_line

PROG = "psec-jax"


UsageError = config_check.UsageError  # a command-line mistake: one line on stderr, exit code 2


def _config_path(argv: Sequence[str]) -> str | None:
    """The value of --config in ``argv`` (``--config=P`` or ``--config P``), or None."""
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def _with_config(argv: Sequence[str], value: str) -> list[str]:
    """``argv`` with --config's value replaced by ``value`` (a shipped config's name by its file path)."""
    out, skip = [], False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
        elif arg.startswith("--config="):
            out.append(f"--config={value}")
        elif arg == "--config" and i + 1 < len(argv):
            out.append(f"--config={value}")
            skip = True
        else:
            out.append(arg)
    return out


def _load_config_file(name: str, value: str) -> Any:
    """Runs ``get_config(preset)`` of ``--config=NAME|PATH[:PRESET]`` as ml-collections will, turning each
    way it can fail into one line (absl would print the config file's traceback)."""
    path, args = configs.resolve(value)
    if not os.path.isfile(path):
        raise UsageError(f"{name}: config file not found: {path} (shipped configs: {', '.join(configs.names())})")
    loader = importlib.machinery.SourceFileLoader("psec_jax_user_config", path)  # any suffix, as absl
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    try:
        loader.exec_module(module)
    except Exception as e:
        raise UsageError(f"{name}: could not load config {path}: {one_line(e)}") from None
    get_config = getattr(module, "get_config", None)
    if not callable(get_config):
        raise UsageError(f"{name}: config file {path} has no get_config() function")
    try:
        inspect.signature(get_config).bind(*args)
    except TypeError:
        if args:
            raise UsageError(f"{name}: config file {path} has no presets, got {value} (use --config={path})") from None
        raise UsageError(f"{name}: config file {path} needs a preset: --config={path}:NAME") from None
    try:
        config = get_config(*args)
    except Exception as e:  # e.g. an unknown preset: the config file's own message
        raise UsageError(f"{name}: could not load config {value}: {one_line(e)}") from None
    if not isinstance(config, ml_collections.ConfigDict):
        raise UsageError(f"{name}: config {value}: get_config() returned {type(config).__name__}, not a ConfigDict")
    return config


def check_config(name: str, experiment: Any, config: Any, config_value: str) -> None:
    """UsageError (one line) unless ``config`` is a config of experiment ``name`` that can run: the
    experiment's fields exactly, each of its default's type, every float finite, every int within int32,
    every seed in [0, 2**31), and the experiment's own ``check_config``."""
    from psec_jax import config_check

    module = registry.load(name)
    reference = registry.reference_config(name)
    try:
        config_check.same_fields(config, reference, name)
    except ValueError as e:
        raise UsageError(f"{name}: config {config_value}: {e} (start from {experiment.default_config})") from None
    try:
        config_check.same_types(config, reference)
        config_check.finite(config)
        config_check.seeds(config)
        config_check.int32(config)
        getattr(module, "check_config", lambda c: None)(config)
    except ValueError as e:
        raise UsageError(f"{name}: {e}") from None


def _unknown_field(name: str, error: str, argv: Sequence[str], config_value: str) -> str:
    # ml-collections' message for a locked field: "'stps'\nDid you mean "steps" instead of "stps"?"
    hint = re.search(r'Did you mean "(\w+)" instead of "(\w+)"', error)
    field = hint.group(2) if hint else (re.findall(r"\w[\w.]*", error) or ["?"])[0]
    culprit = [a for a in argv if a.startswith("--config.") and field in a.split("=", 1)[0].split(".")]
    where = culprit[0] if culprit else f"field {field!r}"
    suggest = f"; did you mean {hint.group(1)!r}?" if hint else ""
    return f"{name}: unknown config field {field!r} in {where} (config {config_value}){suggest}"


def _split_comma_lists(config: Any, file_config: Any) -> None:
    """``--config.methods=scratch,psec`` means the tuple ("scratch", "psec"): ml-collections reads an
    unbracketed value of a tuple field as one string, ("scratch,psec",), which no field means. Splits
    every tuple-of-strings field the overrides turned into one such string (however the flag was written)."""
    from psec_jax.config_check import leaves

    given = leaves(file_config)
    split = {
        name: tuple(v.strip() for v in value[0].split(","))
        for name, value in leaves(config).items()
        if isinstance(value, tuple)
        and len(value) == 1
        and isinstance(value[0], str)
        and "," in value[0]
        and value != given.get(name)
        and all(isinstance(v, str) for v in given.get(name, ()))
    }
    config.update_from_flattened_dict(split)


def parse(name: str, argv: Sequence[str], experiment: Any):
    """Parses the flags of experiment ``name`` (an ``Experiment``: module, default_config) and checks
    its config; returns ``(config, workdir, flag_values)`` or raises UsageError."""
    from absl import flags
    from ml_collections import config_flags

    given = _config_path(argv)
    if given is not None:  # config_flags loads files by path: a shipped config's name becomes its file
        path, args = configs.resolve(given)
        argv = _with_config(argv, ":".join([path, *args]))
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file(
        "config",
        None,
        "ml-collections config file; --config.FIELD=VALUE overrides a field.",
        flag_values=fv,
        lock_config=True,
        sys_argv=[f"{PROG} {name}", *argv],  # not sys.argv: main(argv) is callable
    )
    flags.DEFINE_string("workdir", None, "Run directory (config, metrics, checkpoints).", flag_values=fv)
    flags.DEFINE_boolean("compilation_cache", True, "Use JAX's persistent compilation cache.", flag_values=fv)
    flags.DEFINE_string("compilation_cache_dir", None, "Compilation cache directory.", flag_values=fv)
    flags.DEFINE_string(
        "coordinator_address",
        None,
        "Multi-process run: host:port of process 0's coordinator (default $JAX_COORDINATOR_ADDRESS).",
        flag_values=fv,
    )
    flags.DEFINE_integer(
        "num_processes", None, "Multi-process run: number of processes (default $JAX_NUM_PROCESSES).", flag_values=fv
    )
    flags.DEFINE_integer(
        "process_id", None, "Multi-process run: this process's index (default $JAX_PROCESS_ID).", flag_values=fv
    )

    if any(a in ("-h", "--help", "--helpfull") for a in argv):
        print(f"usage: {PROG} {name} --config=NAME|PATH[:PRESET] [--config.FIELD=VALUE ...] --workdir=DIR\n")
        print(fv.get_help())
        raise SystemExit(0)

    config_value = given
    if config_value is None:
        raise UsageError(f"{name}: --config is required (e.g. --config={experiment.default_config})")
    file_config = _load_config_file(name, config_value)  # (the config before overrides)
    try:
        extra = fv([f"{PROG} {name}", *argv])  # override flags are defined while --config is parsed
    except flags.UnrecognizedFlagError as e:
        if e.flagname.startswith("config."):
            raise UsageError(_unknown_field(name, e.flagname.split(".")[-1], argv, config_value)) from None
        raise UsageError(f"{name}: {e}") from None
    except flags.Error as e:
        raise UsageError(f"{name}: {one_line(e, with_type=False)}") from None
    except (AttributeError, KeyError) as e:  # a locked ConfigDict refusing an unknown nested field
        raise UsageError(_unknown_field(name, str(e), argv, config_value)) from None
    except Exception as e:  # an error raised while executing the config file itself
        raise UsageError(f"{name}: could not load config {config_value}: {one_line(e)}") from None
    if len(extra) > 1:
        raise UsageError(f"{name}: unexpected positional arguments: {' '.join(extra[1:])}")
    try:
        config = fv.config
        config.get("__probe__")  # an unloadable file surfaces here as IOError
    except OSError as e:
        raise UsageError(f"{name}: could not load config {config_value}: {one_line(e)}") from None
    if not fv.workdir:
        raise UsageError(f"{name}: --workdir is required")
    _split_comma_lists(config, file_config)
    check_config(name, experiment, config, config_value)
    return config, fv.workdir, fv
