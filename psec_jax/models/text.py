"""Offline text data for a small language model: the interpreter's own standard library.

Nothing is downloaded. The corpus is every `*.py` file under `sysconfig.get_paths()["stdlib"]`,
without site-/dist-packages and without test suites (any path part `test`, `tests`, `idle_test`); a
file is identified by its path relative to that root. The split is by file and depends on the path
alone: a file is validation iff `int(sha256(path).hexdigest(), 16) % 20 == 0` (~5%).

A byte-level BPE (HF `tokenizers`, every digit its own token) is trained on the train files only.
Token 0 is `<|endoftext|>`, which joins files; token 1 is `<|pad|>`, which fills task rows. Special
tokens written literally in a text are encoded as plain text, never as these ids.

`get(**args)` returns the data for a set of build arguments, building it into the cache when absent:

    cache_dir()/text/stdlib-v{vocab}-{hash of args, corpus checksum, tokenizers version}/
        tokenizer.json
        train.npy, val.npy                 [N] uint16, the split's files joined by <|endoftext|>
        tasks_{train,val}_tokens.npy       [R, seq_len + 1] uint16, packed task rows (tasks.py)
        tasks_{train,val}_labels.npy       [R, seq_len + 1] int8, answer-token labels, -1 elsewhere
        meta.json                          sizes, checksums, build arguments, unigram baseline,
                                           per-label task counts ("tasks": "labels")
        meta.json.sha256                   sha256 of meta.json (`sha256sum -c` format)

A build is written to a temporary sibling and renamed into place, so a killed build leaves nothing
half-written under the final name. Every file's sha256 is checked on load.

Validation task examples never repeat a train prompt (see tasks.py); meta.json records, per label,
the val examples and `val_in_train`, the number of them whose prompt is a train prompt (always 0).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sys
import sysconfig
import tokenize
import uuid
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import tokenizers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from psec_jax.artifacts import sha256 as _sha256_file
from psec_jax.models import tasks

FORMAT = "psec_jax.text/2"  # bump when the layout or the task format changes: it is part of the cache key
EOT, PAD = "<|endoftext|>", "<|pad|>"
EOT_ID, PAD_ID = 0, 1
MIN_VOCAB = 256 + 2  # the byte alphabet and the two special tokens
MAX_VOCAB = 1 << 16  # token arrays are uint16
_EXCLUDED_PARTS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test"})
_ARRAYS = ("train", "val", "tasks_train_tokens", "tasks_train_labels", "tasks_val_tokens", "tasks_val_labels")
_META, _TOKENIZER = "meta.json", "tokenizer.json"
_META_KEYS = ("sha256", "vocab_size", "eot_id", "pad_id")  # what `load` reads


class TextDataError(ValueError):
    """A missing or corrupt file of a built text-data directory (the message names the file)."""


class TextData(NamedTuple):
    """A verified text-data directory; token arrays are read-only memory maps (never loaded whole)."""

    train: np.ndarray  # [N_train] uint16 token ids of the train files, joined by eot_id
    val: np.ndarray  # [N_val] uint16 token ids of the validation files, joined by eot_id
    tasks_train_tokens: np.ndarray  # [R_train, seq_len + 1] uint16 packed task rows
    tasks_train_labels: np.ndarray  # [R_train, seq_len + 1] int8 label of each token, -1 off answers
    tasks_val_tokens: np.ndarray  # [R_val, seq_len + 1] uint16
    tasks_val_labels: np.ndarray  # [R_val, seq_len + 1] int8
    tokenizer: Tokenizer
    meta: dict[str, Any]  # contents of meta.json
    vocab_size: int  # tokenizer vocabulary size (ids are in [0, vocab_size))
    pad_id: int
    eot_id: int
    path: Path  # the directory it was loaded from


def cache_dir() -> Path:
    """$PSEC_JAX_DATA_DIR, else ~/.cache/psec_jax/datasets.

    The rule of `psec_jax.data.datasets.cache_dir`, duplicated because importing `psec_jax.data`
    imports MuJoCo."""
    return Path(os.environ.get("PSEC_JAX_DATA_DIR", Path.home() / ".cache" / "psec_jax" / "datasets"))


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- corpus ------------------------------------------------------------------------------------


def stdlib_root() -> Path:
    """The directory of this interpreter's standard library."""
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(root: str | os.PathLike | None = None) -> list[Path]:
    """Every `*.py` file under `root` (default: the stdlib) outside site-/dist-packages and test
    suites, sorted by path relative to `root`."""
    root = Path(root) if root is not None else stdlib_root()
    files = []
    for folder, subfolders, names in os.walk(root):  # pruned: site-packages alone can be ~1 GB
        subfolders[:] = [d for d in subfolders if d not in _EXCLUDED_PARTS]
        files += [Path(folder) / n for n in names if n.endswith(".py") and (Path(folder) / n).is_file()]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def is_validation(relative_path: str) -> bool:
    """The split rule: validation iff sha256 of the relative posix path is 0 mod 20 (~5%)."""
    return int(_sha256_bytes(relative_path.encode()), 16) % 20 == 0


