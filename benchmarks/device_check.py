"""The few minutes on a lent GPU: accelerator tests and the GPU rows of the MoE, LM and PSEC benchmarks.

    bash benchmarks/device_check.sh                 # on the device machine: results into $OUT
    .venv/bin/python benchmarks/device_check.py --dry-run --out /tmp/dc   # here: CPU, tiny shapes

Runs each step of `STEPS` in its own process, in order, under its own timeout (and never past the
whole run's `--budget`, 470 s by default, so the run ends inside 8 minutes), its process group killed
when the time is up so one hung step cannot eat the others' time. A step writes its JSON into a work
directory; then `<out>/<step>.json` holds its status (passed / failed / timeout / skipped), seconds,
command, the JSON files it wrote (parsed) and the tail of its log, and `<out>/device_check.json` the
card (jax's `device_kind` and nvidia-smi's name), versions and every step's status. All output also
goes to `<out>/device_check.log`. That is 8 files at most, as the device tool sends back.

`--dry-run` runs every step on CPU (`JAX_PLATFORMS=cpu`) with tiny shapes, each a few seconds, so the
script is known to work before a device is lent (tests/test_device_check.py). Steps whose script is
missing (the LM benchmark, while it is being written) are skipped, not failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclasses.dataclass(frozen=True)
class Step:
    """One step: its command after the Python interpreter on a GPU and in the dry run ({out}: its work
    directory), its timeout on the device, and the script that must exist for it to run."""

    name: str
    device: str
    dry: str
    timeout_s: float
    script: str | None = None


PYTEST = "-m pytest -m accelerator tests/test_accelerator.py -p no:cacheprovider -q --junitxml={out}/junit.xml"
LM = "benchmarks/lm_train_throughput.py --sides jax --out_dir {out}"  # PyTorch there would run on the CPU
MOE = "benchmarks/moe_throughput.py --no_torch --malloc default --out {out}/moe_throughput"
STEPS = (
    Step("device", "benchmarks/device_check.py --probe {out}", "benchmarks/device_check.py --probe {out}", 45),
    Step("accelerator_tests", PYTEST, PYTEST, 85),  # on CPU they skip themselves: the dry run checks the plumbing
    # the target point (E=16, d=1024, T 256..16k) at top-p 0.4; each (T, mode) gets 15 s of turns, and
    # the JSON is rewritten after every T, so a step stopped at its timeout keeps the rows it measured
    Step(
        "moe",
        f"{MOE} --grid target --routers top_p0.4 --backends capacity dropless ragged",
        f"{MOE} --grid quick --routers top1 --routing_only --no_fused",
        120,
        "benchmarks/moe_throughput.py",
    ),
    Step(
        "lm",
        f"{LM} --presets medium --steps 20",
        f"{LM} --presets tiny --routers top_p --steps 2 --reps 1",
        80,
        "benchmarks/lm_train_throughput.py",
    ),
    Step(
        "psec",
        "benchmarks/psec_train_throughput.py --sizes paper --batches 2048 --steps 100 --reps 3 --out {out}/psec.json",
        "benchmarks/psec_train_throughput.py --quick --stages pretrain --out {out}/psec.json",
        95,
        "benchmarks/psec_train_throughput.py",
    ),
    # a skill library of K LoRA skills composed densely vs routed top-p (issue 36), K up to 256
    Step(
        "routed",
        "benchmarks/routed_skills.py --ks 16 64 256 --sharpness 8 --reps 3 --out_dir {out}",
        "benchmarks/routed_skills.py --ks 4 --network tiny --batch 16 --sharpness 8 --reps 1 --out_dir {out}",
        45,
        "benchmarks/routed_skills.py",
    ),
)


def probe(out: Path) -> None:
    """The device as jax sees it, in its own process (importing jax here would hold the GPU's memory)."""
    import jax

    devices = jax.devices()
    record = {
        "backend": jax.default_backend(),
        "device_kind": devices[0].device_kind,
        "devices": [str(d) for d in devices],
        "jax": jax.__version__,
        "python": platform.python_version(),
    }
    (out / "device.json").write_text(json.dumps(record, indent=1))
    print(json.dumps(record))


def nvidia_smi() -> dict | None:
    """nvidia-smi's name, memory and driver of the first GPU (None without one)."""
    if shutil.which("nvidia-smi") is None:
        return None
    query = "--query-gpu=name,memory.total,driver_version"
    try:
        line = subprocess.run(
            ["nvidia-smi", query, "--format=csv,noheader"], capture_output=True, text=True, timeout=20, check=True
        ).stdout.splitlines()[0]
    except (subprocess.SubprocessError, IndexError, OSError):
        return None
    name, memory, driver = (s.strip() for s in line.split(",", 2))
    return {"name": name, "memory": memory, "driver": driver}


def junit_summary(path: Path) -> dict:
    """pytest's junit XML as {tests: {id: outcome}, counts} (outcomes: passed, failed, error, skipped)."""
    import xml.etree.ElementTree as ET

    tests = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome = next((c.tag for c in case if c.tag in ("failure", "error", "skipped")), "passed")
        tests[f"{case.get('classname')}::{case.get('name')}"] = {"failure": "failed"}.get(outcome, outcome)
    counts = {o: sum(v == o for v in tests.values()) for o in ("passed", "failed", "error", "skipped")}
    return {"tests": tests, "counts": counts}


def run_step(step: Step, command: str, work: Path, timeout: float, env: dict, log) -> dict:
    """Runs one step in its own process group; returns its record (without the results)."""
    cmd = [sys.executable, *shlex.split(command.format(out=work))]
    log.write(f"\n===== {step.name}: {' '.join(cmd)} (timeout {timeout:.0f} s)\n")
    log.flush()
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        rc = proc.wait(timeout=timeout)
        status = "passed" if rc == 0 else "failed"
    except subprocess.TimeoutExpired:
        for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, None)):  # the step's group: it and its children
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=grace)
                break
            except subprocess.TimeoutExpired:
                continue
        rc, status = proc.wait(), "timeout"
    return {"status": status, "returncode": rc, "seconds": round(time.monotonic() - start, 1), "command": cmd}


