"""Inputs that used to give silently wrong results: skills or composers loaded onto another pi_0 of the
same shapes, dataset requests sharing a cache file, non-finite or mistyped settings, NaN skill weights."""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from lora_helpers import TwoLayer, random_library

from psec_jax import artifacts, lora
from psec_jax.data import datasets, formats, pinned
from psec_jax.rl import policy, saving

X = jax.random.normal(jax.random.key(42), (6, 8))


@pytest.fixture(scope="module")
def bases():
    """Two bases of identical paths, shapes and dtypes: pi_0 of two seeds."""
    return TwoLayer().init(jax.random.key(0), X), TwoLayer().init(jax.random.key(1), X)


# ----- artifacts built on a base ----------------------------------------------------------------


def test_tree_sha256_is_of_the_values_in_path_order(bases):
    base, other = bases
    assert lora.tree_sha256(base) == lora.tree_sha256(jax.tree.map(np.asarray, base))  # host or device
    assert lora.tree_sha256(base) != lora.tree_sha256(other)
    nudged = jax.tree.map(lambda x: x, base)
    nudged["params"]["LoRADense_1"]["bias"] = base["params"]["LoRADense_1"]["bias"].at[0].add(1e-7)
    assert lora.tree_sha256(nudged) != lora.tree_sha256(base)  # one ulp-sized change is another base
    reordered = {"params": dict(reversed(list(base["params"].items())))}
    assert lora.tree_sha256(reordered) == lora.tree_sha256(base)  # canonical (sorted) path order
    as_bf16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), base)
    assert lora.tree_sha256(as_bf16) != lora.tree_sha256(base)


def test_library_refuses_another_seeds_base(bases, tmp_path):
    base, other = bases
    lib = random_library(base, [2])
    lib.save(tmp_path / "lib")
    meta = json.loads((tmp_path / "lib" / "library.json").read_text())
    assert meta["base_sha256"] == lora.tree_sha256(base)
    assert lora.SkillLibrary.load(tmp_path / "lib", base).names == ["s0"]
    with pytest.raises(lora.LibraryError, match="base weights differ") as err:
        lora.SkillLibrary.load(tmp_path / "lib", other)
    message = str(err.value)
    assert "\n" not in message and str(tmp_path / "lib") in message
    assert lora.tree_sha256(base)[:12] in message and lora.tree_sha256(other)[:12] in message
    with pytest.raises(lora.LibraryError, match="base weights differ"):
        lib.check_base(other)
    with pytest.raises(lora.LibraryError, match=f"library {tmp_path / 'lib'} does not fit .* base weights differ"):
        lora.SkillLibrary.load(tmp_path / "lib").check_base(other)
    lib.check_base(base)
    lora.SkillLibrary.load(tmp_path / "lib").check_base(base)


def test_library_without_the_base_hash_is_refused(bases, tmp_path):
    base, _ = bases
    random_library(base, [2]).save(tmp_path / "lib")
    path = tmp_path / "lib" / "library.json"
    meta = json.loads(path.read_text())
    del meta["base_sha256"]
    path.write_text(json.dumps(meta, indent=1))
    (tmp_path / "lib" / "library.json.sha256").write_text(f"{artifacts.sha256(path)}  library.json\n")
    with pytest.raises(lora.LibraryError, match="base_sha256"):
        lora.SkillLibrary.load(tmp_path / "lib", base)
    meta["format"] = "psec_jax.skill_library/2"  # saved by the version before the hash
    path.write_text(json.dumps(meta, indent=1))
    (tmp_path / "lib" / "library.json.sha256").write_text(f"{artifacts.sha256(path)}  library.json\n")
    with pytest.raises(lora.LibraryError, match="re-create it"):
        lora.SkillLibrary.load(tmp_path / "lib", base)


