"""Config values at and past their limits: every one is refused by `psec-jax <experiment>` in one line on
stderr with exit code 2, naming the field, before any data is generated or anything compiled."""

import re
import shutil
from pathlib import Path

import ml_collections
import numpy as np
import pytest

from psec_jax import artifacts, cli, config_check
from psec_jax.models import tasks, text

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "psec_jax" / "configs"
SMOKE, LM, BEHAVIOR = f"{CONFIGS}/smoke.py", f"{CONFIGS}/lm_moe.py:tiny", f"{CONFIGS}/behavior.py"
CONTINUAL, SAFE, DYNAMICS = (f"{CONFIGS}/psec_{name}.py:tiny" for name in ("continual", "safe", "dynamics"))
PI0 = ROOT / "psec_jax" / "rl" / "pretrained" / "walker_stand_small_paper_pi0"  # small network, raw observations
BIG = 10**12


def refused(capsys, tmp_path, name, config, *overrides):
    """The one stderr line of `psec-jax name --config=config --config.<override>...`, which must exit 2
    without touching the workdir."""
    argv = [name, f"--config={config}", *(f"--config.{o}" for o in overrides), f"--workdir={tmp_path / 'w'}"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("psec-jax: error:"), err
    assert not (tmp_path / "w").exists()
    return err[0]


@pytest.mark.parametrize(
    "name, config, overrides, message",
    [
        ("smoke", SMOKE, ["seed=2147483648"], "seed must be an integer in [0, 2147483647], got 2147483648"),
        ("smoke", SMOKE, ["seed=-1"], "seed must be an integer in [0, 2147483647], got -1"),
        # member i is key(seed + i), computed in int32
        ("smoke", SMOKE, ["seed=2147483647", "num_seeds=2"], "seed (2147483647) + num_seeds (2) - 1 must fit in int32"),
        (
            "smoke",
            SMOKE,
            [f"train.num_steps={BIG}", f"train.log_every={BIG}", f"train.checkpoint_every={BIG}"],
            f"must fit in int32 (at most 2147483647), got {BIG}",
        ),
        ("smoke", SMOKE, ["train.batch_size=2147483648"], "train.batch_size must fit in int32"),
        ("lm_moe", LM, ["seed=2147483648"], "config field seed must be an integer in [0, 2147483647]"),
        ("lm_moe", LM, ["data.seed=4294967296"], "data.seed must be an integer in [0, 2147483647]"),
        (
            "lm_moe",
            LM,
            [f"train.num_steps={BIG}", f"train.log_every={BIG}", f"train.checkpoint_every={BIG}"],
            "must fit in int32",
        ),
        ("psec_continual", CONTINUAL, ["seed=2147483648"], "seed must be an integer in [0, 2147483647]"),
        ("psec_continual", CONTINUAL, [f"pretrain.steps={BIG}", f"pretrain.log_every={BIG}"], "must fit in int32"),
        ("psec_safe", SAFE, ["seed=2147483648"], "seed must be an integer in [0, 2147483647]"),
        ("psec_safe", SAFE, [f"eval.episode_length={BIG}"], "eval.episode_length must fit in int32"),
        ("psec_dynamics", DYNAMICS, ["seed=2147483648"], "seed must be an integer in [0, 2147483647]"),
        ("psec_dynamics", DYNAMICS, [f"compose.steps={BIG}", f"compose.log_every={BIG}"], "must fit in int32"),
        ("behavior", BEHAVIOR, ["seed=2147483648"], "seed must be an integer in [0, 2147483647]"),
        ("behavior", BEHAVIOR, [f"total_steps={BIG}"], "total_steps must fit in int32"),
    ],
)
def test_seeds_and_counts_beyond_int32_are_refused(tmp_path, capsys, name, config, overrides, message):
    line = refused(capsys, tmp_path, name, config, *overrides)
    assert message in line and any(f"{o.split('=')[0]} " in line for o in overrides)


@pytest.mark.parametrize(
    "edit, message",
    [
        ('c["seed"] = True', "config field seed must be an integer, got True"),  # (smoke checks no seed itself)
        ('c["seed"] = 0.5', "config field seed must be an integer, got 0.5"),
        ('c["model"]["hidden_sizes"] = (8, 2.5)', "model.hidden_sizes must be a tuple of integers, got (8, 2.5)"),
        ('c["optim"]["learning_rate"] = True', "optim.learning_rate must be a number, got True"),
        ('c["train"]["max_to_keep"] = "2"', "train.max_to_keep must be an integer, got '2'"),
    ],
)
def test_config_files_must_keep_the_types_of_the_defaults(tmp_path, capsys, edit, message):
    path = tmp_path / "config.py"  # written from scratch, as a user might: no ConfigDict type checks on the way
    path.write_text(
        f"import ml_collections\nfrom psec_jax.configs import smoke\n\ndef get_config():\n"
        f"    c = smoke.get_config().to_dict()\n    {edit}\n    return ml_collections.ConfigDict(c)\n"
    )
    assert message in refused(capsys, tmp_path, "smoke", path)


def test_every_preset_has_the_types_of_its_experiments_default():
    from psec_jax import registry
    from psec_jax.configs import behavior, lm_moe, psec_continual, psec_dynamics, psec_safe, smoke

    presets = {
        "smoke": [smoke.get_config()],
        "behavior": [behavior.get_config()],
        "lm_moe": [lm_moe.get_config(p) for p in lm_moe.SIZES],
        "psec_continual": [
            psec_continual.get_config(f"{s},{p}")
            for s in ("tiny", "small", "paper")
            for p in psec_continual.PROTOCOL_NAMES
        ]
        + [psec_continual.get_config("demo")],
        "psec_safe": [psec_safe.get_config(s) for s in ("tiny", "small", "paper")],
        "psec_dynamics": [psec_dynamics.get_config(s) for s in ("tiny", "small", "paper")],
    }
    for name, configs in presets.items():
        reference = registry.reference_config(name)
        for config in configs:
            config_check.same_types(config, reference)
            config_check.seeds(config)
            config_check.int32(config)


def test_rules_every_config_shares():
    c = ml_collections.ConfigDict({"seed": 3, "n": 2**31 - 1, "sizes": (4, -(2**31)), "rate": 1, "data": {"seed": 0}})
    ref = ml_collections.ConfigDict({"seed": 0, "n": 1, "sizes": (1,), "rate": 0.5, "data": {"seed": 1}})
    for check in (lambda c: config_check.same_types(c, ref), config_check.int32, config_check.seeds):
        check(c)  # every value at its limit: accepted
    for field, value, check, message in (
        ("sizes", (4, 2**31), config_check.int32, "sizes must fit in int32"),
        ("n", -(2**31) - 1, config_check.int32, "n must fit in int32"),
        ("data.seed", 2**31, config_check.seeds, "data.seed must be an integer in [0, 2147483647]"),
        ("n", False, lambda c: config_check.same_types(c, ref), "n must be an integer, got False"),
        ("rate", "fast", lambda c: config_check.same_types(c, ref), "rate must be a number, got 'fast'"),
    ):
        d = c.to_dict()
        *parents, leaf = field.split(".")
        (d[parents[0]] if parents else d)[leaf] = value
        bad = ml_collections.ConfigDict(d)
        with pytest.raises(config_check.ConfigError, match=re.escape(message)):
            check(bad)


# --- lm_moe -------------------------------------------------------------------------------------------


def test_lm_moe_dtypes_routers_and_sizes_are_refused(tmp_path, capsys):
    line = refused(capsys, tmp_path, "lm_moe", LM, "model.dtype=float64")
    assert "model.dtype must be one of ['float32', 'bfloat16', 'float16'], got 'float64'" in line
    assert "model.dtype" in refused(capsys, tmp_path, "lm_moe", LM, "model.dtype=int8")
    line = refused(capsys, tmp_path, "lm_moe", LM, "train.routers=top1,top2,top1")
    assert "train.routers=('top1', 'top2', 'top1') repeats a router" in line
    line = refused(capsys, tmp_path, "lm_moe", LM, "data.seq_len=32")
    assert f"data.seq_len=32 must be >= {tasks.MAX_EXAMPLE_BYTES - 1}" in line
    line = refused(capsys, tmp_path, "lm_moe", LM, "data.val_task_rows=101")
    assert "data.val_task_rows=101 exceeds data.num_val_task_examples=100" in line
    steps = 2**30  # within int32, but 2**30 x 4 rows x 64 tokens x 13 bytes is 3.3 TiB of batches per chunk
    line = refused(
        capsys, tmp_path, "lm_moe", LM, *(f"train.{f}={steps}" for f in ("num_steps", "log_every", "checkpoint_every"))
    )
    assert f"train.log_every={steps} steps of data.batch_size=4 rows of data.seq_len=64 tokens make 3328 GiB" in line


def test_lm_moe_refuses_a_corpus_cap_that_leaves_a_split_without_files_or_tokens(tmp_path, capsys):
    minimum = text.min_corpus_bytes()
    line = refused(capsys, tmp_path, "lm_moe", LM, f"data.max_corpus_bytes={minimum - 1}")
    assert f"data.max_corpus_bytes={minimum - 1} leaves a split of the stdlib corpus without a file" in line
    assert f"use >= {minimum}" in line
    # at the minimum both splits have a file, but too few bytes for more windows than there are bytes
    files, size = text.corpus_sizes(minimum)["val"]
    rows = (size + files - 1) // 65 + 1  # (tiny: seq_len 64)
    line = refused(capsys, tmp_path, "lm_moe", LM, f"data.max_corpus_bytes={minimum}", f"data.val_corpus_rows={rows}")
    assert f"data.val_corpus_rows={rows} windows of data.seq_len + 1 = 65 tokens need {65 * rows}" in line


def test_corpus_sizes_are_what_the_build_takes():
    minimum = text.min_corpus_bytes()
    sizes = text.corpus_sizes(minimum)
    assert all(files >= 1 for files, _ in sizes.values()) and max(size for _, size in sizes.values()) <= minimum
    assert any(files == 0 for files, _ in text.corpus_sizes(minimum - 1).values())
    corpus = text._corpus(minimum)
    assert {s: (len(c.paths), c.num_bytes) for s, c in corpus.items()} == sizes
    examples = tasks.generate(np.random.default_rng(0), 600)
    assert max(len((e.prompt + e.answer).encode()) for e in examples) == tasks.MAX_EXAMPLE_BYTES  # lookup/8


def _text_data(train_tokens, val_tokens, val_task_rows, seq_len):
    """A TextData of the given sizes (token ids 2..6, task rows packed for ``seq_len``)."""
    t1 = seq_len + 1
    rows = lambda n: (np.arange(n * t1).reshape(n, t1) % 5 + 2).astype(np.uint16)
    labels = lambda n: np.full((n, t1), -1, np.int8)
    tokens = lambda n: (np.arange(n) % 5 + 2).astype(np.uint16)
    return text.TextData(
        tokens(train_tokens),
        tokens(val_tokens),
        rows(3),
        labels(3),
        rows(val_task_rows),
        labels(val_task_rows),
        tokenizer=None,
        meta={},
        vocab_size=8,
        pad_id=1,
        eot_id=0,
        path=Path("fake"),
    )


def test_lm_moe_checks_the_built_data_in_one_line():
    from psec_jax.configs import lm_moe as lm_config
    from psec_jax.experiment_flags import UsageError
    from psec_jax.models import runner as lm_moe

    config = lm_config.get_config("tiny")  # seq_len 64, val_corpus_rows 4, val_task_rows 4
    lm_moe.check_data(config, _text_data(65, 4 * 65, 4, 64))  # just enough
    for data, message in (
        (_text_data(64, 4 * 65, 4, 64), "a training window of data.seq_len + 1 = 65 tokens"),
        (_text_data(65, 4 * 65 - 1, 4, 64), "data.val_corpus_rows=4 windows of data.seq_len + 1 = 65 tokens need 260"),
        (_text_data(65, 4 * 65, 3, 64), "data.val_task_rows=4 exceeds the 3 rows"),
    ):
        with pytest.raises(UsageError, match=re.escape(message)) as e:
            lm_moe.check_data(config, data)
        assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "text_rows, task_rows, batch, want",
    [
        (3, 62, 64, (2, 62)),  # one row past a whole batch: a text window goes
        (1, 66, 64, (1, 63)),  # fewer text windows than the rows past the batch: task rows go instead
        (2, 10, 12, (2, 10)),  # fewer rows than a batch: one batch of all of them
    ],
)
def test_full_validation_is_whole_batches_whatever_the_split_sizes(text_rows, task_rows, batch, want):
    from psec_jax.models import runner as lm_moe

    full, rows, unigram = lm_moe.full_validation(_text_data(50, 5 * text_rows, task_rows, 4), 4, batch)
    n = sum(want)
    assert full.inputs.shape == (n // min(batch, n), min(batch, n), 4)
    assert (int(rows.sum()), int((~rows).sum())) == want and np.isfinite(unigram)


# --- PSEC: the given pi_0 and the dataset names ---------------------------------------------------------


def _restandardised(tmp_path, data):
    """A copy of the committed pi_0 with a standardising normaliser, as if pretrained on ``data``."""
    from psec_jax.data.normalize import Normalizer
    from psec_jax.rl import saving

    _, params, _, meta = saving.load_base(PI0)
    net = ml_collections.ConfigDict(meta["network"])
    return saving.save_base(
        tmp_path / "pi0_norm", params, net, 24, 6, Normalizer(np.ones(24), 2 * np.ones(24)), data=data
    )


def test_a_given_pi0_that_does_not_fit_is_refused_naming_what_differs(tmp_path, capsys):
    small, paper = f"{CONFIGS}/psec_continual.py:small", f"{CONFIGS}/psec_continual.py:small,paper_protocol"
    cases = [
        ("psec_continual", CONTINUAL, f"pretrained={tmp_path / 'nowhere'}", "no such directory"),
        (
            "psec_continual",
            CONTINUAL,
            f"pretrained={ROOT / 'psec_jax' / 'data' / 'policies' / 'walker-walk'}",
            "not a usable saved pi_0: nothing saved at",
        ),
        (
            "psec_continual",
            paper,
            f"pretrained={tmp_path / 'composer'}",
            "not a saved pi_0 but format 'psec_jax.composer/2'",
        ),
        ("psec_continual", paper, f"pretrained={tmp_path / 'corrupt'}", "not a usable saved pi_0"),
        ("psec_continual", CONTINUAL, f"pretrained={PI0}", "its network differs from config.network in ff (512 vs 32)"),
        (
            "psec_continual",
            small,
            f"pretrained={PI0}",
            "pretrained on 'walker-stand-expert-1000traj', this config's "
            "pi_0 data is 'walker-stand-medium-expert-40traj'",
        ),
        (
            "psec_continual",
            paper,
            f"pretrained={tmp_path / 'pi0_norm'}",
            "its observation normaliser is standardising, but config.obs_norm is False",
        ),
        (
            "psec_safe",
            f"{CONFIGS}/psec_safe.py:small",
            f"pretrained={PI0}",
            "made for observations 24 / actions 6, the environment has 17 / 6",
        ),
        (
            "psec_dynamics",
            f"{CONFIGS}/psec_dynamics.py:small",
            f"pretrained={PI0}",
            "made for observations 24 / actions 6, the environment has 17 / 6",
        ),
    ]
    artifacts.save_tree(tmp_path / "composer", {"params": np.zeros(2)}, {"format": "psec_jax.composer/2"})
    shutil.copytree(PI0, tmp_path / "corrupt")
    victim = max(
        (p for p in (tmp_path / "corrupt" / "arrays").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size
    )
    victim.write_bytes(victim.read_bytes()[:-1] + bytes([victim.read_bytes()[-1] ^ 1]))
    _restandardised(tmp_path, "walker-stand-expert-1000traj")
    for name, config, override, message in cases:
        line = refused(capsys, tmp_path, name, config, override)
        assert "config.pretrained" in line and message in line, line


def test_the_committed_pi0_fits_the_config_it_was_made_for(tmp_path):
    from psec_jax.configs import psec_continual as continual_config
    from psec_jax.rl import continual

    c = continual_config.get_config("small,paper_protocol")
    c.pretrained = str(PI0)
    with pytest.raises(ValueError, match="give seed 0's"):  # one pi_0, but each seed builds on its own
        continual.SETTING.check_config(c)
    c.share_pretrain = True
    continual.SETTING.check_config(c)
    c.pretrained = str(_restandardised(tmp_path, "walker-stand-expert-1000traj"))
    c.obs_norm = True
    continual.SETTING.check_config(c)
    c.base_data = "walker-stand-expert-200traj"  # ... but a run given its data is not checked against the name
    with pytest.raises(ValueError, match="pretrained on"):
        continual.SETTING.check_config(c)
    from psec_jax.rl import runner

    runner.check_config(continual.SETTING, c, given=("data",))


@pytest.mark.parametrize(
    "name, config, override, message",
    [
        ("psec_continual", CONTINUAL, "base_data=nonsense", "config.base_data: bad dataset name 'nonsense'"),
        (
            "psec_continual",
            CONTINUAL,
            "base_data=halfcheetah-medium-10traj",
            "config.base_data='halfcheetah-medium-10traj' is data of halfcheetah, not walker-stand",
        ),
        ("psec_continual", CONTINUAL, "base_data=walker-stand-expert-0traj", "number of trajectories must be >= 1"),
        (
            "psec_continual",
            CONTINUAL,
            "skill_data=walker-{task}-expert-{count}traj",
            "config.skill_data='walker-{task}-expert-{count}traj' is not a template with {task} and {n}",
        ),
        (
            "psec_continual",
            CONTINUAL,
            "skill_data=walker-stand-expert-{n}traj",
            "config.skill_data (walk)='walker-stand-expert-10traj' is data of walker-stand, not walker-walk",
        ),
        ("psec_safe", SAFE, "data=nonsense", "config.data: bad dataset name 'nonsense'"),
        (
            "psec_safe",
            SAFE,
            "data=hopper-medium-10traj",
            "config.data='hopper-medium-10traj' is not data of config.env",
        ),
        ("psec_safe", SAFE, "data={body}-medium", "config.data='{body}-medium' is not a template with {env}"),
        ("psec_safe", SAFE, "env=walker-walk", "config.env='walker-walk' has no cost"),
        ("psec_dynamics", DYNAMICS, "source_data=nonsense", "config.source_data: bad dataset name 'nonsense'"),
        (
            "psec_dynamics",
            DYNAMICS,
            "source_data={env}-{kind}-10traj",
            "config.source_data='halfcheetah-medium-10traj' is not halfcheetah with friction_0.5 dynamics",
        ),
        ("psec_dynamics", DYNAMICS, "target_data={env}:{variant}-{kind}-10traj", "config.target_data="),
        ("psec_dynamics", DYNAMICS, "env=cartpole", "config.env must be one of"),
        ("psec_dynamics", DYNAMICS, "compose.alpha_targets=(8.0,)", "compose.alpha_targets must be (t0, t1)"),
    ],
)
def test_dataset_names_that_do_not_parse_or_fit_the_env_are_refused(tmp_path, capsys, name, config, override, message):
    assert message in refused(capsys, tmp_path, name, config, override)


def test_the_duplicate_methods_of_a_psec_table_are_refused(tmp_path, capsys):
    assert "repeats" in refused(capsys, tmp_path, "psec_continual", CONTINUAL, "methods=psec,scratch,psec")


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["sac.batch_size=10000"], "sac.batch_size (10000) must not exceed sac.min_replay (8192)"),
        (["sac.num_envs=100", "sac.replay_size=50"], "sac.num_envs (100) must not exceed sac.replay_size (50)"),
    ],
)
def test_behavior_refuses_sac_sizes_before_building_the_env(tmp_path, capsys, overrides, message):
    assert message in refused(capsys, tmp_path, "behavior", BEHAVIOR, *overrides)


@pytest.mark.parametrize("value, expected", [("true", True), ("false", False)])
def test_lm_gather_weights_can_be_set_from_the_command_line(value, expected):
    lm_config = Path(__file__).resolve().parents[1] / "psec_jax" / "configs" / "lm_moe.py"
    config, _, _ = cli.parse_experiment_flags(
        "lm_moe", [f"--config={lm_config}:tiny", "--workdir=w", f"--config.model.gather_weights={value}"]
    )
    assert config.model.gather_weights is expected
