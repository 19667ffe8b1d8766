"""What the experiment sweeps share: their command line, and running one `psec-jax` command (it resumes its
finished stages) and copying its results next to the others with the command that made them."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path


def run_and_record(cmd: list[str], workdir: Path, results: Path, name: str) -> dict:
    """Runs ``cmd`` (``psec-jax ...`` from this interpreter's environment), then copies ``workdir``'s
    results.{json,md,png} to ``results/<name>.*`` with the command added to the JSON. Returns that JSON."""
    results.mkdir(parents=True, exist_ok=True)
    print("$", " ".join(cmd), flush=True)
    subprocess.run([str(Path(sys.executable).parent / cmd[0]), *cmd[1:]], check=True)
    for ext in ("json", "md", "png"):
        shutil.copyfile(workdir / f"results.{ext}", results / f"{name}.{ext}")
    saved = json.loads((results / f"{name}.json").read_text())
    saved["command"] = " ".join(cmd)
    (results / f"{name}.json").write_text(json.dumps(saved, indent=1) + "\n")
    return saved


def parse(
    prog: str, doc: str | None, actions: tuple[str, ...], runs: dict, root: str, argv: list[str] | None
) -> argparse.Namespace:
    """A sweep's command line: ``action`` (one of ``actions``), run ``names`` (each a key of ``runs``: an
    unknown one is a usage error) and ``--root``, the parent of the runs' workdirs."""
    parser = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=actions)
    parser.add_argument("names", nargs="*", help="runs (see `list`)")
    parser.add_argument("--root", default=root, help="parent of the runs' workdirs")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in runs]
    if unknown:
        parser.error(f"unknown runs {unknown}; `list` shows them")
    return args


def print_commands(runs: dict, command: Callable[[str, Path], list[str]], root: Path) -> None:
    """One line per run: its name and its command line with the workdir under ``root``."""
    width = max(map(len, runs)) + 2
    for name in runs:
        print(f"{name:<{width}}{' '.join(command(name, root))}")
