"""Tests of the language-model data: stdlib corpus and tokenizer (text.py), the task mixture
(tasks.py) and the host batch pipeline (pipeline.py). One small build (first ~300 kB of each split,
vocabulary 384) is shared by the module."""

import json
import math
import re
import shutil
import sys

import numpy as np
import pytest

from psec_jax.models import pipeline, tasks, text

ARGS = dict(
    vocab_size=384, max_corpus_bytes=350_000, seq_len=64, num_task_examples=600, num_val_task_examples=200, seed=3
)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PSEC_JAX_DATA_DIR", str(tmp_path_factory.mktemp("cache")))
        yield text.get(**ARGS)


def _first_doc(tokens, eot_id):
    return tokens[: int(np.argmax(np.asarray(tokens) == eot_id))].tolist()


class TestCorpus:
    def test_stdlib_files_excludes_packages_and_tests(self, tmp_path):
        for rel in (
            "b.py",
            "a.py",
            "notes.txt",
            "pkg/c.py",
            "pkg/test_x.py",
            "site-packages/d.py",
            "dist-packages/e.py",
            "test/f.py",
            "pkg/tests/g.py",
            "idlelib/idle_test/h.py",
        ):
            (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / rel).write_text("x = 1\n")
        got = [p.relative_to(tmp_path).as_posix() for p in text.stdlib_files(tmp_path)]
        assert got == ["a.py", "b.py", "pkg/c.py", "pkg/test_x.py"]

    def test_split_is_by_file_disjoint_and_about_5_percent(self, data):
        train, val = (set(data.meta["splits"][s]["paths"]) for s in ("train", "val"))
        assert train and val and not train & val
        assert all(text.is_validation(p) for p in val) and not any(text.is_validation(p) for p in train)
        root = text.stdlib_root()
        every = [p.relative_to(root).as_posix() for p in text.stdlib_files()]
        assert 0.03 < np.mean([text.is_validation(p) for p in every]) < 0.08
        # max_corpus_bytes keeps a prefix of each split's sorted file list
        for split, chosen in (("train", train), ("val", val)):
            files = [p for p in every if text.is_validation(p) == (split == "val")]
            assert data.meta["splits"][split]["paths"] == files[: len(chosen)]
            assert data.meta["splits"][split]["bytes"] <= ARGS["max_corpus_bytes"]

    def test_meta_records_sizes_and_checksums(self, data):
        m = data.meta
        assert m["splits"]["train"]["tokens"] == data.train.size and m["splits"]["val"]["tokens"] == data.val.size
        assert m["python"] == sys.version and m["stdlib"] == str(text.stdlib_root())
        assert set(m["sha256"]) == {
            "tokenizer.json",
            "train.npy",
            "val.npy",
            "tasks_train_tokens.npy",
            "tasks_train_labels.npy",
            "tasks_val_tokens.npy",
            "tasks_val_labels.npy",
        }
        assert m["args"] == ARGS and data.path.name.startswith("stdlib-v384-")
        assert data.train.dtype == np.uint16 and data.train.ndim == 1 and isinstance(data.train, np.memmap)
        # files joined by <|endoftext|>: one separator fewer than files
        assert (np.asarray(data.train) == data.eot_id).sum() == m["splits"]["train"]["files"] - 1
        assert (np.asarray(data.train) == data.pad_id).sum() == 0

    def test_build_is_deterministic(self, data, tmp_path):
        again = json.loads((text.build(tmp_path / "again", **ARGS) / "meta.json").read_text())
        assert again["sha256"] == data.meta["sha256"]
        assert again["splits"] == data.meta["splits"]

    def test_get_reuses_the_cache(self, data, monkeypatch):
        monkeypatch.setenv("PSEC_JAX_DATA_DIR", str(data.path.parent.parent))
        mtime = (data.path / "train.npy").stat().st_mtime_ns
        assert text.get(**ARGS).path == data.path
        assert (data.path / "train.npy").stat().st_mtime_ns == mtime
        assert text.cache_path(**{**ARGS, "seed": 4}) != data.path