def collect(step: Step, work: Path) -> dict:
    """The JSON a step wrote into its work directory, by file name (junit XML converted)."""
    results = {}
    for path in sorted(work.glob("*.json")):
        try:
            results[path.name] = json.loads(path.read_text())
        except ValueError as err:
            results[path.name] = {"unreadable": str(err)}
    if (work / "junit.xml").exists():
        results["junit.json"] = junit_summary(work / "junit.xml")
    return results


def tail(path: Path, marker: str, lines: int = 40) -> list[str]:
    """The last lines of one step's section of the log."""
    text = path.read_text(errors="replace")
    return text[text.rfind(marker) :].splitlines()[-lines:]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes: checks every step here")
    p.add_argument("--out", default=os.environ.get("OUT"), help="results directory (default $OUT)")
    p.add_argument("--budget", type=float, default=470.0, help="seconds for the whole run")
    p.add_argument("--only", nargs="*", choices=[s.name for s in STEPS], help="run these steps alone")
    p.add_argument("--probe", metavar="DIR", help=argparse.SUPPRESS)  # the device step, run in a child
    args = p.parse_args(argv)
    if args.probe:
        probe(Path(args.probe))
        return 0
    if not args.out:
        p.error("--out is required where $OUT is not set")
    deadline = time.monotonic() + args.budget
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work_root = Path(tempfile.mkdtemp(prefix="device_check_"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    env["PYTHONUNBUFFERED"] = "1"
    if args.dry_run:
        env["JAX_PLATFORMS"] = "cpu"
    log_path = out / "device_check.log"
    summary = {
        "dry_run": args.dry_run,
        "nvidia_smi": nvidia_smi(),
        "host": platform.node(),
        "python": platform.python_version(),
        "budget_s": args.budget,
        "steps": {},
    }
    card = None
    with log_path.open("w") as log:
        for step in STEPS:
            if args.only is not None and step.name not in args.only:
                continue
            work = work_root / step.name
            work.mkdir()
            left = deadline - time.monotonic()
            if step.script and not (ROOT / step.script).exists():
                record = {"status": "skipped", "reason": f"{step.script} does not exist"}
            elif left < 10:
                record = {"status": "skipped", "reason": "the run's budget is spent"}
            else:
                record = run_step(
                    step, step.dry if args.dry_run else step.device, work, min(step.timeout_s, left), env, log
                )
                log.flush()
                record["results"] = collect(step, work)
                record["log_tail"] = tail(log_path, f"===== {step.name}:")
                if record["status"] == "passed" and not record["results"]:
                    record["status"], record["reason"] = "failed", "exited 0 but wrote no JSON"
                junit = record["results"].get("junit.json", {}).get("counts", {})
                if junit.get("failed") or junit.get("error"):
                    record["status"] = "failed"
            if step.name == "device" and "device.json" in record.get("results", {}):
                card = record["results"]["device.json"]
            record = {"step": step.name, "device_kind": card and card["device_kind"], **record}
            (out / f"{step.name}.json").write_text(json.dumps(record, indent=1, default=str))
            summary["steps"][step.name] = {k: record.get(k) for k in ("status", "seconds", "returncode", "reason")}
            print(f"{step.name:<18} {record['status']:<8} {record.get('seconds', 0):7.1f} s", flush=True)
    summary["device"] = card
    summary["card"] = (summary["nvidia_smi"] or {}).get("name") or (card or {}).get("device_kind")
    (out / "device_check.json").write_text(json.dumps(summary, indent=1))
    bad = [n for n, s in summary["steps"].items() if s["status"] in ("failed", "timeout")]
    print(f"card: {summary['card']}; {'failed: ' + ', '.join(bad) if bad else 'every step passed or was skipped'}")
    shutil.rmtree(work_root, ignore_errors=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
