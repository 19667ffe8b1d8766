"""Tests of the language-model data: stdlib corpus and tokenizer (text.py), the task mixture
(tasks.py) and the host batch pipeline (pipeline.py). One small build (first ~300 kB of each split,
vocabulary 384) is shared by the module."""

import itertools
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


def _solve(prompt):
    """The answer and per-character labels of a prompt, computed independently of tasks.py (the sum
    column by column with a running carry, the lookup by parsing the pairs)."""
    if m := re.fullmatch(r"sort (\d+)=", prompt):
        return "".join(sorted(m[1])) + "\n", ({3: 0, 10: 1}[len(m[1])],) * len(m[1])
    if m := re.fullmatch(r"(\d{4})\+(\d{4})=", prompt):
        digits, labels, carry = [], [], 0
        for i, (x, y) in enumerate(zip(m[1][::-1], m[2][::-1])):  # units first
            labels.append(-1 if i == 0 else 2 + carry)  # the units column never receives a carry
            carry, digit = divmod(int(x) + int(y) + carry, 10)
            digits.append(digit)
        digits.append(carry)
        labels.append(2 + carry)  # the leading digit is the carry out of the thousands
        return "".join(map(str, digits[::-1])) + "\n", tuple(labels[::-1])
    m = re.fullmatch(r"find ((?:[a-z]=\d )+)([a-z])\?", prompt)
    pairs = dict(p.split("=") for p in m[1].split())
    assert len(pairs) == len(m[1].split()), prompt  # keys are distinct
    return pairs[m[2]] + "\n", ({2: 4, 9: 5}[len(pairs)],)


def _problem(prompt):
    """A prompt's problem whatever the order of its operands or pairs (the split's unit)."""
    if m := re.fullmatch(r"(\d{4})\+(\d{4})=", prompt):
        return frozenset((m[1], m[2]))
    if prompt.startswith("find "):
        return frozenset(prompt[5:-2].split()), prompt[-2]
    return prompt


def _prompts(data, split):
    """The prompt of every example packed in a split's task rows, recovered from the token text."""
    rows = (
        data.tokenizer.decode([int(i) for i in row if i != data.pad_id])
        for row in getattr(data, f"tasks_{split}_tokens")
    )
    lines = [line for row in rows for line in row.split("\n")[:-1]]
    return [line[: line.index("?" if line.startswith("find ") else "=") + 1] for line in lines]


def _has(examples, label):
    return [e for e in examples if label in e.labels]


N, C = 2, 3  # addition/no_carry, addition/carry


