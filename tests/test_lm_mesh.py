"""A mesh is an ordinary run option: `psec-jax lm_moe --config.mesh.expert=4 ...` on 8 emulated devices,
through the command line in fresh processes, gives the losses one device gives, resuming a one-device
checkpoint into the sharded layout."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np

# one stage (top-p, one seed) of 8 steps in chunks of 4, a checkpoint after each chunk
FLAGS = [
    "--config=lm_moe:tiny",
    "--config.train.routers=top_p",
    "--config.train.sweep_p=()",
    "--config.data.batch_size=8",
]
EIGHT = (
    "--xla_force_host_platform_device_count=8 --xla_cpu_collective_call_terminate_timeout_seconds=300 "
    "--xla_cpu_collective_timeout_seconds=300"
)


def cli(*args, devices=1):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    if devices == 8:
        env["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {EIGHT}"
    return subprocess.run(
        [sys.executable, "-m", "psec_jax", "lm_moe", *FLAGS, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def records(workdir):
    lines = (workdir / "stages" / "top_p" / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_lm_on_an_eight_device_mesh_from_the_cli_gives_the_one_device_losses(tmp_path):
    one, mesh = tmp_path / "one", tmp_path / "mesh"
    out = cli(f"--workdir={one}")
    assert out.returncode == 0, out.stderr[-3000:]
    # the sharded run resumes the one-device run's step-4 checkpoint (restored into the mesh's layout)
    shutil.copytree(one, mesh)
    stage = mesh / "stages" / "top_p"
    shutil.rmtree(stage / "checkpoints" / "8")
    (stage / "final_eval.json").unlink()
    (stage / "metrics.jsonl").write_text((stage / "metrics.jsonl").read_text().splitlines()[0] + "\n")
    out = cli(f"--workdir={mesh}", "--config.mesh.fsdp=2", "--config.mesh.expert=4", devices=8)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "mesh: data 1 x fsdp 2 x expert 4 x model 1" in out.stdout
    assert "resuming at step 4 of 8" in out.stdout + out.stderr
    a, b = records(one), records(mesh)
    assert [r["step"] for r in b] == [4, 8]
    losses = sorted(k for k in a[-1] if "loss" in k.split("/")[0])
    assert len(losses) >= 5
    np.testing.assert_allclose([b[-1][k] for k in losses], [a[-1][k] for k in losses], rtol=1e-5, atol=1e-6)
    fa, fb = (
        json.loads((w / "stages" / "top_p" / "final_eval.json").read_text())["members"]["seed0"] for w in (one, mesh)
    )
    for key in ("val_loss", "task_loss"):
        np.testing.assert_allclose(fb[key], fa[key], rtol=1e-5)
    # a mesh the devices cannot form is one line before anything is built
    out = cli(f"--workdir={tmp_path / 'bad'}", "--config.mesh.expert=3", devices=8)
    assert out.returncode == 2 and out.stderr.strip().splitlines() == [
        "psec-jax: error: lm_moe: config.mesh: mesh data=-1 x fsdp=1 x expert=3 x model=1: the fixed axes take 3 "
        "devices, which does not divide the 8 devices available"
    ]
