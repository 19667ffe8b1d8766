"""Tests of the corpus sources (sources.py) and of what text.py builds from them: the "packages" source
(listing, deduplication, split), the held-out "other" text, and that "stdlib" builds keep their cache
keys and checksums. Hand-made distributions live in a temporary site directory; one tiny build per
source is shared by the module."""

import hashlib
import importlib.metadata
import json
import re
from pathlib import Path

import numpy as np
import pytest

from psec_jax.models import sources, text

ARGS = dict(vocab_size=300, max_corpus_bytes=30_000, seq_len=64, num_task_examples=50, num_val_task_examples=20, seed=0)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _install(site: Path, name: str, files: dict[str, bytes], version="1.0", body="", description_field=None):
    """A distribution as pip leaves it: `files` under `site`, listed in RECORD, and a METADATA file
    (its body the long description, or an old-style `Description` field)."""
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    headers = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    if description_field is not None:
        headers += f"Description: {description_field}\n"
    (info / "METADATA").write_text(headers + (f"\n{body}" if body else ""))
    for rel, raw in files.items():
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_bytes(raw)
    (info / "RECORD").write_text("".join(f"{rel},,\n" for rel in [*files, f"{info.name}/METADATA"]))


@pytest.fixture(scope="module")
def packages():
    """The real "packages" listing (reads ~90 MB once)."""
    return sources.listing("packages")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PSEC_JAX_DATA_DIR", str(tmp_path_factory.mktemp("cache")))
        yield text.get(**ARGS, source="packages")


