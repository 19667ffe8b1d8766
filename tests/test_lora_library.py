"""Tests of SkillLibrary: add/remove/select, mixed ranks, save/load and every failure mode."""

import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from lora_helpers import TwoLayer, random_library

from psec_jax import artifacts, lora
from psec_jax.testing import assert_trees_close

X = jax.random.normal(jax.random.key(42), (6, 8))


@pytest.fixture(scope="module")
def base():
    return TwoLayer().init(jax.random.key(0), X)


def test_add_remove_select_and_mixed_ranks(base):
    lib = random_library(base, [2, 4, 3])
    assert lib.names == ["s0", "s1", "s2"] and lib.max_rank == 4 and len(lib) == 3
    a = lib.adapters["params"]["LoRADense_0"]["kernel"].a
    assert a.shape == (3, 8, 4)
    np.testing.assert_array_equal(np.asarray(a[0, :, 2:]), 0)  # rank-2 skill padded with zeros
    # skill() returns each skill unpadded, exactly as it was added.
    cfg = lora.LoRAConfig(rank=2, alpha=2.0 * 2, b_init="normal", init_std=0.3)
    assert_trees_close(lib.skill("s0"), lora.init(jax.random.key(0), base, cfg), rtol=0, atol=0)
    sel = lib.select(["s2", "s0"])
    assert sel.names == ["s2", "s0"] and sel.max_rank == 3
    assert_trees_close(sel.skill("s0"), lib.skill("s0"), rtol=0, atol=0)
    assert lib.remove("s1").names == ["s0", "s2"]
    np.testing.assert_allclose(np.asarray(lib.as_weights({"s2": 0.5, "s0": -1.0})), [-1.0, 0.0, 0.5])
    np.testing.assert_allclose(np.asarray(lib.scales), [s.scale for s in lib.skills])
    # Padding is exact: the padded library computes what each skill computes alone.
    w = jnp.array([0.3, -0.4, 1.1])
    y = TwoLayer().apply({"params": base["params"], "lora": lib.adapters["params"]}, X, lib.coefficients(w))
    ref = base
    for i, name in enumerate(lib.names):
        ref = lora.merge(ref, lib.skill(name), float(w[i]) * lib.skills[i].scale)
    assert_trees_close(y, TwoLayer().apply(ref, X), rtol=1e-4, atol=1e-4)


def test_library_errors(base):
    lib = random_library(base, [2])
    with pytest.raises(lora.LibraryError, match="already in the library"):
        lib.add("s0", lib.skill("s0"), lora.LoRAConfig(rank=2))
    with pytest.raises(lora.LibraryError, match="no skill named 'x'"):
        lib.remove("x")
    with pytest.raises(lora.LibraryError, match="unknown skill"):
        lib.as_weights({"x": 1.0})
    with pytest.raises(lora.LibraryError, match="skill axis K=1"):
        lib.coefficients(jnp.ones(2))
    only_first = lora.init(jax.random.key(0), base, lora.LoRAConfig(rank=2, targets=("LoRADense_0/kernel",)))
    with pytest.raises(lora.LibraryError, match="same kernels"):
        lib.add("partial", only_first, lora.LoRAConfig(rank=2))


def test_save_load_round_trip(base, tmp_path):
    lib = random_library(base, [2, 3])
    lib = lib.add(
        "fresh",
        lora.init(jax.random.key(5), base, lora.LoRAConfig(rank=1)),
        lora.LoRAConfig(rank=1),
        train_config={"steps": 10},
        metrics={"return": 688.0},
    )
    lib.save(tmp_path / "lib")
    back = lora.SkillLibrary.load(tmp_path / "lib", base)
    assert back.names == lib.names and back.skills == lib.skills and back.paths == lib.paths
    assert_trees_close(back.adapters, lib.adapters, rtol=0, atol=0)
    assert back.skills[2].metrics == {"return": 688.0} and back.skills[2].train_config == {"steps": 10}
    lib.select(["s1"]).save(tmp_path / "lib")  # overwrite in place
    assert lora.SkillLibrary.load(tmp_path / "lib").names == ["s1"]
    assert [p.name for p in tmp_path.iterdir()] == ["lib"]  # no temporary directories left