def test_composer_refuses_another_base_or_other_skills(bases, tmp_path):
    base, other = bases
    lib = random_library(base, [2, 2])
    skills = policy.Skills(lib.adapters, lib.scales)
    params = {"w": np.arange(4.0, dtype=np.float32)}
    saving.save_composer(
        tmp_path / "c", params, base=base, skills=skills, names=lib.names, mode="param", kind="context"
    )
    back, meta = saving.load_composer(tmp_path / "c", base, skills)
    np.testing.assert_array_equal(np.asarray(back["w"]), params["w"])
    assert meta["skills"] == lib.names and meta["base_sha256"] == lora.tree_sha256(base)
    with pytest.raises(artifacts.ArtifactError, match="base weights differ") as err:
        saving.load_composer(tmp_path / "c", other, skills)
    assert "\n" not in str(err.value) and str(tmp_path / "c") in str(err.value)
    # the library reloaded from disk is the same skills, so it fits
    lib.save(tmp_path / "lib")
    reloaded = lora.SkillLibrary.load(tmp_path / "lib", base)
    saving.load_composer(tmp_path / "c", base, policy.Skills(reloaded.adapters, reloaded.scales))
    other_skills = random_library(base, [2, 2], seed=7)
    with pytest.raises(artifacts.ArtifactError, match="skills differ"):
        saving.load_composer(tmp_path / "c", base, policy.Skills(other_skills.adapters, other_skills.scales))


# ----- dataset requests --------------------------------------------------------------------------


def _fake_generate(calls):
    def generate(recipe, path, **kwargs):
        calls.append(recipe)
        data = {
            "observations": np.full((2, 1), recipe.noise, np.float32),
            "actions": np.zeros((2, 1), np.float32),
            "rewards": np.zeros(2, np.float32),
            "terminals": np.zeros(2, bool),
            "timeouts": np.array([False, True]),
            "next_observations": np.zeros((2, 1), np.float32),
        }
        formats.save_d4rl(path, data, {"noise": recipe.noise})
        return {}

    return generate


def test_nearby_noises_get_their_own_cache_files(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(datasets, "generate", _fake_generate(calls))
    monkeypatch.setattr(pinned, "applies", lambda: False)  # generate in this process
    a = datasets.get("walker-stand-expert-2traj", noise=0.5, directory=tmp_path)
    b = datasets.get("walker-stand-expert-2traj", noise=0.5000001, directory=tmp_path)
    assert a != b and len(calls) == 2 and [r.noise for r in calls] == [0.5, 0.5000001]
    assert formats.load_d4rl(b)[1]["noise"] == 0.5000001
    assert datasets.get("walker-stand-expert-2traj", noise=0.5, directory=tmp_path) == a and len(calls) == 2
    assert "noise0.5" in a.name  # still readable
    # the names without noise are as before (caches and the CLI's output rely on them)
    assert datasets.parse("walker-stand-medium-expert-2traj").filename == "walker-stand-medium-expert-2traj.hdf5"
    assert datasets.parse("walker-run-expert-10traj", seed=3).filename == "walker-run-expert-10traj-seed3.hdf5"
    # the regeneration command is exact too
    assert "--noise=0.5000001" in datasets.command(datasets.parse("walker-stand-expert-2traj", noise=0.5000001))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"noise": math.nan}, "noise must be a finite number"),
        ({"noise": math.inf}, "noise must be a finite number"),
        ({"noise": True}, "noise must be a finite number"),
        ({"noise": "0.5"}, "noise must be a finite number"),
        ({"noise": -0.1}, "noise must be >= 0"),
        ({"seed": True}, "seed must be an integer"),
        ({"seed": "3"}, "seed must be an integer"),
        ({"seed": 1.0}, "seed must be an integer"),
        ({"seed": -1}, r"seed must be in \[0, 2\*\*32\)"),
        ({"seed": 2**40}, r"seed must be in \[0, 2\*\*32\)"),  # PRNGKey(2**40) is PRNGKey(0)
    ],
)
def test_parse_refuses_bad_noise_and_seed(kwargs, message):
    with pytest.raises(ValueError, match=message) as err:
        datasets.parse("walker-stand-expert-2traj", **kwargs)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "name, message",
    [
        ("walker-stand-expert-0traj", ">= 1"),
        ("walker-stand-expert-1000000000traj", "at most"),
    ],
)
def test_impossible_trajectory_counts_fail_before_any_rollout(name, message, tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "generate", lambda *a, **k: pytest.fail("generated"))
    monkeypatch.setattr(pinned, "applies", lambda: False)  # generate in this process
    with pytest.raises(ValueError, match=message):
        datasets.get(name, directory=tmp_path)