class TestListing:
    def test_keeps_library_python_only(self, tmp_path):
        site = tmp_path / "lib" / "site"
        kept = ["pkg/__init__.py", "pkg/sub/b.py", "pkg/testament.py"]
        left_out = [
            "pkg/tests/t.py",
            "pkg/testing/u.py",
            "pkg/_tests/v.py",
            "pkg/test/w.py",
            "pkg/_vendor/x.py",
            "pkg/third_party/y.py",
            "pkg/test_a.py",
            "pkg/a_test.py",
            "pkg/conftest.py",
            "pkg/data.txt",
            "pkg/stub.pyi",
            "../../bin/script.py",  # outside the install root
        ]
        _install(site, "foo", {rel: f"# {rel}\n".encode() for rel in kept + left_out}, version="2.3")
        files, versions = sources.package_files(["foo"], [str(site)])
        assert [identifier for identifier, _ in files] == [f"foo/{rel}" for rel in kept]
        assert all(p.read_bytes() == f"# {rel}\n".encode() for (_, p), rel in zip(files, kept))
        assert versions == {"foo": "2.3"}

    def test_deduplicate_keeps_the_first_identifier_by_content(self):
        files = [
            ("b/x.py", b"a = 1\r\n"),  # equal to a/y.py once line endings are \n
            ("a/y.py", b"a = 1\n"),
            ("c/z.py", b"a = 1\r"),
            ("a/z.py", b"a = 2\n"),
            ("c/w.py", b"a = 1 \n"),  # a different byte: kept
        ]
        kept, dropped = sources.deduplicate(files)
        # sorted: a/y.py, a/z.py, b/x.py, c/w.py, c/z.py; b/x.py and c/z.py repeat a/y.py
        assert kept == [("a/y.py", b"a = 1\n"), ("a/z.py", b"a = 2\n"), ("c/w.py", b"a = 1 \n")]
        assert dropped == ["b/x.py", "c/z.py"]

    def test_listing_dedups_across_distributions_and_splits_by_identifier(self, tmp_path):
        site = tmp_path / "site"
        body = {f"m{i}.py": f"x = {i}\n".encode() for i in range(60)}
        _install(site, "alpha", {f"alpha/{rel}": raw for rel, raw in body.items()})
        # beta repeats alpha's m0..m9 (once with \r\n) and adds 40 of its own
        copies = {f"beta/m{i}.py": body[f"m{i}.py"].replace(b"\n", b"\r\n" if i == 0 else b"\n") for i in range(10)}
        _install(site, "beta", {**copies, **{f"beta/n{i}.py": f"y = {i}\n".encode() for i in range(40)}}, "0.5")
        got = sources.listing("packages", ["beta", "alpha"], [str(site)])
        assert got == sources.listing("packages", ["alpha", "beta"], [str(site)])  # the order of names is moot
        assert got.versions == {"beta": "0.5", "alpha": "1.0"}
        train, val = ([i for i, _ in got.splits[s]] for s in ("train", "val"))
        every = sorted(
            [f"alpha/alpha/m{i}.py" for i in range(60)] + [f"beta/beta/n{i}.py" for i in range(40)]
        )  # the beta/beta/m*.py copies are dropped: alpha sorts first
        assert sorted(train + val) == every and train == sorted(train) and val == sorted(val)
        assert val == [i for i in every if int(_sha(i.encode()), 16) % 20 == 0]
        dropped_val = sum(int(_sha(f"beta/beta/m{i}.py".encode()), 16) % 20 == 0 for i in range(10))
        assert got.duplicates == {"train": 10 - dropped_val, "val": dropped_val}  # by the copy's own identifier

    def test_missing_distribution_names_it_and_how_to_install(self, tmp_path, monkeypatch):
        with pytest.raises(sources.MissingDistributionError) as e:
            sources.listing("packages", ["no-such-dist-xyz"], [str(tmp_path)])
        assert "'no-such-dist-xyz'" in str(e.value) and "pip install" in str(e.value) and "\n" not in str(e.value)
        monkeypatch.setattr(sources, "PACKAGES", (*sources.PACKAGES, "no-such-dist-xyz"))
        with pytest.raises(sources.MissingDistributionError, match="no-such-dist-xyz"):
            text.build(tmp_path / "out", **ARGS, source="packages")
        assert not (tmp_path / "out").exists()

    def test_prefix_stops_at_the_first_file_that_does_not_fit(self):
        files = [("a", b"123"), ("b", b"1234"), ("c", b"12")]
        assert sources.prefix(files, 7) == files[:2]  # 3 + 4 = 7
        assert sources.prefix(files, 6) == files[:1]  # b does not fit; c would, but a cap keeps a prefix
        assert sources.prefix(files, 2) == [] and sources.prefix(files, None) == files

    def test_sample_is_deterministic_and_sorted(self):
        split = sources.take(
            sources.Listing({"train": [(f"f{i}", b"x" * 10) for i in range(50)]}, {"train": 0}, {}), None
        )["train"]
        assert sources.sample(split, 500) == split.texts  # all 500 bytes fit
        chosen = sources.sample(split, 105)  # 10 files of 10 bytes, the first 10 in sha256 order
        order = sorted(range(50), key=lambda i: _sha(f"f{i}".encode()))
        assert len(chosen) == 10 and chosen == [split.texts[i] for i in sorted(order[:10])]

    def test_unknown_source(self):
        with pytest.raises(ValueError, match=r"source must be one of \('stdlib', 'packages'\)"):
            sources.listing("web")
        with pytest.raises(ValueError, match="source must be one of"):
            text.cache_path(**ARGS, source="web")


