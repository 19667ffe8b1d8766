"""A mesh is an ordinary run option: `psec-jax lm_moe --config.mesh.expert=4 ...` on 8 emulated devices,
through the command line in fresh processes, gives the losses one device gives, for a stage initialised
sharded and for one resumed from a one-device checkpoint restored into the sharded layout."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np

# two stages (top-1, top-p; one seed each) of 8 steps in chunks of 4, a checkpoint after each chunk
FLAGS = [
    "--config=lm_moe:tiny",
    "--config.train.routers=top1,top_p",
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


def records(workdir, stage):
    lines = (workdir / "stages" / stage / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_lm_on_an_eight_device_mesh_from_the_cli_gives_the_one_device_losses(tmp_path):
    one, mesh = tmp_path / "one", tmp_path / "mesh"
    out = cli(f"--workdir={one}")
    assert out.returncode == 0, out.stderr[-3000:]
    # on the mesh, top1 resumes the one-device step-4 checkpoint (restored into the sharded layout) and
    # top_p starts afresh (initialised sharded)
    shutil.copytree(one, mesh)
    (mesh / "results.json").unlink()
    shutil.rmtree(mesh / "stages" / "top_p")
    stage = mesh / "stages" / "top1"
    shutil.rmtree(stage / "checkpoints" / "8")
    (stage / "final_eval.json").unlink()
    (stage / "metrics.jsonl").write_text((stage / "metrics.jsonl").read_text().splitlines()[0] + "\n")
    out = cli(f"--workdir={mesh}", "--config.mesh.fsdp=2", "--config.mesh.expert=4", devices=8)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "mesh: data 1 x fsdp 2 x expert 4 x model 1" in out.stdout
    assert "top1: resuming at step 4 of 8" in out.stdout + out.stderr
    for name in ("top1", "top_p"):
        a, b = records(one, name), records(mesh, name)
        assert [r["step"] for r in b] == [4, 8]
        losses = sorted(k for k in a[-1] if "loss" in k.split("/")[0])
        assert len(losses) >= 5
        for ra, rb in zip(a, b):
            np.testing.assert_allclose([rb[k] for k in losses], [ra[k] for k in losses], rtol=1e-5, atol=1e-6)
        fa, fb = (
            json.loads((w / "stages" / name / "final_eval.json").read_text())["members"]["seed0"] for w in (one, mesh)
        )
        for key in ("val_loss", "task_loss"):
            np.testing.assert_allclose(fb[key], fa[key], rtol=1e-5)


def test_a_mesh_the_devices_cannot_form_is_one_line_before_the_workdir_is_touched(tmp_path, capsys):
    from psec_jax import cli as cli_lib

    for flag, message in [
        ("--config.mesh.expert=3", "expert=3 x model=1: the fixed axes take 3 devices, which does not divide the 1"),
        ("--config.mesh.data=2", "mesh.data=2: only 1 devices are available"),
        ("--config.model.backend=expert_parallel", "needs a mesh with an expert axis: set config.mesh.expert"),
    ]:
        assert cli_lib.main(["lm_moe", *FLAGS, flag, f"--workdir={tmp_path / 'w'}"]) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "w").exists()
