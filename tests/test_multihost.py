"""Two local processes (CPU collectives, `jax.distributed`) train the tiny LM together and agree."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from psec_jax import cli
from psec_jax.parallel import distributed

HERE = Path(__file__).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_train_the_tiny_lm_and_agree(tmp_path):
    env = {
        **os.environ,
        "JAX_COORDINATOR_ADDRESS": f"localhost:{free_port()}",
        "JAX_NUM_PROCESSES": "2",
        "PSEC_JAX_DATA_DIR": str(tmp_path / "data"),
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": str(HERE.parent),
    }
    env.pop("XLA_FLAGS", None)  # one CPU device per process
    workdir = tmp_path / "run"
    procs = [
        subprocess.Popen(
            [sys.executable, str(HERE / "multihost_worker.py"), str(workdir)],
            cwd=HERE.parent,
            env={**env, "JAX_PROCESS_ID": str(i)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=900)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("the 2-process run did not finish in 15 minutes")
        assert p.returncode == 0, f"process exited {p.returncode}:\n{out[-3000:]}\n{err[-5000:]}"
        outs.append(out)
    summaries = [
        json.loads(line[len("SUMMARY ") :]) for out in outs for line in out.splitlines() if line.startswith("SUMMARY ")
    ]
    assert [s["process"] for s in summaries] == [0, 1] and {s["devices"] for s in summaries} == {2}
    assert summaries[0]["summary"] == summaries[1]["summary"]  # the same global results on both processes
    saved = json.loads((workdir / "results.json").read_text())
    assert saved["summary"]["top_p_val_loss"] == summaries[0]["summary"]["top_p_val_loss"]
    stage = workdir / "stages" / "top_p"
    assert (stage / "metrics.jsonl").is_file() and "model:" in outs[0] and "model:" not in outs[1]
    assert len((stage / "metrics.jsonl").read_text().splitlines()) == 2  # 2 chunks, written once (process 0)
    assert sorted(p.name for p in (stage / "checkpoints").iterdir() if p.name.isdigit()) == ["4", "8"]


def test_multi_process_settings_come_from_flags_or_environment_and_are_checked(monkeypatch):
    for var in distributed.ENV.values():
        monkeypatch.delenv(var, raising=False)
    assert distributed.settings() is None  # a single-process run
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "host0:1234")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "4")
    assert distributed.settings(process_id=3) == {
        "coordinator_address": "host0:1234",
        "num_processes": 4,
        "process_id": 3,
    }
    with pytest.raises(ValueError, match=r"needs --process_id \(or \$JAX_PROCESS_ID\) as well"):
        distributed.settings()
    with pytest.raises(ValueError, match="0 <= process_id < num_processes, got 4 and 4"):
        distributed.settings(process_id=4)
    with pytest.raises(ValueError, match="coordinator_address must be host:port"):
        distributed.settings("host0", 2, 0)


def test_cli_rejects_an_incomplete_multi_process_command(tmp_path, capsys, monkeypatch):
    for var in distributed.ENV.values():
        monkeypatch.delenv(var, raising=False)
    code = cli.main(["smoke", "--config=psec_jax/configs/smoke.py", f"--workdir={tmp_path / 'w'}", "--num_processes=2"])
    assert code == 2
    assert "needs --coordinator_address (or $JAX_COORDINATOR_ADDRESS), --process_id" in capsys.readouterr().err