class TestPackages:
    def test_every_distribution_is_pinned_and_torch_is_not_used(self):
        pinned = Path(__file__).parents[1] / "constraints.txt"
        norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()
        names = {norm(line.split("==")[0]) for line in pinned.read_text().splitlines() if "==" in line}
        assert {norm(n) for n in sources.PACKAGES} <= names and "torch" not in sources.PACKAGES

    def test_every_distribution_is_installed_by_make_install(self):
        # the dependency closure of psec-jax[dev], which `make install` installs: a corpus distribution
        # outside it would be missing on a fresh machine (chex was, once)
        from packaging.requirements import Requirement

        norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()
        closure, todo = set(), [("psec-jax", "dev")]
        while todo:
            name, extra = todo.pop()
            if norm(name) in closure:
                continue
            closure.add(norm(name))
            for line in importlib.metadata.requires(name) or []:
                req = Requirement(line)
                if req.marker is None or req.marker.evaluate({"extra": extra or ""}):
                    todo.append((req.name, None))
        assert {norm(n) for n in sources.PACKAGES} <= closure, {norm(n) for n in sources.PACKAGES} - closure

    def test_listing_is_deterministic_deduplicated_and_clean(self, packages):
        assert sources.listing("packages") == packages
        assert packages.versions == {n: importlib.metadata.version(n) for n in sources.PACKAGES}
        files = packages.splits["train"] + packages.splits["val"]
        identifiers = [i for i, _ in files]
        assert len(set(identifiers)) == len(identifiers) and {i.split("/")[0] for i in identifiers} == set(
            sources.PACKAGES
        )
        assert len({_sha(raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n")) for _, raw in files}) == len(files)
        assert not any({"tests", "test", "_vendor", "third_party"} & set(i.split("/")) for i in identifiers)
        assert sum(packages.duplicates.values()) > 0  # e.g. the many empty __init__.py files
        assert 0.03 < len(packages.splits["val"]) / len(files) < 0.08
        assert sum(len(raw) for _, raw in files) > 50e6  # tens of millions of tokens


class TestPackagesBuild:
    def test_splits_are_prefixes_disjoint_and_by_file(self, data, packages):
        m = data.meta
        assert m["source"] == "packages" and data.path.name.startswith("packages-v300-")
        assert m["packages"] == packages.versions and m["args"] == ARGS
        full = sources.take(packages, ARGS["max_corpus_bytes"])
        for split in ("train", "val"):
            s = m["splits"][split]
            assert s["paths"] == [i for i, _ in packages.splits[split][: s["files"]]] and s["files"] > 0
            assert s["checksum"] == full[split].checksum and 0 < s["bytes"] <= ARGS["max_corpus_bytes"]
            assert all(sources.is_validation(i) == (split == "val") for i in s["paths"])
            assert s["duplicates"] == packages.duplicates[split]
        assert not set(m["splits"]["train"]["paths"]) & set(m["splits"]["val"]["paths"])

    def test_checksums_verify_against_the_installed_files(self, data):
        for split in ("train", "val"):
            lines = ""
            for identifier in data.meta["splits"][split]["paths"]:
                name, rel = identifier.split("/", 1)
                lines += f"{identifier} {_sha(Path(sources.distribution(name).locate_file(rel)).read_bytes())}\n"
            assert _sha(lines.encode()) == data.meta["splits"][split]["checksum"]
        assert text.load(data.path).meta == data.meta  # every file's sha256 checks

    def test_other_split_is_the_readme_text_and_never_trained_on(self, data):
        other = data.meta["other"]
        assert other["files"] > 0 and all(p.endswith("/METADATA") for p in other["paths"])
        assert not set(other["paths"]) & set(data.meta["splits"]["train"]["paths"])
        assert data.other.dtype == np.uint16 and data.other.size == other["tokens"] > 0
        docs = [sources.long_description(sources.distribution(p.split("/")[0])) for p in other["paths"]]
        decode = lambda tokens: data.tokenizer.decode(np.asarray(tokens).tolist(), skip_special_tokens=False)
        assert decode(data.other) == "<|endoftext|>".join(docs)
        train_text = decode(data.train)
        assert not any(doc[:200] in train_text for doc in docs)
        assert other["packages"] == data.meta["packages"]

    def test_cache_key_names_the_source(self, data, monkeypatch):
        monkeypatch.setenv("PSEC_JAX_DATA_DIR", str(data.path.parent.parent))
        assert text.cache_path(**ARGS, source="packages") == data.path
        assert text.cache_path(**ARGS).name.startswith("stdlib-v300-")

    def test_corrupt_other_is_named(self, data, tmp_path):
        copy = tmp_path / data.path.name
        copy.mkdir()
        for f in data.path.iterdir():
            (copy / f.name).write_bytes(f.read_bytes())
        raw = bytearray((copy / "other.npy").read_bytes())
        raw[-3] ^= 1
        (copy / "other.npy").write_bytes(bytes(raw))
        with pytest.raises(text.TextDataError, match=r"other\.npy is corrupt \(sha256 mismatch\)"):
            text.load(copy)


class TestOtherText:
    def test_long_descriptions_from_metadata(self, tmp_path):
        _install(tmp_path, "one", {}, body="# One\n\nREADME of one.\n")
        _install(tmp_path, "two", {}, description_field="old style")
        _install(tmp_path, "three", {})  # no description: no document
        _install(tmp_path, "four", {}, body="# One\n\nREADME of one.\n")  # one's text again
        got = sources.other_files(["two", "one", "three", "four"], [str(tmp_path)])
        # sorted: four, one, two; one's text repeats four's, which sorts first
        assert got.splits == {
            "other": [("four/METADATA", b"# One\n\nREADME of one.\n"), ("two/METADATA", b"old style")]
        }
        assert got.duplicates == {"other": 1} and got.versions == dict.fromkeys(["two", "one", "three", "four"], "1.0")


def _old_stdlib_checksums(max_corpus_bytes):
    """The stdlib split checksums as text.py computed them before sources.py (reference): files under
    the stdlib root by relative path, validation iff sha256(path) % 20 == 0, a prefix of each split's
    sorted files by size, sha256 over the "path sha256" lines."""
    root = sources.stdlib_root()
    lines, totals, full = {"train": "", "val": ""}, {"train": 0, "val": 0}, set()
    for p in sources.stdlib_files():
        rel = p.relative_to(root).as_posix()
        split = "val" if int(_sha(rel.encode()), 16) % 20 == 0 else "train"
        if split in full or totals[split] + p.stat().st_size > max_corpus_bytes:
            full.add(split)
            continue
        totals[split] += p.stat().st_size
        lines[split] += f"{rel} {_sha(p.read_bytes())}\n"
    return {split: _sha(s.encode()) for split, s in lines.items()}


@pytest.fixture(scope="module")
def stdlib(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PSEC_JAX_DATA_DIR", str(tmp_path_factory.mktemp("cache")))
        yield text.get(**ARGS)


class TestStdlibUnchanged:
    def test_cache_key_and_checksums_are_those_from_before_sources(self, stdlib):
        checksums = _old_stdlib_checksums(ARGS["max_corpus_bytes"])
        identity = {"format": text.FORMAT, "args": ARGS, "tokenizers": text.tokenizers.__version__}
        key = _sha(json.dumps({**identity, "corpus": checksums}, sort_keys=True).encode())[:12]
        assert stdlib.path.name == f"stdlib-v300-{key}"
        assert {s: stdlib.meta["splits"][s]["checksum"] for s in ("train", "val")} == checksums
        assert stdlib.meta["source"] == "stdlib" and stdlib.meta["packages"] == {}
        assert all(stdlib.meta["splits"][s]["duplicates"] == 0 for s in ("train", "val"))
        # meta.json's sha256 table has the files of builds from before the other split, no more
        assert set(stdlib.meta["sha256"]) == {"tokenizer.json", "train.npy", "val.npy"} | {
            f"tasks_{s}_{k}.npy" for s in ("train", "val") for k in ("tokens", "labels")
        }

    def test_the_other_split_is_the_same_text_as_for_packages(self, stdlib, data):
        assert stdlib.meta["other"]["checksum"] == data.meta["other"]["checksum"]
        assert stdlib.meta["other"]["paths"] == data.meta["other"]["paths"] and stdlib.other.size > 0

    def test_a_build_from_before_the_other_split_gets_it(self, stdlib, monkeypatch):
        monkeypatch.setenv("PSEC_JAX_DATA_DIR", str(stdlib.path.parent.parent))
        before = {f.name: f.read_bytes() for f in stdlib.path.iterdir()}
        for name in ("other.npy", "other.json", "other.json.sha256"):
            (stdlib.path / name).unlink()
        with pytest.raises(text.TextDataError, match=r"other\.json is missing.*`text\.get` adds it"):
            text.load(stdlib.path)
        again = text.get(**ARGS)
        assert again.path == stdlib.path and {f.name: f.read_bytes() for f in stdlib.path.iterdir()} == before


def test_line_overlap_counts_long_validation_lines_found_in_train():
    train = [b"import numpy as np  # a long enough line\nx = 1\n", b"def f():\n    return 'a long line of text here'\n"]
    val = [
        b"import numpy as np  # a long enough line\n    return 'a long line of text here'\n"
        b"print('not in train at all!')\nx = 1\n"
    ]
    out = sources.line_overlap(train, val)
    assert out["lines"] == 3  # "x = 1" is too short to count
    assert out["line_share"] == pytest.approx(2 / 3)
    long = [len("import numpy as np  # a long enough line"), len("return 'a long line of text here'")]
    assert out["byte_share"] == pytest.approx(sum(long) / (sum(long) + len("print('not in train at all!')")))
    assert sources.line_overlap([], [])["line_share"] == 0.0
