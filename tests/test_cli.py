"""Tests of the `psec-jax` command line: help, info, config loading and one-line errors."""

import os
import subprocess
import sys

import pytest

from psec_jax import cli, compilation_cache

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "experiments", "configs", "smoke.py")


def test_module_help_and_info_run_in_a_fresh_process(tmp_path):
    env = {**os.environ, "PSEC_JAX_CACHE_DIR": str(tmp_path / "cache")}
    out = subprocess.run([sys.executable, "-m", "psec_jax", "--help"], capture_output=True, text=True, env=env)
    assert out.returncode == 0 and "smoke" in out.stdout and "info" in out.stdout
    out = subprocess.run([sys.executable, "-m", "psec_jax", "info"], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert "jax " in out.stdout and "device" in out.stdout and str(tmp_path / "cache") in out.stdout


def test_bad_override_is_one_line_exit_2_in_a_fresh_process(tmp_path):
    cmd = [sys.executable, "-m", "psec_jax", "smoke", f"--config={CONFIG}", "--config.train.nope=1",
           f"--workdir={tmp_path}"]
    out = subprocess.run(cmd, capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f"psec-jax: error: smoke: unknown config field 'nope' in --config.train.nope=1 (config {CONFIG})"
    ]


@pytest.mark.parametrize(
    "args, message",
    [
        (["smoke", "--config=missing/config.py", "--workdir=w"], "config file not found: missing/config.py"),
        (["smoke", f"--config={CONFIG}", "--config.bogus=3", "--workdir=w"], "unknown config field 'bogus'"),
        (["smoke", f"--config={CONFIG}", "--config.train.num_steps=abc", "--workdir=w"], "invalid literal"),
        (["smoke", f"--config={CONFIG}"], "--workdir is required"),
        (["smoke", "--workdir=w"], "--config is required"),
        (["smoke", f"--config={CONFIG}", "--workdir=w", "--no_such_flag"], "no_such_flag"),
        (["nope"], "unknown command 'nope'"),
        (["info", "extra"], "info takes no arguments"),
    ],
)
def test_usage_errors_are_one_line_with_exit_code_2(args, message, capsys):
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("psec-jax: error:") and message in err[0]


def test_broken_config_file_is_reported(tmp_path, capsys):
    broken = tmp_path / "broken.py"
    broken.write_text("def get_config():\n    raise RuntimeError('boom')\n")
    assert cli.main(["smoke", f"--config={broken}", f"--workdir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "could not load config" in err and "boom" in err


def test_run_end_to_end_with_overrides(tmp_path, capsys):
    args = ["smoke", f"--config={CONFIG}", f"--workdir={tmp_path}", "--nocompilation_cache",
            "--config.train.num_steps=20", "--config.train.log_every=10", "--config.train.checkpoint_every=10",
            "--config.model.hidden_sizes=(8,)", "--config.data.num_examples=32"]
    assert cli.main(args) == 0
    assert "final_train_mse" in capsys.readouterr().out
    assert cli.main(args[:-1] + ["--config.data.num_examples=64"]) == 1  # resume with another config
    assert "data.num_examples" in capsys.readouterr().err


def test_compilation_cache_location_and_switch(tmp_path, monkeypatch):
    import jax

    before = jax.config.jax_compilation_cache_dir
    try:
        monkeypatch.setenv(compilation_cache.ENV_DIR, str(tmp_path / "c1"))
        assert compilation_cache.enable() == tmp_path / "c1" and compilation_cache.current() == tmp_path / "c1"
        assert compilation_cache.enable(tmp_path / "c2") == tmp_path / "c2"
        monkeypatch.setenv(compilation_cache.ENV_SWITCH, "0")
        assert compilation_cache.enable() is None
        monkeypatch.delenv(compilation_cache.ENV_DIR)
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
        assert compilation_cache.default_cache_dir() == tmp_path / "xdg" / "psec_jax" / "jax"
    finally:
        jax.config.update("jax_compilation_cache_dir", before)


@pytest.mark.parametrize("name, message", [("walker-fly-expert", "unknown environment 'walker-fly'"),
                                           ("hopper-expert-0traj", ">= 1")])
def test_dataset_command_rejects_bad_names(name, message, capsys):
    assert cli.main(["dataset", name]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_dataset_command_generates_and_reports(tmp_path, capsys):
    assert cli.main(["dataset", "walker-stand-medium-expert-2traj", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "walker-stand-medium-expert-2traj.hdf5" in out and "2000 transitions, 2 episodes" in out
    assert (tmp_path / "walker-stand-medium-expert-2traj.hdf5.sha256").is_file()