def _decode(raw: bytes) -> str:
    return raw.decode(tokenize.detect_encoding(io.BytesIO(raw).readline)[0])  # honours coding cookies


class _Split(NamedTuple):
    paths: list[str]  # relative posix paths, sorted
    texts: list[str]  # decoded sources
    num_bytes: int  # raw bytes on disk
    checksum: str  # sha256 over the sorted "path sha256" lines


def _select(max_corpus_bytes: int | None) -> dict[str, list[tuple[str, Path, int]]]:
    """(relative path, path, bytes) of the files each split keeps: its first files in sorted order
    totalling at most `max_corpus_bytes`, chosen from the file sizes alone (nothing is read)."""
    root = stdlib_root()
    chosen: dict[str, list[tuple[str, Path, int]]] = {"train": [], "val": []}
    totals = {"train": 0, "val": 0}
    full = set()
    for path in stdlib_files(root):
        rel = path.relative_to(root).as_posix()
        split = "val" if is_validation(rel) else "train"
        size = path.stat().st_size
        if split in full or max_corpus_bytes is not None and totals[split] + size > max_corpus_bytes:
            full.add(split)  # a prefix of the sorted files, so a larger cap only adds files
            continue
        chosen[split].append((rel, path, size))
        totals[split] += size
    return chosen


def corpus_sizes(max_corpus_bytes: int | None) -> dict[str, tuple[int, int]]:
    """{split: (files, bytes)} that the build would take for `max_corpus_bytes`, from the file sizes
    alone. A split's token count is at most its bytes plus one `<|endoftext|>` between files (byte-level
    BPE: a token is at least one byte)."""
    return {split: (len(files), sum(size for *_, size in files)) for split, files in _select(max_corpus_bytes).items()}


def min_corpus_bytes() -> int:
    """The least `max_corpus_bytes` that leaves the tokenizer a file in both splits: the larger of the
    two splits' first files (from the file sizes alone)."""
    root, first = stdlib_root(), {}
    for path in stdlib_files(root):
        first.setdefault("val" if is_validation(path.relative_to(root).as_posix()) else "train", path.stat().st_size)
    return max(first.values(), default=0)


def _corpus(max_corpus_bytes: int | None) -> dict[str, _Split]:
    """Train and val splits, each cut to its first files totalling at most `max_corpus_bytes`."""
    chosen = {
        split: [(rel, path.read_bytes()) for rel, path, _ in files]
        for split, files in _select(max_corpus_bytes).items()
    }
    out = {}
    for split, files in chosen.items():
        if not files:
            raise ValueError(
                f"the {split} split has no files (max_corpus_bytes={max_corpus_bytes}, stdlib at {stdlib_root()})"
            )
        lines = "".join(f"{rel} {_sha256_bytes(raw)}\n" for rel, raw in files)
        out[split] = _Split(
            [rel for rel, _ in files],
            [_decode(raw) for _, raw in files],
            sum(len(raw) for _, raw in files),
            _sha256_bytes(lines.encode()),
        )
    return out


# --- tokenizer and baseline --------------------------------------------------------------------


