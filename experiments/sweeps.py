"""What the experiment sweeps share: run one `psec-jax` command (it resumes its finished stages) and copy
its results next to the others with the command that made them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
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
