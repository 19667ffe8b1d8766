"""Datasets that are the same on every x86-64 machine: generation pinned to one instruction set in a
child process, reference checksums with a one-line warning on a mismatch."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from psec_jax.data import datasets, formats, pinned, references


def test_the_child_environment_pins_the_cpu_isa_and_drops_every_other_xla_flag(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_max_isa=AVX --xla_backend_optimization_level=0")
    monkeypatch.setenv("JAX_PLATFORMS", "cuda")
    env = pinned.environment()
    assert env["XLA_FLAGS"].split() == [pinned.FLAG]
    assert env["JAX_PLATFORMS"] == "cpu"
    assert not pinned.in_pinned_process()
    monkeypatch.setenv("XLA_FLAGS", env["XLA_FLAGS"])
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    assert pinned.in_pinned_process()  # the child generates in its own process


def test_a_failing_child_is_one_line_naming_the_dataset(tmp_path):
    with pytest.raises(
        formats.DatasetError,
        match=r"generating walker-fly-expert-2traj pinned to SSE4_2 .*failed \(exit 1\): "
        r"ValueError: .*walker-fly",
    ) as e:
        pinned.generate_in_child("walker-fly-expert-2traj", 0, 0.0, tmp_path / "x.hdf5")
    assert "\n" not in str(e.value) and not list(tmp_path.iterdir())  # no error file left behind


def _fake_generate(recipe, path, **kwargs):
    Path(path).write_bytes(f"{recipe.name} {recipe.seed} {recipe.noise}".encode())


def test_other_bytes_than_the_reference_print_one_warning_line_with_both_checksums(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(datasets, "generate", _fake_generate)
    monkeypatch.setattr(pinned, "applies", lambda: False)
    name = "walker-stand-expert-2traj"
    monkeypatch.setitem(references.SHA256, datasets.parse(name).filename, "ab" * 32)
    path = datasets.get(name, directory=tmp_path)
    warned = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    got = __import__("psec_jax").artifacts.sha256(path)
    assert len(warned) == 1 and got[:16] in warned[0] and ("ab" * 8) in warned[0], warned
    assert f"psec-jax dataset {name} --export DIR" in warned[0]
    monkeypatch.setitem(references.SHA256, datasets.parse(name).filename, got)  # the reference bytes: silent
    datasets.get(name, directory=tmp_path, regenerate=True)
    assert "warning:" not in capsys.readouterr().err
    assert references.check("no-such-file.hdf5", got, "x") is None  # no reference: nothing to compare


@pytest.mark.slow
def test_machines_with_other_instruction_sets_generate_the_same_bytes(tmp_path):
    """``--xla_cpu_max_isa`` emulates other CPUs. Control: generated in process (unpinned) under AVX and
    AVX2 the bytes differ. Pinned (the child), a parent under AVX or AVX2 writes the bytes of a whole
    process run on SSE4_2."""
    name = "walker-stand-expert-2traj"
    direct = (
        "import sys; from psec_jax.data import datasets; datasets.generate(datasets.parse(sys.argv[1]), sys.argv[2])"
    )

    def sha(path):
        return __import__("psec_jax").artifacts.sha256(path)

    def run(args, flags, **env):
        subprocess.run(
            [sys.executable, *args], env={**os.environ, "XLA_FLAGS": flags, **env}, check=True, capture_output=True
        )

    for isa in ("AVX", "AVX2"):
        run(["-c", direct, name, str(tmp_path / f"unpinned_{isa}.hdf5")], f"--xla_cpu_max_isa={isa}")
        run(["-m", "psec_jax", "dataset", name, "--dir", str(tmp_path / isa)], f"--xla_cpu_max_isa={isa}")
    run(["-c", direct, name, str(tmp_path / "sse.hdf5")], pinned.FLAG, JAX_PLATFORMS="cpu")
    assert sha(tmp_path / "unpinned_AVX.hdf5") != sha(tmp_path / "unpinned_AVX2.hdf5")
    assert (
        sha(tmp_path / "AVX" / f"{name}.hdf5") == sha(tmp_path / "AVX2" / f"{name}.hdf5") == sha(tmp_path / "sse.hdf5")
    )
