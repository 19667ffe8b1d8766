"""Tests of the `psec-jax` command line: help, info, config loading and one-line errors."""

import json
import os
import subprocess
import sys

import pytest

from psec_jax import cli, compilation_cache

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "psec_jax", "configs", "smoke.py")


def test_module_help_and_info_run_in_a_fresh_process(tmp_path):
    env = {**os.environ, "PSEC_JAX_CACHE_DIR": str(tmp_path / "cache")}
    out = subprocess.run([sys.executable, "-m", "psec_jax", "--help"], capture_output=True, text=True, env=env)
    assert out.returncode == 0 and "smoke" in out.stdout and "info" in out.stdout
    out = subprocess.run([sys.executable, "-m", "psec_jax", "info"], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert "jax " in out.stdout and "device" in out.stdout and str(tmp_path / "cache") in out.stdout


def test_bad_override_is_one_line_exit_2_in_a_fresh_process(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "psec_jax",
        "smoke",
        f"--config={CONFIG}",
        "--config.train.nope=1",
        f"--workdir={tmp_path}",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f"psec-jax: error: smoke: unknown config field 'nope' in --config.train.nope=1 (config {CONFIG})"
    ]


def test_shipped_configs_are_addressed_by_name_from_any_directory(tmp_path, capsys, monkeypatch):
    """`--config=lm_moe:tiny` is the shipped file's `tiny` preset wherever the command runs; a path that
    exists wins over a name; an unknown name lists the shipped ones."""
    from psec_jax import configs
    from psec_jax.configs import lm_moe

    monkeypatch.chdir(tmp_path)
    config, _, _ = cli.parse_experiment_flags(
        "lm_moe", ["--config=lm_moe:tiny", "--config.train.seeds=2", "--workdir=w"]
    )
    expected = lm_moe.get_config("tiny")
    expected.train.seeds = 2
    assert config.to_dict() == expected.to_dict()
    (tmp_path / "lm_moe").write_text("")  # a local file of that name is the path, not the shipped config
    assert configs.resolve("lm_moe") == ("lm_moe", [])
    assert configs.resolve("smoke")[0] == str(configs.DIRECTORY / "smoke.py")
    assert cli.main(["smoke", "--config=smok", "--workdir=w"]) == 2
    assert "config file not found: smok (shipped configs: behavior, lm_moe," in capsys.readouterr().err


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
    args = [
        "smoke",
        f"--config={CONFIG}",
        f"--workdir={tmp_path}",
        "--nocompilation_cache",
        "--config.train.num_steps=20",
        "--config.train.log_every=10",
        "--config.train.checkpoint_every=10",
        "--config.model.hidden_sizes=(8,)",
        "--config.data.num_examples=32",
    ]
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


@pytest.mark.parametrize(
    "name, message", [("walker-fly-expert", "unknown environment 'walker-fly'"), ("hopper-expert-0traj", ">= 1")]
)
def test_dataset_command_rejects_bad_names(name, message, capsys):
    assert cli.main(["dataset", name]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_dataset_command_generates_and_reports(tmp_path, capsys):
    assert cli.main(["dataset", "walker-stand-medium-expert-2traj", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "walker-stand-medium-expert-2traj.hdf5" in out and "2000 transitions, 2 episodes" in out
    assert (tmp_path / "walker-stand-medium-expert-2traj.hdf5.sha256").is_file()


def _one_line_error(capsys, code, argv):
    assert cli.main(argv) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize(
    "where, message",
    [
        ("file", "is a file, not a directory"),
        ("below_file", "cannot be created: {tmp}/plain is a file"),
        ("read_only", "is not writable"),
        ("below_read_only", "cannot be created"),
    ],
)
def test_unusable_workdirs_are_one_line_exit_2(tmp_path, capsys, where, message):
    (tmp_path / "plain").write_text("user data")
    if os.geteuid() == 0:  # root writes through chmod; sysfs refuses even root
        read_only = "/sys"
    else:
        (tmp_path / "ro").mkdir(mode=0o555)
        read_only = str(tmp_path / "ro")
    workdir = {
        "file": tmp_path / "plain",
        "below_file": tmp_path / "plain" / "run",
        "read_only": read_only,
        "below_read_only": f"{read_only}/psec_jax_run",
    }[where]
    line = _one_line_error(capsys, 2, ["smoke", f"--config={CONFIG}", f"--workdir={workdir}"])
    assert message.format(tmp=tmp_path) in line
    assert (tmp_path / "plain").read_text() == "user data"


CONFIGS = os.path.join(ROOT, "psec_jax", "configs")


@pytest.mark.parametrize(
    "name, config, message",
    [
        ("smoke", "{tmp}/no_get_config.py", "has no get_config() function"),
        ("smoke", "{tmp}/no_get_config.cfg", "has no get_config() function"),  # any suffix, as absl takes
        ("smoke", f"{CONFIG}:bogus", "has no presets, got"),
        (
            "psec_continual",
            f"{CONFIGS}/psec_continual.py:bogus",
            "unknown size 'bogus'; choose from ('tiny', 'small', 'paper')",
        ),
        ("psec_continual", f"{CONFIGS}/psec_continual.py", None),  # valid: only the workdir is missing below
        ("smoke", f"{CONFIGS}/psec_continual.py:tiny", "this is not a smoke config: it lacks data.input_dim"),
        ("psec_continual", f"{CONFIGS}/psec_safe.py:tiny", "this is not a psec_continual config"),
        ("behavior", CONFIG, "this is not a behavior config"),
    ],
)
def test_config_files_of_the_wrong_kind_are_one_line_exit_2(tmp_path, capsys, name, config, message):
    for suffix in (".py", ".cfg"):
        (tmp_path / f"no_get_config{suffix}").write_text("learning_rate = 1e-3\n")
    argv = [name, f"--config={config.format(tmp=tmp_path)}"]
    line = _one_line_error(capsys, 2, argv if message is None else argv + [f"--workdir={tmp_path / 'w'}"])
    assert (message or "--workdir is required") in line
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize(
    "name, config, override, message",
    [
        ("smoke", CONFIG, "train.batch_size=0", "train.batch_size must be a positive integer, got 0"),
        ("smoke", CONFIG, "optim.learning_rate=nan", "optim.learning_rate must be finite, got nan"),
        ("smoke", CONFIG, "train.log_every=0", "train.log_every must be a positive integer, got 0"),
        ("smoke", CONFIG, "train.num_steps=2050", "train.num_steps (2050) must be a multiple of train.log_every (100)"),
        (
            "psec_continual",
            f"{CONFIGS}/psec_continual.py:tiny",
            "compose.log_every=30",
            "compose.steps (100) must be a multiple",
        ),
        (
            "psec_safe",
            f"{CONFIGS}/psec_safe.py:tiny",
            "critics.cost.expectile=1.5",
            "critics.cost.expectile must be in (0.0, 1.0]",
        ),
        (
            "psec_dynamics",
            f"{CONFIGS}/psec_dynamics.py:tiny",
            "expand.batch_size=-1",
            "expand.batch_size must be a positive",
        ),
        ("behavior", f"{CONFIGS}/behavior.py", "sac.tau=0.0", "sac.tau must be in (0.0, 1.0]"),
        ("behavior", f"{CONFIGS}/behavior.py", "env=walker-fly", "env must be one of"),
    ],
)
def test_values_that_cannot_train_are_rejected_before_compiling(tmp_path, capsys, name, config, override, message):
    line = _one_line_error(
        capsys, 2, [name, f"--config={config}", f"--config.{override}", f"--workdir={tmp_path / 'w'}"]
    )
    assert message in line
    assert not (tmp_path / "w").exists()  # rejected before the workdir (or anything) was touched


def test_behavior_refuses_a_workdir_holding_an_earlier_run(tmp_path, capsys):
    (tmp_path / "metrics.jsonl").write_text('{"step": 40000, "return": 12.0}\n')
    line = _one_line_error(capsys, 1, ["behavior", f"--config={CONFIGS}/behavior.py", f"--workdir={tmp_path}"])
    assert "holds metrics.jsonl but no config.json" in line
    assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 40000, "return": 12.0}\n'


def test_unusable_checkpoints_are_one_line_exit_1(tmp_path, capsys):
    args = [
        "smoke",
        f"--config={CONFIG}",
        f"--workdir={tmp_path}",
        "--config.train.num_steps=20",
        "--config.train.log_every=10",
        "--config.train.checkpoint_every=10",
        "--config.model.hidden_sizes=(8,)",
        "--config.data.num_examples=32",
    ]
    assert cli.main(args) == 0
    for step in ("10", "20"):  # both checkpoints lose their largest data file
        files = [f for f in (tmp_path / "checkpoints" / step / "state").rglob("*") if f.is_file()]
        max(files, key=lambda f: f.stat().st_size).unlink()
    capsys.readouterr()
    line = _one_line_error(capsys, 1, args)
    assert "no intact checkpoint" in line and "step 20: missing file state/" in line


def test_summary_json_holds_no_bare_nan(tmp_path, capsys):
    args = [
        "smoke",
        f"--config={CONFIG}",
        f"--workdir={tmp_path}",
        "--config.train.num_steps=20",
        "--config.train.log_every=10",
        "--config.train.checkpoint_every=10",
        "--config.model.hidden_sizes=(8,)",
        "--config.data.num_examples=32",
        "--config.optim.learning_rate=1e30",
    ]  # diverges to NaN
    assert cli.main(args) == 0
    assert "nan" in capsys.readouterr().out  # the printed table says what happened

    def no_constants(name):
        raise AssertionError(f"bare {name} in JSON")

    summary = json.loads((tmp_path / "summary.json").read_text(), parse_constant=no_constants)
    assert summary["final_train_mse"] is None
    for line in (tmp_path / "metrics.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=no_constants)


def test_dataset_export_and_import_move_the_exact_bytes(tmp_path, capsys):
    name, here, there, moved = (
        "walker-stand-medium-expert-2traj",
        tmp_path / "here",
        tmp_path / "there",
        tmp_path / "usb",
    )
    assert cli.main(["dataset", name, "--dir", str(here), "--export", str(moved)]) == 0
    file = moved / f"{name}.hdf5"
    assert file.read_bytes() == (here / f"{name}.hdf5").read_bytes()
    assert cli.main(["dataset", name, "--dir", str(there), "--import", str(file)]) == 0
    assert (there / f"{name}.hdf5").read_bytes() == file.read_bytes()
    capsys.readouterr()
    # another dataset's name, a damaged copy, other behaviour policies: one line each, nothing installed
    line = _one_line_error(
        capsys, 1, ["dataset", "walker-stand-medium-expert-3traj", "--dir", str(tmp_path / "x"), "--import", str(file)]
    )
    assert "holds walker-stand-medium-expert-2traj" in line
    side = moved / f"{name}.hdf5.sha256"
    sha, fname, policies = side.read_text().split()
    side.write_text(f"{sha}  {fname} {'0' * 64}\n")
    assert "other behaviour policies" in _one_line_error(
        capsys, 1, ["dataset", name, "--dir", str(tmp_path / "y"), "--import", str(file)]
    )
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 1
    file.write_bytes(bytes(data))
    assert "damaged in transfer" in _one_line_error(
        capsys, 1, ["dataset", name, "--dir", str(tmp_path / "z"), "--import", str(file)]
    )
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())