def train_tokenizer(texts: list[str], vocab_size: int) -> Tokenizer:
    """Byte-level BPE of `vocab_size` tokens (fewer if the texts run out of merges), digits split
    one per token, `<|endoftext|>` = 0 and `<|pad|>` = 1."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT, PAD],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(texts, trainer, length=len(texts))
    tokenizer.encode_special_tokens = True  # a literal "<|pad|>" in a source file is text, not PAD_ID
    assert tokenizer.token_to_id(EOT) == EOT_ID and tokenizer.token_to_id(PAD) == PAD_ID
    return tokenizer


def encode_files(tokenizer: Tokenizer, texts: list[str]) -> np.ndarray:
    """[N] uint16 token ids of the texts joined by `<|endoftext|>`."""
    parts = []
    for i, encoding in enumerate(tokenizer.encode_batch_fast(texts, add_special_tokens=False)):
        if i:
            parts.append(np.array([EOT_ID], np.uint16))
        parts.append(np.asarray(encoding.ids, np.uint16))
    return np.concatenate(parts)


def unigram_loss(train_tokens: np.ndarray, val_tokens: np.ndarray, vocab_size: int) -> float:
    """Cross-entropy (nats/token) of `val_tokens` [N_val] under the unigram distribution of
    `train_tokens` [N_train] with add-one smoothing over `vocab_size` ids: the loss a model that
    ignores context would reach."""
    counts = np.bincount(np.asarray(train_tokens), minlength=vocab_size).astype(np.float64) + 1.0
    log_p = np.log(counts) - np.log(counts.sum())
    return float(-log_p[np.asarray(val_tokens)].mean())


# --- build, cache, load ------------------------------------------------------------------------


def _check_args(
    vocab_size: int,
    max_corpus_bytes: int | None,
    seq_len: int,
    num_task_examples: int,
    num_val_task_examples: int,
    seed: int,
) -> dict[str, Any]:
    if not MIN_VOCAB <= vocab_size <= MAX_VOCAB:
        raise ValueError(f"vocab_size must be in [{MIN_VOCAB}, {MAX_VOCAB}] (uint16 token arrays), got {vocab_size}")
    if max_corpus_bytes is not None and max_corpus_bytes < 1:
        raise ValueError(f"max_corpus_bytes must be >= 1 or None, got {max_corpus_bytes}")
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    for name, value in (("num_task_examples", num_task_examples), ("num_val_task_examples", num_val_task_examples)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return {
        "vocab_size": vocab_size,
        "max_corpus_bytes": max_corpus_bytes,
        "seq_len": seq_len,
        "num_task_examples": num_task_examples,
        "num_val_task_examples": num_val_task_examples,
        "seed": seed,
    }


def _key(args: dict[str, Any], corpus: dict[str, _Split]) -> str:
    identity = {
        "format": FORMAT,
        "args": args,
        "tokenizers": tokenizers.__version__,
        "corpus": {split: s.checksum for split, s in corpus.items()},
    }
    return _sha256_bytes(json.dumps(identity, sort_keys=True).encode())[:12]


def cache_path(
    *,
    vocab_size: int,
    max_corpus_bytes: int | None = None,
    seq_len: int,
    num_task_examples: int,
    num_val_task_examples: int,
    seed: int,
) -> Path:
    """`cache_dir()/text/stdlib-v{vocab_size}-{hash}`, the hash over the arguments, the corpus
    checksum and the tokenizers version (reads the corpus files to checksum them)."""
    args = _check_args(vocab_size, max_corpus_bytes, seq_len, num_task_examples, num_val_task_examples, seed)
    return cache_dir() / "text" / f"stdlib-v{vocab_size}-{_key(args, _corpus(max_corpus_bytes))}"


def build(
    directory: str | os.PathLike,
    *,
    vocab_size: int,
    max_corpus_bytes: int | None = None,
    seq_len: int,
    num_task_examples: int,
    num_val_task_examples: int,
    seed: int,
) -> Path:
    """Build the text data into `directory` (which must not exist) and return it.

    Args:
      vocab_size: BPE vocabulary size including the two special tokens, in [258, 65536].
      max_corpus_bytes: keep, per split, the first files in sorted order totalling at most this
        many bytes (for fast tests); None keeps every file.
      seq_len: model context T; task rows are packed to T + 1 tokens.
      num_task_examples, num_val_task_examples: task examples packed for train and validation.
      seed: root of the task generators (train and val draw from two children of it); val
        examples are drawn from the val side of the task split, excluding every train prompt.
    """
    args = _check_args(vocab_size, max_corpus_bytes, seq_len, num_task_examples, num_val_task_examples, seed)
    directory = Path(directory)
    if directory.exists():
        raise FileExistsError(f"{directory} already exists; delete it to rebuild")
    corpus = _corpus(max_corpus_bytes)
    tokenizer = train_tokenizer(corpus["train"].texts, vocab_size)
    arrays = {split: encode_files(tokenizer, corpus[split].texts) for split in ("train", "val")}
    train_rng, val_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    examples = {"train": tasks.generate(train_rng, num_task_examples, "train")}
    examples["val"] = tasks.generate(val_rng, num_val_task_examples, "val", {e.prompt for e in examples["train"]})
    for split in tasks.SPLITS:
        tokens, labels = tasks.pack(tokenizer, examples[split], seq_len + 1, PAD_ID)
        arrays[f"tasks_{split}_tokens"], arrays[f"tasks_{split}_labels"] = tokens, labels

    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.with_name(f".{directory.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        tokenizer.save(str(tmp / _TOKENIZER))
        for name in _ARRAYS:
            np.save(tmp / f"{name}.npy", arrays[name])
        actual_vocab = tokenizer.get_vocab_size()
        meta = {
            "format": FORMAT,
            "args": args,
            "vocab_size": actual_vocab,
            "eot_id": EOT_ID,
            "pad_id": PAD_ID,
            "python": sys.version,
            "stdlib": str(stdlib_root()),
            "tokenizers": tokenizers.__version__,
            "splits": {
                split: {
                    "files": len(s.paths),
                    "bytes": s.num_bytes,
                    "tokens": int(arrays[split].size),
                    "checksum": s.checksum,
                    "paths": s.paths,
                }
                for split, s in corpus.items()
            },
            "tasks": {
                **{
                    s: {
                        "examples": len(examples[s]),
                        "rows": int(arrays[f"tasks_{s}_tokens"].shape[0]),
                        "answer_tokens": int((arrays[f"tasks_{s}_labels"] >= 0).sum()),
                    }
                    for s in tasks.SPLITS
                },
                "labels": tasks.split_stats(examples["train"], examples["val"], arrays["tasks_val_labels"]),
            },
            "label_names": tasks.label_names(),
            "unigram_loss": unigram_loss(arrays["train"], arrays["val"], actual_vocab),
            "sha256": {f.name: _sha256_file(f) for f in sorted(tmp.iterdir())},
        }
        (tmp / _META).write_text(json.dumps(meta, indent=1) + "\n")
        (tmp / f"{_META}.sha256").write_text(f"{_sha256_file(tmp / _META)}  {_META}\n")
        try:
            tmp.rename(directory)
        except OSError as e:  # someone else finished first
            raise FileExistsError(f"{directory} already exists; delete it to rebuild") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


def _verify(directory: Path) -> dict[str, Any]:
    hint = f"delete {directory}/ to rebuild"
    meta_path, side = directory / _META, directory / f"{_META}.sha256"
    for f in (meta_path, side):
        if not f.is_file():
            raise TextDataError(f"{f} is missing; {hint}")
    if side.read_text().split()[:1] != [_sha256_file(meta_path)]:
        raise TextDataError(f"{meta_path} is corrupt (sha256 mismatch); {hint}")
    try:
        meta = json.loads(meta_path.read_text())
    except ValueError as e:
        raise TextDataError(f"{meta_path} is not valid JSON ({e}); {hint}") from None
    lacking = [k for k in _META_KEYS if not isinstance(meta, dict) or k not in meta]
    if lacking or not isinstance(meta["sha256"], dict):
        raise TextDataError(f"{meta_path} lacks {', '.join(lacking) or 'a sha256 table'}; {hint}")
    for name in (_TOKENIZER, *(f"{a}.npy" for a in _ARRAYS)):
        f = directory / name
        if not f.is_file():
            raise TextDataError(f"{f} is missing; {hint}")
        if meta["sha256"].get(name) != _sha256_file(f):
            raise TextDataError(f"{f} is corrupt (sha256 mismatch); {hint}")
    return meta


def load(directory: str | os.PathLike) -> TextData:
    """Open a built directory after checking every file's sha256 (TextDataError names a bad file)."""
    directory = Path(directory)
    meta = _verify(directory)
    arrays = {name: np.load(directory / f"{name}.npy", mmap_mode="r") for name in _ARRAYS}
    tokenizer = Tokenizer.from_file(str(directory / _TOKENIZER))
    tokenizer.encode_special_tokens = True  # not saved in tokenizer.json
    return TextData(
        **arrays,
        tokenizer=tokenizer,
        meta=meta,
        vocab_size=int(meta["vocab_size"]),
        pad_id=int(meta["pad_id"]),
        eot_id=int(meta["eot_id"]),
        path=directory,
    )


def get(
    *,
    vocab_size: int,
    max_corpus_bytes: int | None = None,
    seq_len: int,
    num_task_examples: int,
    num_val_task_examples: int,
    seed: int,
) -> TextData:
    """The text data for these build arguments (see `build`), from the cache, built there if absent."""
    args = dict(
        vocab_size=vocab_size,
        max_corpus_bytes=max_corpus_bytes,
        seq_len=seq_len,
        num_task_examples=num_task_examples,
        num_val_task_examples=num_val_task_examples,
        seed=seed,
    )
    path = cache_path(**args)
    if not path.exists():
        try:
            build(path, **args)
        except FileExistsError:
            if not path.exists():
                raise
    return load(path)
