"""The ``psec-jax`` command line (also ``python -m psec_jax``).

    psec-jax info                                   versions, devices, compilation cache
    psec-jax <experiment> --config=experiments/configs/<name>.py [--config.field=value ...] --workdir=DIR

Each experiment is a module in ``experiments/`` exposing ``main(config, workdir) -> dict`` (its
summary). Configs are ml-collections ``get_config()`` files, locked, so an override of a field that does
not exist is an error. Command-line mistakes print one line naming the problem and exit with code 2.
"""

from __future__ import annotations

import importlib
import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import NamedTuple, Sequence

PROG = "psec-jax"


class Experiment(NamedTuple):
    module: str  # importable module with main(config, workdir) -> dict
    help: str  # one line for `psec-jax --help`
    default_config: str  # config file used in the help text's example


EXPERIMENTS: dict[str, Experiment] = {
    "smoke": Experiment(
        "experiments.smoke",
        "tiny regression run: checks install, configs, jit(scan) training, metrics, checkpoints, resume",
        "experiments/configs/smoke.py",
    ),
    "behavior": Experiment(
        "experiments.behavior",
        "train SAC behaviour policies (random/medium/expert snapshots) for one task",
        "experiments/configs/behavior.py",
    ),
    "psec_continual": Experiment(
        "experiments.psec_continual",
        "PSEC continual policy shift on walker (stand -> walk/run): all stages, baselines, results table",
        "experiments/configs/psec_continual.py:small",
    ),
    "psec_safe": Experiment(
        "experiments.psec_safe",
        "PSEC safe composition (reward + cost skills) on a velocity task: normalized reward and cost",
        "experiments/configs/psec_safe.py:small",
    ),
    "psec_dynamics": Experiment(
        "experiments.psec_dynamics",
        "PSEC dynamics shift (shifted-dynamics pi_0 + LoRA on 5% nominal data): normalized scores",
        "experiments/configs/psec_dynamics.py:small",
    ),
}

# Packages whose versions `psec-jax info` reports.
_PACKAGES = (
    "psec_jax", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "chex", "brax", "mujoco",
    "mujoco-mjx", "playground", "ml-collections", "numpy", "h5py",
)


class UsageError(Exception):
    """A command-line mistake; reported as one line on stderr with exit code 2."""