def test_load_onto_another_base_names_the_mismatch(base, tmp_path):
    random_library(base, [2]).save(tmp_path / "lib")
    other = TwoLayer(hidden=10).init(jax.random.key(0), X)
    with pytest.raises(lora.LibraryError, match=r"'params/LoRADense_0/bias' is \(10,\) float32 here but was \(12,\)"):
        lora.SkillLibrary.load(tmp_path / "lib", other)
    bf16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), base)
    with pytest.raises(lora.LibraryError, match="bfloat16 here but was"):
        lora.SkillLibrary.load(tmp_path / "lib", bf16)


def test_corrupt_and_truncated_libraries_fail_clearly(base, tmp_path):
    with pytest.raises(lora.LibraryError, match="missing library.json"):
        lora.SkillLibrary.load(tmp_path / "nothing")
    lib = random_library(base, [2])
    lib.save(tmp_path / "lib")
    meta = json.loads((tmp_path / "lib" / "library.json").read_text())
    data_file = max(meta["files"], key=lambda f: (tmp_path / "lib" / f).stat().st_size)
    path = tmp_path / "lib" / data_file
    original = path.read_bytes()
    path.write_bytes(original[: len(original) // 2])
    with pytest.raises(lora.LibraryError, match=f"truncated or changed file {data_file}"):
        lora.SkillLibrary.load(tmp_path / "lib")
    flipped = bytearray(original)
    flipped[len(flipped) // 2] ^= 0x01
    path.write_bytes(bytes(flipped))
    with pytest.raises(lora.LibraryError, match=f"checksum mismatch in {data_file}"):
        lora.SkillLibrary.load(tmp_path / "lib")
    path.unlink()
    with pytest.raises(lora.LibraryError, match=f"missing file {data_file}"):
        lora.SkillLibrary.load(tmp_path / "lib")
    path.write_bytes(original)
    lora.SkillLibrary.load(tmp_path / "lib")  # restored: loads again
    (tmp_path / "lib" / "library.json").write_text('{"format": "psec_jax.skill_lib')
    with pytest.raises(lora.LibraryError, match="library.json was changed after it was saved"):
        lora.SkillLibrary.load(tmp_path / "lib")
    _reseal(tmp_path / "lib")
    with pytest.raises(lora.LibraryError, match="corrupt manifest"):
        lora.SkillLibrary.load(tmp_path / "lib")
    (tmp_path / "lib" / "library.json.sha256").unlink()
    with pytest.raises(lora.LibraryError, match="has no library.json.sha256"):
        lora.SkillLibrary.load(tmp_path / "lib")


def _reseal(directory):
    """Rewrites library.json's checksum, as a careless tool would after editing it."""
    (directory / "library.json.sha256").write_text(f"{artifacts.sha256(directory / 'library.json')}  library.json\n")


def test_edited_metadata_is_caught_by_the_checksum(base, tmp_path):
    random_library(base, [2]).save(tmp_path / "lib")
    path = tmp_path / "lib" / "library.json"
    meta = json.loads(path.read_text())
    meta["skills"][0]["scale"] = 99.0  # the value that silently changed a policy before
    path.write_text(json.dumps(meta, indent=1))
    with pytest.raises(lora.LibraryError, match="changed after it was saved") as err:
        lora.SkillLibrary.load(tmp_path / "lib", base)
    assert "\n" not in str(err.value)


def _set(path, value):
    def edit(meta):
        *parents, last = path
        target = meta
        for key in parents:
            target = target[key]
        if value is KeyError:
            del target[last]
        else:
            target[last] = value

    return edit


@pytest.mark.parametrize(
    "edit, message",
    [
        (_set(["skills", 0, "rank"], KeyError), r"skills\[0\] must be an object with fields"),
        (_set(["skills", 0, "rank"], "2"), r"skills\[0\]\.rank must be a positive integer, got '2'"),
        (_set(["skills", 0, "rank"], 0), r"skills\[0\]\.rank must be a positive integer"),
        (_set(["skills", 0, "scale"], "16"), r"skills\[0\]\.scale must be a finite number"),
        (_set(["skills", 0, "metrics"], []), r"skills\[0\]\.metrics must be an object"),
        (_set(["skills", 0, "extra"], 1), r"skills\[0\] must be an object with fields"),
        (_set(["skills"], {}), "skills must be a list"),
        (_set(["skills"], []), "skills must be a non-empty list"),
        (_set(["paths"], KeyError), "paths must be a dict, got 'nothing'"),
        (_set(["base_fingerprint", 0], ["params/x", "3x4", "float32"]), r"base_fingerprint\[0\] must be"),
        (lambda m: m["skills"].append(dict(m["skills"][0])), "skills\\[\\]\\.name must be unique"),
        (lambda m: m["skills"].append(dict(m["skills"][0], name="copy")), "2 skills of rank <= 2, but"),
    ],
)
def test_malformed_metadata_is_a_library_error(base, tmp_path, edit, message):
    random_library(base, [2]).save(tmp_path / "lib")
    path = tmp_path / "lib" / "library.json"
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta, indent=1))
    _reseal(tmp_path / "lib")  # the checksum passes: only the metadata check stands in the way
    with pytest.raises(lora.LibraryError, match="malformed metadata") as err:
        lora.SkillLibrary.load(tmp_path / "lib", base)
    assert re.search(message, str(err.value)), str(err.value)


def test_save_replaces_only_a_library_it_wrote(base, tmp_path):
    lib = random_library(base, [2])
    plain = tmp_path / "notes.txt"
    plain.write_text("user data")
    with pytest.raises(lora.LibraryError, match="it is a file, not a saved artifact"):
        lib.save(plain)
    assert plain.read_text() == "user data"

    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "results.csv").write_text("1,2,3")
    with pytest.raises(lora.LibraryError, match="not a skill library saved by psec_jax"):
        lib.save(theirs)
    assert (theirs / "results.csv").read_text() == "1,2,3"

    lib.save(tmp_path / "lib")
    (tmp_path / "lib" / "README").write_text("what this library is for")
    with pytest.raises(lora.LibraryError, match="it holds README, which the saved skill library does not"):
        lib.save(tmp_path / "lib")
    assert (tmp_path / "lib" / "README").is_file()
    (tmp_path / "lib" / "README").unlink()
    lib.select(["s0"]).save(tmp_path / "lib")  # only its own files: replaced

    composer = tmp_path / "composer"
    artifacts.save_tree(composer, {"w": np.ones(2)}, {"format": "psec_jax.composer/1"})
    with pytest.raises(lora.LibraryError, match="not a skill library saved by psec_jax"):
        lib.save(composer)
    same_manifest_name = tmp_path / "other"
    artifacts.save_tree(
        same_manifest_name, {"w": np.ones(2)}, {"format": "psec_jax.composer/1"}, manifest="library.json"
    )
    with pytest.raises(lora.LibraryError, match="it holds a composer, not a skill library"):
        lib.save(same_manifest_name)

    (tmp_path / "empty").mkdir()
    lib.save(tmp_path / "empty")  # an empty directory holds nothing to lose
    assert lora.SkillLibrary.load(tmp_path / "empty").names == ["s0"]


def test_a_failed_save_keeps_the_previous_library(base, tmp_path, monkeypatch):
    good = random_library(base, [2])
    good.save(tmp_path / "lib")

    def boom(path):
        raise OSError("disk full")

    monkeypatch.setattr(artifacts, "sha256", boom)
    with pytest.raises(lora.LibraryError, match="disk full"):
        random_library(base, [3], seed=1).save(tmp_path / "lib")
    monkeypatch.undo()
    back = lora.SkillLibrary.load(tmp_path / "lib", base)
    assert_trees_close(back.adapters, good.adapters, rtol=0, atol=0)
    assert sorted(os.listdir(tmp_path)) == ["lib"]