class TestTokenizer:
    def test_round_trips_stdlib_text_exactly(self, data):
        root = text.stdlib_root()
        first = (root / data.meta["splits"]["train"]["paths"][0]).read_text(encoding="utf-8")
        assert data.tokenizer.decode(_first_doc(data.train, data.eot_id)) == first
        non_ascii = next(p for p in text.stdlib_files() if not p.read_bytes().isascii()).read_text(encoding="utf-8")
        for source in (first, non_ascii, "\tx  =  '<|pad|>'\r\n\n\n    é 日本 \x00"):
            ids = data.tokenizer.encode(source, add_special_tokens=False).ids
            assert data.tokenizer.decode(ids) == source
            assert data.pad_id not in ids  # special tokens written in a text stay text

    def test_each_digit_is_its_own_token(self, data):
        vocab = data.tokenizer.get_vocab()
        assert data.vocab_size == len(vocab) == 384
        assert vocab["<|endoftext|>"] == data.eot_id == 0 and vocab["<|pad|>"] == data.pad_id == 1
        with_digit = [t for t in vocab if re.search(r"\d", t)]
        assert sorted(with_digit) == list("0123456789")
        ids = data.tokenizer.encode("x=31415", add_special_tokens=False).ids
        assert [data.tokenizer.id_to_token(i) for i in ids[-5:]] == list("31415")

    def test_vocab_above_uint16_rejected(self, tmp_path):
        with pytest.raises(ValueError, match="vocab_size"):
            text.build(tmp_path / "big", **{**ARGS, "vocab_size": 65537})

    def test_unigram_loss_by_hand(self):
        # counts + 1 over 3 ids: [2+1, 1+1, 0+1] / 6 = [1/2, 1/3, 1/6]; val tokens 0 and 2:
        # -(ln 1/2 + ln 1/6) / 2 = ln(12) / 2
        assert text.unigram_loss(np.array([0, 0, 1]), np.array([0, 2]), 3) == pytest.approx(math.log(12) / 2)

    def test_unigram_loss_recorded(self, data):
        assert data.meta["unigram_loss"] == pytest.approx(text.unigram_loss(data.train, data.val, data.vocab_size))
        assert 3.0 < data.meta["unigram_loss"] < math.log(data.vocab_size)


class TestCorruption:
    @pytest.fixture
    def cached_copy(self, data, tmp_path, monkeypatch):
        shutil.copytree(data.path, tmp_path / "text" / data.path.name)
        monkeypatch.setenv("PSEC_JAX_DATA_DIR", str(tmp_path))
        return tmp_path / "text" / data.path.name

    def test_flipped_byte_names_the_file(self, cached_copy):
        f = cached_copy / "train.npy"
        raw = bytearray(f.read_bytes())
        raw[-7] ^= 1
        f.write_bytes(bytes(raw))
        with pytest.raises(
            text.TextDataError, match=r"train\.npy is corrupt \(sha256 mismatch\); delete .* to rebuild"
        ):
            text.get(**ARGS)

    def test_missing_file_and_edited_meta(self, cached_copy):
        meta = (cached_copy / "meta.json").read_text()
        (cached_copy / "meta.json").write_text(meta.replace('"seed": 3', '"seed": 4'))
        with pytest.raises(text.TextDataError, match=r"meta\.json is corrupt"):
            text.load(cached_copy)
        (cached_copy / "meta.json").write_text(meta)
        (cached_copy / "tokenizer.json").unlink()
        with pytest.raises(text.TextDataError, match=r"tokenizer\.json is missing"):
            text.load(cached_copy)

    @pytest.mark.parametrize(
        "edit, match",
        [
            (lambda m: {k: v for k, v in m.items() if k != "sha256"}, "lacks sha256"),
            (lambda m: {k: v for k, v in m.items() if k not in ("pad_id", "eot_id")}, "lacks eot_id, pad_id"),
            (lambda m: [m], "lacks sha256, vocab_size"),
        ],
    )
    def test_meta_without_expected_keys_names_the_file(self, cached_copy, edit, match):
        meta = cached_copy / "meta.json"  # rewritten with a matching checksum: well-formed but incomplete
        meta.write_text(json.dumps(edit(json.loads(meta.read_text()))))
        (cached_copy / "meta.json.sha256").write_text(f"{text._sha256_file(meta)}  meta.json\n")
        with pytest.raises(text.TextDataError, match=rf"meta\.json {match}.*; delete .* to rebuild"):
            text.load(cached_copy)