def test_unwritable_cache_fails_before_generating(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "generate", lambda *a, **k: pytest.fail("generated before the check"))
    monkeypatch.setattr(pinned, "applies", lambda: False)  # generate in this process
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(formats.DatasetError, match="cannot write the dataset cache") as err:
        datasets.get("walker-stand-expert-2traj", directory=blocker / "cache")
    assert str(blocker / "cache") in str(err.value) and "\n" not in str(err.value)
    if os.geteuid() != 0:  # root writes into read-only directories
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        with pytest.raises(formats.DatasetError, match="Permission denied"):
            datasets.get("walker-stand-expert-2traj", directory=ro)


# ----- Python API settings -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"alpha": math.nan},
        {"alpha": math.inf},
        {"alpha": True},
        {"alpha": "16"},
        {"alpha": 0.0},
        {"alpha": -1.0},
        {"rank": True},
        {"rank": "8"},
        {"rank": 8.0},
        {"rank": 0},
        {"init_std": math.nan},
        {"init_std": -0.1},
        {"init_std": "0.02"},
        {"init_std": False},
        {"init_std": math.inf},
        {"targets": "kernel"},
        {"targets": (1,)},
        {"in_axes": (("out", True),)},
        {"in_axes": (("out", "2"),)},
        {"in_axes": (("out", 1.5),)},
        {"dtype": "float33"},
    ],
)
def test_lora_config_refuses_bad_values(kwargs):
    with pytest.raises(ValueError, match="LoRAConfig") as err:
        lora.LoRAConfig(**kwargs)
    assert "\n" not in str(err.value)


def test_lora_config_accepts_numpy_numbers_and_round_trips():
    cfg = lora.LoRAConfig(rank=np.int64(4), alpha=np.float32(8.0), init_std=0, dtype="bfloat16")
    assert cfg.rank == 4 and type(cfg.rank) is int and cfg.scale == 2.0
    assert lora.LoRAConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


# ----- NaN skill weights -------------------------------------------------------------------------

COMBINE_ARGS = {
    "exact": {},
    "cat": {},
    "svd": {"rank": 3},
    "ties": {"density": 0.5},
    "dare": {"density": 0.5, "key": jax.random.key(0)},
}


@pytest.fixture(scope="module")
def stacked(bases):
    return random_library(bases[0], [2, 3, 2])


@pytest.mark.parametrize("bad", [math.nan, math.inf])
@pytest.mark.parametrize("method", lora.METHODS)
def test_combine_refuses_non_finite_concrete_weights(stacked, method, bad):
    c = stacked.coefficients(jnp.array([1.0, bad, 0.5]))
    with pytest.raises(ValueError, match=r"non-finite coefficient.*skill 1") as err:
        lora.combine(stacked.adapters, c, method, **COMBINE_ARGS[method])
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("method", lora.METHODS)
def test_combine_under_jit_propagates_nan(bases, stacked, method):
    base = bases[0]
    merged = jax.jit(lambda c: lora.merge(base, lora.combine(stacked.adapters, c, method, **COMBINE_ARGS[method])))
    for name, kernel in lora.flatten(merged(jnp.array([1.0, jnp.nan, 0.5]))).items():
        if name.endswith("kernel"):
            assert np.isnan(np.asarray(kernel)).all(), (method, name)
    for kernel in lora.flatten(merged(jnp.array([1.0, 0.2, 0.5]))).values():
        assert np.isfinite(np.asarray(kernel)).all()


@pytest.mark.parametrize("factor", [True, 0.0, -1.0, float("nan"), float("inf"), "1.25"])
def test_capacity_factor_refuses_values_that_are_not_a_positive_number(factor):
    from psec_jax.moe import grouped

    with pytest.raises(ValueError, match="capacity_factor"):
        grouped.capacity_of(64, 8, factor, 2)
    assert grouped.capacity_of(64, 8, 1.25, 2) == 20  # ceil(1.25 * 64 * 2 / 8)
