"""The ``psec-jax`` command line (also ``python -m psec_jax``).

    psec-jax info                                   versions, devices, compilation cache
    psec-jax <experiment> --config=<name>[:<preset>] [--config.field=value ...] --workdir=DIR

The experiments are the table in ``psec_jax.registry`` (each has ``run(config, workdir) -> dict`` and
``check_config(config)``). Configs are the shipped ``psec_jax/configs/<name>.py`` by name, or any
ml-collections ``get_config()`` file by path, locked, so an override of a field that does not exist is an
error, and must have exactly the fields of the experiment's default config. Every expected failure is
one line on stderr: exit 2 for mistakes in the command (flags, config, workdir), 1 for unusable
checkpoints, datasets or saved artifacts, 130 for Ctrl-C.
"""

from __future__ import annotations

import logging
import platform
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

from psec_jax import failures, registry, signals
from psec_jax.experiment_flags import PROG, UsageError
from psec_jax.experiment_flags import parse as _parse_flags
from psec_jax.registry import EXPERIMENTS

# Packages whose versions `psec-jax info` reports.
_PACKAGES = (
    "psec_jax",
    "jax",
    "jaxlib",
    "flax",
    "optax",
    "orbax-checkpoint",
    "brax",
    "mujoco",
    "mujoco-mjx",
    "playground",
    "ml-collections",
    "numpy",
    "h5py",
)


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
        "  --config=NAME[:PRESET]     a shipped config (or PATH[:PRESET] of a config file; required), e.g. "
        + next(iter(EXPERIMENTS.values())).default_config,
        "  --config.FIELD=VALUE       override a config field (the field must exist)",
        "  --workdir=DIR              where the run writes config.json, metrics.jsonl, checkpoints/",
        "  --[no]compilation_cache    JAX persistent compilation cache (default: on)",
        "  --compilation_cache_dir=D  cache location (default: $PSEC_JAX_CACHE_DIR or ~/.cache/psec_jax/jax)",
        "  --coordinator_address=H:P  multi-process run (with --num_processes, --process_id; "
        "or $JAX_COORDINATOR_ADDRESS,",
        "                             $JAX_NUM_PROCESSES, $JAX_PROCESS_ID): jax.distributed.initialize",
        "",
        f"`{PROG} <command> --help` lists a command's flags.",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line ``argv`` (default ``sys.argv[1:]``); returns the exit code. SIGINT,
    SIGTERM and SIGHUP stop it at any moment with one line and 128 + the signal number."""
    argv = list(sys.argv[1:] if argv is None else argv)
    with signals.handled():
        try:
            return _main(argv)
        except KeyboardInterrupt as e:  # info, or dataset (whose files are replaced atomically)
            signum = getattr(e, "signum", None) or signals.received()
            _say(f"{PROG}: interrupted by {signals.name(signals.exit_code(signum) - 128)}; nothing was written")
            return signals.exit_code(signum)


def _say(line: str) -> None:
    """The one line of an expected failure on stderr (a closed terminal cannot turn it into a traceback)."""
    try:
        print(line, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


def _main(argv: list[str]) -> int:
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
        _say(f"{PROG}: error: {e}")
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
        why = f"{compilation_cache.ENV_SWITCH}=0" if not compilation_cache.enabled_by_env() else "not usable"
        print(f"compile cache  off ({why})")
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
        "names: {env}[:{variant}]-{kind}[-{N}traj], e.g. walker-walk-expert-10traj).",
    )
    parser.add_argument("name", help="dataset name")
    parser.add_argument("--seed", type=int, default=0, help="rollout seed (default 0)")
    parser.add_argument("--noise", type=float, default=0.0, help="std of Gaussian action noise")
    parser.add_argument("--regenerate", action="store_true", help="regenerate even if cached")
    parser.add_argument(
        "--dir", default=None, help="cache directory (default $PSEC_JAX_DATA_DIR or ~/.cache/psec_jax/datasets)"
    )
    moves = parser.add_mutually_exclusive_group()
    moves.add_argument(
        "--export",
        metavar="DIR",
        default=None,
        help="copy the dataset and its checksum "
        "record to DIR (the exact bytes, for a machine that would generate others)",
    )
    moves.add_argument(
        "--import",
        dest="import_file",
        metavar="FILE",
        default=None,
        help="install FILE, written by --export (its .sha256 beside it), into the cache as this dataset",
    )
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

    request = dict(seed=args.seed, noise=args.noise, directory=args.dir)
    try:
        if args.import_file:
            path = datasets.import_(args.import_file, args.name, **request)
        else:
            path = datasets.get(args.name, regenerate=args.regenerate, **request)
        if args.export:
            path = datasets.export(args.name, args.export, **request)
    except (behavior.PolicyError, formats.DatasetError) as e:
        _say(f"{PROG}: error: {' '.join(str(e).split())}")
        return 1
    data, meta = formats.load_d4rl(path)
    print(
        f"{path}\n  {meta['num_transitions']} transitions, {meta['num_episodes']} episodes, "
        f"return {meta['return_mean']:.1f} +- {meta['return_std']:.1f}, "
        f"episode cost {meta['cost_mean']:.1f}"
    )
    return 0


def parse_experiment_flags(name: str, argv: Sequence[str]):
    """Parses and checks an experiment's flags; returns ``(config, workdir, flag_values)`` or raises
    UsageError (``psec_jax.experiment_flags``)."""
    return _parse_flags(name, argv, EXPERIMENTS[name])


def run_experiment(name: str, argv: Sequence[str]) -> int:
    """Parses and checks flags and config, prepares and locks the workdir, refuses one that holds another
    run's records, enables the compilation cache, and runs the experiment's ``run`` (``psec_jax.registry``); records
    the config in the workdir's ``config.json`` once it ran. Expected failures are one line on stderr:
    exit 2 for mistakes in the command (flags, config, workdir), 1 for unusable checkpoints, datasets,
    metrics or artifacts, a workdir holding another run's records, and the machine refusing (disk, file
    size, permissions, memory), 128 + the signal for SIGINT / SIGTERM / SIGHUP (after the training loop
    checkpointed what it had)."""
    from psec_jax import workdir as workdir_lib

    workdir = None  # until the workdir is prepared, a stop has written nothing
    quiet = failures.OrbaxErrorsReported()
    logging.getLogger("absl").addFilter(quiet)
    try:
        config, fv, module = _start(name, argv)
        workdir = workdir_lib.prepare(fv.workdir)  # (a WorkdirError is a UsageError, below)
        with workdir_lib.lock(workdir):
            from psec_jax import loop

            may_change = getattr(module, "RESUME_MAY_CHANGE", ())
            loop.check_workdir_config(workdir, config, may_change)  # before any data is generated
            if not loop.holds_records(workdir):  # a run stopped halfway resumes against it
                _record_config(workdir, config)
            module.run(config, str(workdir))
            _record_config(workdir, config)
    except workdir_lib.RecordsConflict as e:  # as resuming a checkpoint with another config: exit 1
        _say(f"{PROG} {name}: error: {e}")
        return 1
    except workdir_lib.WorkdirError as e:
        raise UsageError(f"{name}: {e}") from None
    except KeyboardInterrupt as e:  # loop.Interrupted says what was saved
        from psec_jax import loop

        signum = getattr(e, "signum", None) or signals.received()
        by = f"interrupted by {signals.name(signals.exit_code(signum) - 128)}"
        if isinstance(e, loop.Interrupted):
            text = str(e)
        elif workdir is None:
            text = f"{by} before the run started; nothing was written"
        else:
            text = (
                f"{by}; every finished stage and checkpoint in {workdir} is kept (rerun to resume)"
                if loop.holds_records(workdir)
                else f"{by} before anything was saved in {workdir}"
            )
        _say(f"{PROG} {name}: {text}")
        return signals.exit_code(signum)
    except _expected_errors() as e:  # e.g. resuming a workdir with another config: say so in one line
        _say(f"{PROG} {name}: error: {' '.join(str(e).split())}")
        return 1
    except Exception as e:  # the machine refusing (disk, file size, permissions, memory), else a bug
        problem = failures.environment_failure(e)
        if problem is None:
            raise
        _say(f"{PROG} {name}: error: {problem}")
        return 1
    finally:
        logging.getLogger("absl").removeFilter(quiet)
    if signals.received():  # stopped after the last chunk, by a signal something swallowed
        _say(
            f"{PROG} {name}: interrupted by {signals.name(signals.received())} after the run finished; "
            f"its results in {workdir} are complete"
        )
        return signals.exit_code()
    return 0


def _start(name: str, argv: Sequence[str]):
    """Flags and config, the experiment's module, multi-process set-up, the compilation cache and the
    experiment's ``check_devices`` (if it has one): ``(config, flag_values, module)``; UsageError for
    mistakes."""
    with signals.deferred():  # a signal inside a C extension's import (jax, the simulators) crashed Python
        config, _, fv = parse_experiment_flags(name, argv)  # (imports the experiment to check its config)
        from psec_jax import compilation_cache
        from psec_jax.parallel import distributed

        module = registry.load(name)
    try:  # before anything starts the backend
        distributed.initialize(fv.coordinator_address, fv.num_processes, fv.process_id)
    except ValueError as e:
        raise UsageError(f"{name}: {e}") from None
    if fv.compilation_cache_dir:
        compilation_cache.enable(fv.compilation_cache_dir)
    elif fv.compilation_cache:
        compilation_cache.enable()
    check_devices = getattr(module, "check_devices", None)
    if check_devices is not None:  # the config against the devices, before the workdir is touched
        try:
            check_devices(config)
        except ValueError as e:
            raise UsageError(f"{name}: {e}") from None
    return config, fv, module


def _record_config(workdir: Path, config) -> None:
    """Writes the config of the run to the workdir's ``config.json``: at the start of a workdir without
    records (a PSEC or LM run stopped halfway resumes against it; a config.json without records refuses
    nothing, so a corrected config can follow a run stopped at start-up), and after the run (where it
    changed fields a rerun may change). Where there are records, their config.json is what the checks
    before and the training loop's own compare with, and a refused run leaves it as it was."""
    from psec_jax import runs
    from psec_jax.parallel import distributed

    if distributed.is_main():
        runs.save_config(workdir, config)


def _expected_errors() -> tuple[type[Exception], ...]:
    """Errors about the user's files (checkpoints, saved artifacts) rather than bugs: one line, exit 1."""
    from psec_jax.artifacts import ArtifactError
    from psec_jax.checkpoint import CheckpointError
    from psec_jax.data.formats._common import DatasetError
    from psec_jax.lora.library import LibraryError
    from psec_jax.models.compare import ComparisonError
    from psec_jax.models.text import TextDataError
    from psec_jax.runs import MetricsError

    return CheckpointError, ArtifactError, LibraryError, DatasetError, MetricsError, TextDataError, ComparisonError


if __name__ == "__main__":
    sys.exit(main())