def _parse_answer(prompt):
    """The right answer of a prompt, computed independently of tasks.py."""
    if prompt.startswith("copy "):
        return " " + prompt[5:-2] + "\n"
    if prompt.startswith("sort "):
        return "".join(sorted(prompt[5:-1])) + "\n"
    a, b, c, m = (int(x) for x in re.fullmatch(r"\((\d+)[*+](\d+)(?:\+(\d+))?\)%(\d+)=", prompt).groups(default="0"))
    return f"{(a * b + c if '*' in prompt else a + b) % m}\n"


def _label_of(prompt):
    """The label of a prompt from its format alone (KeyError if no variant has its size)."""
    if prompt.startswith("copy "):
        return {5: 0, 14: 1}[len(prompt.split())]  # 3 or 12 letters
    if prompt.startswith("sort "):
        return {3: 2, 10: 3}[len(prompt) - len("sort =")]
    return {"%10=": 4, "%97=": 5}[prompt[-4:]]


def _val_side(prompt):
    """Whether a modular/easy or sort/easy prompt is in the val side of the split (tasks.py docstring)."""
    digits = [int(d) for d in re.findall(r"\d", prompt.split("%")[0])]
    return (digits[0] + 2 * digits[1]) % 5 == 0 if prompt.startswith("(") else sum(digits) % 5 == 0


def _prompts(data, split):
    """The prompt of every example packed in a split's task rows, recovered from the token text."""
    rows = (
        data.tokenizer.decode([int(i) for i in row if i != data.pad_id])
        for row in getattr(data, f"tasks_{split}_tokens")
    )
    return [line[: line.index("=") + 1] for row in rows for line in row.split("\n")[:-1]]


