"""benchmarks/device_check.py, the script for a lent GPU: its dry run (CPU, tiny shapes) writes every
step's JSON, and its orchestration (timeouts that kill a step's processes, skips, failures) holds."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("device_check", ROOT / "benchmarks" / "device_check.py")
device_check = importlib.util.module_from_spec(_spec)
sys.modules["device_check"] = device_check  # its dataclass looks its module up there
_spec.loader.exec_module(device_check)

# The steps each default run checks: the MoE step's dry run spends ~10-25 s measuring the matmul and
# bandwidth ceilings, so it runs with the whole dry run under `slow`.
QUICK = ["device", "accelerator_tests", "lm", "psec"]


def dry_run(out: Path, only: list[str] | None) -> dict:
    """Runs the dry run as a user would (through the .sh); returns device_check.json."""
    cmd = ["bash", str(ROOT / "benchmarks" / "device_check.sh"), "--dry-run", "--out", str(out)]
    done = subprocess.run(cmd + (["--only", *only] if only else []), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads((out / "device_check.json").read_text())


def check_steps(out: Path, summary: dict, names: list[str]) -> None:
    assert list(summary["steps"]) == names
    assert summary["card"] == "cpu" and summary["device"]["backend"] == "cpu"
    for name in names:
        record = json.loads((out / f"{name}.json").read_text())
        step = next(s for s in device_check.STEPS if s.name == name)
        if record["status"] == "skipped":  # only a benchmark still being written may be missing
            assert step.script and not (ROOT / step.script).exists(), record
            continue
        assert record["status"] == "passed", record
        assert record["results"] and record["device_kind"] == "cpu", record
        assert all("unreadable" not in r for r in record["results"].values())
    tests = json.loads((out / "accelerator_tests.json").read_text())["results"]["junit.json"]
    assert tests["counts"]["skipped"] == len(tests["tests"]) >= 3  # on CPU every accelerator test skips
    assert len(list(out.iterdir())) <= 8  # what the device tool sends back


def test_dry_run_writes_each_steps_json(tmp_path):
    check_steps(tmp_path, dry_run(tmp_path, QUICK), QUICK)


@pytest.mark.slow
def test_whole_dry_run(tmp_path):
    summary = dry_run(tmp_path, None)
    check_steps(tmp_path, summary, [s.name for s in device_check.STEPS])
    moe = json.loads((tmp_path / "moe.json").read_text())["results"]["moe_throughput.json"]
    assert moe["rows"] and moe["complete"]


def test_a_hung_step_is_killed_and_the_others_still_run(tmp_path, monkeypatch, capsys):
    """A step past its timeout is stopped with its children; a missing script is skipped; a step that
    exits 0 without JSON fails; the run's budget skips what it cannot fit."""
    pid_file = tmp_path / "child.pid"
    hang = (
        "-c 'import subprocess, sys, time; "
        'child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"]); '
        f'open("{pid_file}", "w").write(str(child.pid)); time.sleep(300)\''
    )
    write = '-c \'import sys; open(sys.argv[1] + "/r.json", "w").write("{{}}")\' {out}'
    steps = (
        device_check.Step("hangs", hang, hang, 3),
        device_check.Step("missing", "x.py", "x.py", 30, script="benchmarks/no_such_benchmark.py"),
        device_check.Step("no_json", "-c pass", "-c pass", 30),
        device_check.Step("writes", write, write, 30),
    )
    monkeypatch.setattr(device_check, "STEPS", steps)
    start = time.monotonic()
    assert device_check.main(["--dry-run", "--out", str(tmp_path / "out")]) == 1
    assert time.monotonic() - start < 30
    summary = json.loads((tmp_path / "out" / "device_check.json").read_text())
    status = {name: s["status"] for name, s in summary["steps"].items()}
    assert status == {"hangs": "timeout", "missing": "skipped", "no_json": "failed", "writes": "passed"}
    assert "failed: hangs, no_json" in capsys.readouterr().out
    child = int(pid_file.read_text())
    for _ in range(50):  # the orphaned grandchild is reaped by init shortly after its kill
        state = Path(f"/proc/{child}/stat")
        if not state.exists() or state.read_text().split(")")[1].split()[0] == "Z":
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"the hung step's child {child} still runs")
    assert device_check.main(["--dry-run", "--out", str(tmp_path / "short"), "--budget", "12"]) == 1
    summary = json.loads((tmp_path / "short" / "device_check.json").read_text())
    assert summary["steps"]["hangs"]["status"] == "timeout"
    assert {s["reason"] for n, s in summary["steps"].items() if n != "hangs"} == {
        "benchmarks/no_such_benchmark.py does not exist",
        "the run's budget is spent",
    }


def test_device_commands_name_existing_flags():
    """The device commands never run here: each of their flags must at least be one the benchmark defines."""
    for step in device_check.STEPS:
        if not step.script or not (ROOT / step.script).exists():
            continue
        text = (ROOT / step.script).read_text()
        for flag in (a.split("=")[0] for a in step.device.split() + step.dry.split() if a.startswith("--")):
            assert f'"{flag}"' in text, f"{step.name}: {flag} is not an option of {step.script}"