class TestTasks:
    @pytest.mark.parametrize(
        "a, b, answer, labels",
        [
            # units 9+1 = 10 carries into the tens, tens 9+0+1 = 10 into the hundreds, hundreds 1+0+1 = 2
            # does not: the thousands and the leading digit get none; the units digit is unscored
            (199, 1, "00200", (N, N, C, C, -1)),
            # a chain: hundreds 8+1 = 9 carries only because the tens pass one on (8+1+1 = 10)
            (899, 101, "01000", (N, C, C, C, -1)),
            (5000, 5000, "10000", (C, N, N, N, -1)),  # only the thousands carry out, into the leading digit
            (9999, 1, "10000", (C, C, C, C, -1)),
            (1234, 4321, "05555", (N, N, N, N, -1)),
            (0, 0, "00000", (N, N, N, N, -1)),
        ],
    )
    def test_addition_by_hand(self, a, b, answer, labels):
        e = tasks.addition_example(a, b)
        assert e == (f"{a:04d}+{b:04d}=", answer + "\n", labels)
        assert (e.answer, e.labels) == _solve(e.prompt)

    def test_lookup_and_sort_by_hand(self):
        assert tasks.lookup_example([("a", 3), ("k", 7)], "k") == ("find a=3 k=7 k?", "7\n", (4,))
        nine = list(zip("qwertyuio", [1, 2, 3, 4, 5, 6, 7, 8, 9]))
        assert tasks.lookup_example(nine, "t") == ("find q=1 w=2 e=3 r=4 t=5 y=6 u=7 i=8 o=9 t?", "5\n", (5,))
        assert tasks.sort_example([3, 1, 2]) == ("sort 312=", "123\n", (0, 0, 0))
        assert tasks.sort_example([0, 9] * 5).labels == (1,) * 10
        for bad in ([("a", 1), ("a", 2)], [("a", 1)], [("a", 10), ("b", 1)], [("A", 1), ("b", 1)]):
            with pytest.raises(ValueError, match="lookup"):
                tasks.lookup_example(bad, "a")
        with pytest.raises(ValueError, match="one of them as query"):
            tasks.lookup_example([("a", 1), ("b", 2)], "c")
        with pytest.raises(ValueError, match=r"operands must be in \[0, 10000\)"):
            tasks.addition_example(10_000, 0)
        with pytest.raises(ValueError, match="3 or 10 digits"):
            tasks.sort_example([1, 2])

    @pytest.mark.parametrize("split", ["train", "val"])
    def test_generated_answers_and_labels_are_right(self, split):
        examples = tasks.generate(np.random.default_rng(0), 3000, split)
        assert {label for e in examples for label in e.labels} == set(range(6)) | {-1}
        for e in examples:
            assert (e.answer, e.labels) == _solve(e.prompt), e
            if e.labels[0] == 0:  # sort/easy: the split's side of its problem space
                assert (sum(map(int, e.prompt[5:-1])) % 5 == 0) == (split == "val"), e
        assert tasks.label_names() == [
            "sort/easy",
            "sort/hard",
            "addition/no_carry",
            "addition/carry",
            "lookup/1",
            "lookup/8",
        ]
        assert tasks.MAX_EXAMPLE_BYTES == max(len(e.prompt + e.answer) for e in examples) == 45  # lookup/8

    def test_both_addition_labels_at_every_scored_position(self):
        examples = tasks.generate(np.random.default_rng(0), 6000)
        labels = np.array([e.labels for e in examples if e.prompt[4] == "+"])  # [n, 5], MSB first
        assert labels.shape[1] == 5 and (labels[:, 4] == -1).all()
        # P(carry into a column): tens 45/100, then 0.45 + 0.1 * (the share below) ~ 0.5
        np.testing.assert_allclose((labels[:, :4] == C).mean(0), [0.5, 0.5, 0.495, 0.45], atol=0.05)
        assert 0.8 < np.mean([N in row and C in row for row in labels.tolist()]) < 0.9  # most hold both labels

    def test_pack_puts_labels_on_answer_digits_only(self, data):
        # one row, by hand: a prompt of 10 one-character tokens, 5 answer digits (the units one
        # unscored), the newline; then a lookup whose one answer token follows "?"; then a sort
        examples = [
            tasks.addition_example(199, 1),
            tasks.lookup_example([("a", 3), ("k", 7)], "k"),
            tasks.sort_example([3, 1, 2]),
        ]
        tokens, labels = tasks.pack(data.tokenizer, examples, 65, data.pad_id)
        assert tokens.shape == labels.shape == (1, 65)
        encode = lambda s: data.tokenizer.encode(s, add_special_tokens=False).ids
        lookup, sort = (len(encode(e.prompt)) for e in examples[1:])
        assert len(encode(examples[0].prompt)) == 10 and encode("\n") == [data.tokenizer.token_to_id("Ċ")]
        expected = [-1] * 10 + [N, N, C, C, -1] + [-1] + [-1] * lookup + [4, -1] + [-1] * sort + [0, 0, 0, -1]
        assert labels[0].tolist() == expected + [-1] * (65 - len(expected))
        assert (tokens[0, len(expected) :] == data.pad_id).all() and data.pad_id not in tokens[0, : len(expected)]
        at = [i for i, label in enumerate(expected) if label >= 0]
        assert data.tokenizer.decode(tokens[0, at].tolist()) == "0020" + "7" + "123"
        assert data.tokenizer.id_to_token(int(tokens[0, at[4] - 1])) == "?"  # lookup answers always follow "?"

    def test_packed_rows_are_whole_examples_greedily(self, data):
        examples = tasks.generate(np.random.default_rng(1), 300)
        tokens, labels = tasks.pack(data.tokenizer, examples, 65, data.pad_id)
        assert tokens.dtype == np.uint16 and labels.dtype == np.int8 and tokens.shape == labels.shape
        encode = lambda s: data.tokenizer.encode(s, add_special_tokens=False).ids
        it = iter(examples)
        e = next(it)
        for row, lab in zip(tokens, labels):
            n = int((row != data.pad_id).sum())
            assert (row[n:] == data.pad_id).all() and (lab[n:] == -1).all()  # padding only at the end
            at = 0
            while e is not None and at + len(encode(e.prompt + e.answer)) <= 65:  # greedy: fill while it fits
                prompt, answer, end = encode(e.prompt), encode(e.answer[:-1]), encode("\n")
                ids = prompt + answer + end
                assert len(answer) == len(e.labels)  # every answer character (a digit) is one token
                assert row[at : at + len(ids)].tolist() == ids
                assert lab[at : at + len(ids)].tolist() == [-1] * len(prompt) + list(e.labels) + [-1] * len(end)
                at += len(ids)
                e = next(it, None)
            assert at == n > 0
        assert e is None

    def test_pack_rejects_bad_examples(self, data):
        with pytest.raises(ValueError, match="more than row_len=8"):
            tasks.pack(data.tokenizer, [tasks.addition_example(1, 2)], 8, data.pad_id)
        with pytest.raises(ValueError, match="has 2 labels, not one per character"):
            tasks.pack(data.tokenizer, [tasks.Example("x=", "123\n", (0, 0))], 65, data.pad_id)
        with pytest.raises(ValueError, match="does not end with"):
            tasks.pack(data.tokenizer, [tasks.Example("x=", "1", (0,))], 65, data.pad_id)
        # a token of two letters cannot carry two labels
        pair = next(t for t in data.tokenizer.get_vocab() if len(t) == 2 and t.isalpha() and t.islower())
        with pytest.raises(ValueError, match=rf"token '{pair}' covers characters of labels \[0, 1\]"):
            tasks.pack(data.tokenizer, [tasks.Example("x=", pair + "\n", (0, 1))], 65, data.pad_id)

    def test_val_problems_are_never_train_problems(self):
        train = tasks.generate(np.random.default_rng(0), 3000, "train")
        seen = {e.prompt for e in train}
        val = tasks.generate(np.random.default_rng(1), 1200, "val", seen)
        assert not seen & {e.prompt for e in val}
        assert min(len(_has(val, label)) for label in range(6)) > 150  # the label mix stays uniform
        # by construction (all but sort/hard), without `exclude`, whatever the order of operands or pairs:
        # lookup/1 has 65,000 problems, so ~2000 draws per side would meet ~60 times if the split ignored it
        sides = {s: tasks.generate(np.random.default_rng(seed), 12_000, s) for seed, s in enumerate(tasks.SPLITS)}
        problems = {s: {_problem(e.prompt) for e in sides[s] if e.labels[0] != 1} for s in tasks.SPLITS}
        assert not problems["train"] & problems["val"]
        assert len(_has(sides["val"], 4)) > 1500
        assert len({e.prompt for e in _has(sides["val"], 0)}) == 200  # sort/easy: a fifth of 1000 triples
        rng = np.random.default_rng(3)
        operands = rng.integers(0, 10_000, (2000, 2)).tolist()
        assert all(tasks.addition_split(a, b) == tasks.addition_split(b, a) for a, b in operands)
        assert 0.15 < np.mean([tasks.addition_split(a, b) == "val" for a, b in operands]) < 0.25
        pairs = [("c", 1), ("x", 2), ("m", 2)]
        assert len({tasks.lookup_split(p, "x") for p in itertools.permutations(pairs)}) == 1
        with pytest.raises(ValueError, match="split must be one of"):
            tasks.generate(np.random.default_rng(0), 1, "test")

    def test_exhausted_variant_raises(self):
        every_val_sort_easy = {f"sort {a}{b}{c}=" for a, b, c in itertools.product(range(10), repeat=3)}
        with pytest.raises(ValueError, match="sort/easy: 1000 draws in a row were all excluded"):
            tasks.generate(np.random.default_rng(0), 200, "val", every_val_sort_easy)

    def test_built_val_prompts_are_unseen_per_label(self, data):
        train, val = (_prompts(data, split) for split in ("train", "val"))
        assert len(train) == ARGS["num_task_examples"] and len(val) == ARGS["num_val_task_examples"]
        stats = data.meta["tasks"]["labels"]
        assert list(stats) == tasks.label_names()
        seen = set(train)
        holds = lambda prompts, label: [p for p in prompts if label in _solve(p)[1]]
        for label, name in enumerate(tasks.label_names()):
            mine = holds(val, label)
            assert mine and not seen & set(mine), name  # every label validated, never on a train prompt
            assert stats[name]["val_examples"] == len(mine) and stats[name]["val_in_train"] == 0
            assert stats[name]["train_examples"] == len(holds(train, label))
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
            (dict(seed=-1), "seed and member must be >= 0"),
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