class TestTasks:
    @pytest.mark.parametrize("split", ["train", "val"])
    def test_answers_are_right_and_variants_sized(self, split):
        examples = tasks.generate(np.random.default_rng(0), 3000, split)
        assert {e.label for e in examples} == set(range(6))
        for e in examples:
            assert e.answer == _parse_answer(e.prompt) and _label_of(e.prompt) == e.label, e
            if e.label in (2, 4):  # sort/easy and modular/easy: the split's side of the problem space
                assert _val_side(e.prompt) == (split == "val"), e
        assert tasks.label_names() == [
            "copy/easy",
            "copy/hard",
            "sort/easy",
            "sort/hard",
            "modular/easy",
            "modular/hard",
        ]

    def test_labels_mark_exactly_the_answer_tokens_and_examples_are_whole(self, data):
        examples = tasks.generate(np.random.default_rng(1), 300)
        tokens, labels = tasks.pack(data.tokenizer, examples, 65, data.pad_id)
        assert tokens.dtype == np.uint16 and labels.dtype == np.int8 and tokens.shape == labels.shape
        decode = lambda ids: data.tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)
        it, firsts, free = iter(examples), [], []
        for row, lab in zip(tokens, labels):
            content = row != data.pad_id
            n = int(content.sum())
            assert content[:n].all() and (lab[n:] == -1).all()  # padding only at the end
            # a row is a run of whole examples: its text is their concatenation, answers labelled
            spans = np.flatnonzero(np.diff(np.r_[-1, lab[:n], -1] >= 0))  # starts/ends of labelled runs
            row_examples = [next(it) for _ in range(len(spans) // 2)]
            firsts.append(row_examples[0])
            free.append(65 - n)
            assert decode(row[:n]) == "".join(e.prompt + e.answer for e in row_examples)
            for (s, t), e in zip(spans.reshape(-1, 2), row_examples):
                # the answer without its newline terminator, which follows unlabelled
                assert decode(row[s:t]) == e.answer[:-1] and (lab[s:t] == e.label).all()
                assert decode(row[t : t + 1]) == "\n" and lab[t] == -1
        assert next(it, None) is None
        # greedy: a row ends only when the next example does not fit in it
        size = lambda e: len(data.tokenizer.encode(e.prompt).ids) + len(data.tokenizer.encode(e.answer).ids)
        assert all(size(e) > room for e, room in zip(firsts[1:], free[:-1]))

    def test_too_long_example_rejected(self, data):
        with pytest.raises(ValueError, match="more than row_len=8"):
            tasks.pack(data.tokenizer, [tasks.Example("copy a b c d e =", " a b c d e\n", 1)], 8, data.pad_id)

    def test_val_prompts_exclude_train_prompts_and_small_spaces_split(self):
        train = tasks.generate(np.random.default_rng(0), 3000, "train")
        seen = {e.prompt for e in train}
        val = tasks.generate(np.random.default_rng(1), 1200, "val", seen)
        assert not seen & {e.prompt for e in val}
        assert np.bincount([e.label for e in val], minlength=6).min() > 150  # the label mix stays uniform
        # the small spaces: a fifth held out by construction (sides checked in the test above)
        many = tasks.generate(np.random.default_rng(2), 12_000, "val")
        assert [len({e.prompt for e in many if e.label == label}) for label in (2, 4)] == [200, 20]
        assert len({e.prompt for e in train if e.label == 4}) == 80
        with pytest.raises(ValueError, match="split must be one of"):
            tasks.generate(np.random.default_rng(0), 1, "test")

    def test_exhausted_variant_raises(self):
        every_val_modular_easy = {f"({a}+{b})%10=" for a in range(10) for b in range(10) if (a + 2 * b) % 5 == 0}
        with pytest.raises(ValueError, match="modular/easy: 1000 draws in a row were all excluded"):
            tasks.generate(np.random.default_rng(0), 200, "val", every_val_modular_easy)

    def test_built_val_prompts_are_unseen_per_label(self, data):
        train, val = (_prompts(data, split) for split in ("train", "val"))
        assert len(train) == ARGS["num_task_examples"] and len(val) == ARGS["num_val_task_examples"]
        stats = data.meta["tasks"]["labels"]
        assert list(stats) == tasks.label_names()
        seen = set(train)
        for label, name in enumerate(tasks.label_names()):
            mine = [p for p in val if _label_of(p) == label]
            assert mine and not seen & set(mine), name  # every label validated, never on a train prompt
            assert stats[name]["val_examples"] == len(mine) and stats[name]["val_in_train"] == 0
            assert stats[name]["train_examples"] == sum(_label_of(p) == label for p in train)
            assert stats[name]["val_answer_tokens"] == (data.tasks_val_labels == label).sum() > 0
        assert sum(s["val_answer_tokens"] for s in stats.values()) == data.meta["tasks"]["val"]["answer_tokens"]

    def test_build_writes_task_rows(self, data):
        assert data.tasks_train_tokens.shape[1] == data.tasks_val_tokens.shape[1] == ARGS["seq_len"] + 1
        assert not np.array_equal(data.tasks_train_tokens[:5], data.tasks_val_tokens[:5])  # two seeds
        assert data.meta["tasks"]["train"]["rows"] == data.tasks_train_tokens.shape[0]


class TestPipeline:
    def test_batch_is_a_pure_function_of_seed_and_step(self, data):
        a, b = pipeline.Batches(data, 8, 64, 3, seed=5), pipeline.Batches(data, 8, 64, 3, seed=5)
        later = b.batch(9)
        for x, y in zip(a.batch(9), later):
            np.testing.assert_array_equal(x, y)
        chunk = a.chunk(7, 4)
        for field, stacked in zip(chunk, zip(*(b.batch(s) for s in range(7, 11)))):
            np.testing.assert_array_equal(field, np.stack(stacked))
        assert not np.array_equal(a.batch(1).inputs, a.batch(2).inputs)
        assert not np.array_equal(a.batch(1).inputs, pipeline.Batches(data, 8, 64, 3, seed=6).batch(1).inputs)

    def test_rows_are_shifted_windows_with_pad_weights(self, data):
        batches = pipeline.Batches(data, 8, 64, 3, seed=0)
        c = batches.chunk(0, 20)
        assert [x.shape for x in c] == [(20, 8, 64)] * 4
        assert [x.dtype for x in c] == [np.int32, np.int32, np.float32, np.int8]
        np.testing.assert_array_equal(c.inputs[..., 1:], c.targets[..., :-1])
        np.testing.assert_array_equal(c.weights, (c.targets != data.pad_id).astype(np.float32))
        assert (c.weights == 0).any() and (c.weights[:, 3:] == 1).all()  # corpus rows have no padding
        assert (c.labels[:, 3:] == -1).all() and (c.labels[:, :3] >= 0).any()
        rows, offsets = batches.draws(4)
        for i, o in enumerate(offsets):
            np.testing.assert_array_equal(c.inputs[4, 3 + i], data.train[o : o + 64])
            np.testing.assert_array_equal(c.targets[4, 3 + i], data.train[o + 1 : o + 65])
        for i, r in enumerate(rows):
            np.testing.assert_array_equal(c.targets[4, i], data.tasks_train_tokens[r, 1:])
            np.testing.assert_array_equal(c.labels[4, i], data.tasks_train_labels[r, 1:])

    def test_validation_set_and_its_text_rows(self, data):
        v = pipeline.validation(data, 4, 64, num_corpus_rows=5, num_task_rows=7)
        assert [x.shape for x in v] == [(3, 4, 64)] * 4
        mask = pipeline.validation_text_rows(5, 7, 4)  # where the corpus windows are
        assert mask.shape == (3, 4) and mask.dtype == bool and mask.sum() == 5
        stride = data.val.size // 5
        for k, row in enumerate(v.inputs[mask]):
            np.testing.assert_array_equal(row, data.val[k * stride : k * stride + 64])
        assert (v.labels[mask] == -1).all()
        np.testing.assert_array_equal(v.inputs[~mask], data.tasks_val_tokens[:7, :-1])
        np.testing.assert_array_equal(v.labels[~mask], data.tasks_val_labels[:7, 1:])
        np.testing.assert_array_equal(v.weights, (v.targets != data.pad_id).astype(np.float32))
        with pytest.raises(ValueError, match="multiple of batch_size_rows=4"):
            pipeline.validation_text_rows(5, 6, 4)

    def test_max_rows_covers_the_whole_val_split(self, data):
        corpus, task = pipeline.max_rows(data, 64)
        assert corpus == data.val.size // 65 > 0 and task == data.tasks_val_tokens.shape[0] > 0
        v = pipeline.validation(data, 1, 64, corpus, task)
        np.testing.assert_array_equal(v.labels[corpus:, 0], data.tasks_val_labels[:, 1:])
        for more in ((corpus + 1, 0), (0, task + 1)):
            with pytest.raises(ValueError):
                pipeline.validation(data, 1, 64, *more)
        assert pipeline.max_rows(data, 32) == (data.val.size // 33, 0)  # the task rows are packed for 64

    @pytest.mark.parametrize(
        "kwargs, match",
        [
            (dict(batch_size=0), "batch_size must be >= 1"),
            (dict(task_rows=9), r"task_rows must be in \[0, batch_size=8\]"),
            (dict(task_rows=-1), "task_rows must be in"),
            (dict(seq_len=32), "must equal the seq_len the task rows were packed for"),
            (dict(seed=-1), "seed must be >= 0"),
        ],
    )
    def test_batches_argument_errors(self, data, kwargs, match):
        with pytest.raises(ValueError, match=match):
            pipeline.Batches(data, **{**dict(batch_size=8, seq_len=64, task_rows=2, seed=0), **kwargs})

    def test_corpus_only_batches_allow_any_seq_len(self, data):
        assert pipeline.Batches(data, 4, 32, 0, seed=0).batch(0).inputs.shape == (4, 32)

    def test_validation_errors(self, data):
        n = data.val.size
        with pytest.raises(ValueError, match="too long for the val split"):
            pipeline.validation(data, 1, n, num_corpus_rows=1, num_task_rows=0)
        with pytest.raises(ValueError, match="num_task_rows=100000 but the val task arrays have only"):
            pipeline.validation(data, 1, 64, num_corpus_rows=0, num_task_rows=100_000)
        with pytest.raises(ValueError, match="multiple of batch_size_rows=4"):
            pipeline.validation(data, 4, 64, num_corpus_rows=3, num_task_rows=2)