def _usage() -> str:
    lines = [
        f"usage: {PROG} <command> [flags]",
        "",
        "commands:",
        f"  {'info':<12} print versions, devices and the compilation-cache location",
    ]
    lines += [f"  {'dataset':<12} generate or find a named offline dataset (e.g. walker-walk-expert-10traj)"]
    lines += [f"  {name:<12} {exp.help}" for name, exp in EXPERIMENTS.items()]
    lines += [
        "",
        "experiment flags:",
        "  --config=PATH              ml-collections config file (required), e.g. "
        + next(iter(EXPERIMENTS.values())).default_config,
        "  --config.FIELD=VALUE       override a config field (the field must exist)",
        "  --workdir=DIR              where the run writes config.json, metrics.jsonl, checkpoints/",
        "  --[no]compilation_cache    JAX persistent compilation cache (default: on)",
        "  --compilation_cache_dir=D  cache location (default: $PSEC_JAX_CACHE_DIR or ~/.cache/psec_jax/jax)",
        "",
        f"`{PROG} <command> --help` lists a command's flags.",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if not argv or argv[0] in ("-h", "--help", "help"):
            print(_usage())
            return 0 if argv else 2
        command, rest = argv[0], argv[1:]
        if command == "info":
            return info(rest)
        if command == "dataset":
            return dataset(rest)
        if command in EXPERIMENTS:
            return run_experiment(command, rest)
        raise UsageError(f"unknown command {command!r} (choose from: info, dataset, {', '.join(EXPERIMENTS)})")
    except UsageError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def info(argv: Sequence[str] = ()) -> int:
    """Prints package versions, JAX devices and the compilation cache location."""
    if argv and argv[0] in ("-h", "--help"):
        print(f"usage: {PROG} info\n\nPrints versions, JAX devices and the compilation-cache location.")
        return 0
    if argv:
        raise UsageError(f"info takes no arguments, got {' '.join(argv)}")
    from psec_jax import compilation_cache

    cache = compilation_cache.enable()
    import jax

    print(f"python       {platform.python_version()} ({sys.executable})")
    print(f"platform     {platform.platform()}")
    for package in _PACKAGES:
        print(f"{package:<12} {_version(package)}")
    print(f"backend      {jax.default_backend()}")
    for d in jax.devices():
        print(f"device       {d.id}: {d.device_kind} ({d.platform})")
    if cache is None:
        print(f"compile cache  off ({compilation_cache.ENV_SWITCH}=0)")
    else:
        entries = sum(1 for _ in cache.iterdir()) if cache.is_dir() else 0
        print(f"compile cache  {cache} ({entries} entries)")
    return 0


def dataset(argv: Sequence[str]) -> int:
    """`psec-jax dataset NAME`: generate (or find in the cache) a named offline dataset."""
    import argparse

    parser = argparse.ArgumentParser(
        prog=f"{PROG} dataset",
        description="Generate a named dataset from the committed behaviour policies (cached; "
                    "names: {env}[:{variant}]-{kind}[-{N}traj], e.g. walker-walk-expert-10traj).")
    parser.add_argument("name", help="dataset name")
    parser.add_argument("--seed", type=int, default=0, help="rollout seed (default 0)")
    parser.add_argument("--noise", type=float, default=0.0, help="std of Gaussian action noise")
    parser.add_argument("--regenerate", action="store_true", help="regenerate even if cached")
    parser.add_argument("--dir", default=None, help="cache directory (default $PSEC_JAX_DATA_DIR "
                        "or ~/.cache/psec_jax/datasets)")
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as e:
        return int(e.code or 0)
    from psec_jax import compilation_cache
    from psec_jax.data import datasets, formats

    try:
        datasets.parse(args.name, seed=args.seed, noise=args.noise)
    except ValueError as e:
        raise UsageError(str(e)) from None
    compilation_cache.enable()
    from psec_jax.data import behavior

    try:
        path = datasets.get(args.name, seed=args.seed, noise=args.noise, regenerate=args.regenerate,
                            directory=args.dir)
    except behavior.PolicyError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    data, meta = formats.load_d4rl(path)
    print(f"{path}\n  {meta['num_transitions']} transitions, {meta['num_episodes']} episodes, "
          f"return {meta['return_mean']:.1f} +- {meta['return_std']:.1f}, "
          f"episode cost {meta['cost_mean']:.1f}")
    return 0


def _config_path(argv: Sequence[str]) -> str | None:
    """The value of --config in ``argv`` (``--config=P`` or ``--config P``), or None."""
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def _check_config_file(value: str) -> None:
    path = value
    if not os.path.isfile(path) and ":" in value:  # config_flags passes `path:arg` on to get_config(arg)
        path = value.split(":", 1)[0]
    if not os.path.isfile(path):
        raise UsageError(f"config file not found: {path}")


def _unknown_field(name: str, field: str, argv: Sequence[str], config_value: str) -> str:
    culprit = [a for a in argv if a.startswith("--config.") and field in a.split("=", 1)[0].split(".")]
    where = culprit[0] if culprit else f"field {field!r}"
    return f"{name}: unknown config field {field!r} in {where} (config {config_value})"


def parse_experiment_flags(name: str, argv: Sequence[str]):
    """Parses an experiment's flags; returns ``(config, workdir, flag_values)`` or raises UsageError."""
    from absl import flags
    from ml_collections import config_flags

    fv = flags.FlagValues()
    config_flags.DEFINE_config_file(
        "config", None, "ml-collections config file; --config.FIELD=VALUE overrides a field.",
        flag_values=fv, lock_config=True, sys_argv=[f"{PROG} {name}", *argv],  # not sys.argv: main(argv) is callable
    )
    flags.DEFINE_string("workdir", None, "Run directory (config, metrics, checkpoints).", flag_values=fv)
    flags.DEFINE_boolean("compilation_cache", True, "Use JAX's persistent compilation cache.", flag_values=fv)
    flags.DEFINE_string("compilation_cache_dir", None, "Compilation cache directory.", flag_values=fv)

    if any(a in ("-h", "--help", "--helpfull") for a in argv):
        print(f"usage: {PROG} {name} --config=PATH [--config.FIELD=VALUE ...] --workdir=DIR\n")
        print(fv.get_help())
        raise SystemExit(0)

    config_value = _config_path(argv)
    if config_value is None:
        raise UsageError(f"{name}: --config is required (e.g. --config={EXPERIMENTS[name].default_config})")
    _check_config_file(config_value)
    try:
        extra = fv([f"{PROG} {name}", *argv])  # override flags are defined while --config is parsed
    except flags.UnrecognizedFlagError as e:
        if e.flagname.startswith("config."):
            raise UsageError(_unknown_field(name, e.flagname.split(".")[-1], argv, config_value)) from None
        raise UsageError(f"{name}: {e}") from None
    except flags.Error as e:
        raise UsageError(f"{name}: {e}") from None
    except (AttributeError, KeyError) as e:  # a locked ConfigDict refusing an unknown nested field
        raise UsageError(_unknown_field(name, str(e).strip("'\""), argv, config_value)) from None
    except Exception as e:  # an error raised while executing the config file itself
        raise UsageError(f"{name}: could not load config {config_value}: {type(e).__name__}: {e}") from None
    if len(extra) > 1:
        raise UsageError(f"{name}: unexpected positional arguments: {' '.join(extra[1:])}")
    try:
        config = fv.config
        config.get("__probe__")  # an unloadable file surfaces here as IOError
    except IOError as e:
        raise UsageError(f"{name}: could not load config {config_value}: {e}") from None
    if not fv.workdir:
        raise UsageError(f"{name}: --workdir is required")
    return config, fv.workdir, fv


def run_experiment(name: str, argv: Sequence[str]) -> int:
    """Parses flags, enables the compilation cache, and runs ``EXPERIMENTS[name].module.main``."""
    config, workdir, fv = parse_experiment_flags(name, argv)
    from psec_jax import compilation_cache

    if fv.compilation_cache_dir:
        compilation_cache.enable(fv.compilation_cache_dir)
    elif fv.compilation_cache:
        compilation_cache.enable()
    from psec_jax.checkpoint import CheckpointError

    module = importlib.import_module(EXPERIMENTS[name].module)
    Path(workdir).mkdir(parents=True, exist_ok=True)
    try:
        module.main(config, workdir)
    except CheckpointError as e:  # e.g. resuming a workdir with another config: say so in one line
        print(f"{PROG} {name}: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
