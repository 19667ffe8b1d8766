"""Offline text data for a small language model: Python source installed on this machine.

Nothing is downloaded. `sources.py` lists the files of a corpus source: "stdlib" (the interpreter's
standard library, ~12 MB, ~3.8 M train tokens at vocabulary 2048) or "packages" (the library source
of the pinned distributions in `sources.PACKAGES`, ~92 MB after deduplication, ~32 M train tokens),
split by file on the identifier alone (~5%
validation), and the held-out "other" text (the packages' README descriptions, not Python), the same
for every source and never trained on.

A byte-level BPE (HF `tokenizers`, every digit its own token) is trained on the train files only: all
of them up to `TOKENIZER_MAX_BYTES` (the whole stdlib), beyond it a deterministic sample of files that
fits (`sources.sample`; 32 of the 88 MB of "packages"). Token 0 is `<|endoftext|>`, which joins files; token 1 is
`<|pad|>`, which fills task rows. Special tokens written literally in a text are encoded as plain
text, never as these ids.

`get(**args)` returns the data for a set of build arguments, building it into the cache when absent:

    cache_dir()/text/{source}-v{vocab}-{hash of args, source, corpus checksum, tokenizers version}/
        tokenizer.json
        train.npy, val.npy                 [N] uint16, the split's files joined by <|endoftext|>
        tasks_{train,val}_tokens.npy       [R, seq_len + 1] uint16, packed task rows (tasks.py)
        tasks_{train,val}_labels.npy       [R, seq_len + 1] int8, answer-token labels, -1 elsewhere
        meta.json                          sizes, checksums, build arguments, unigram baseline,
                                           per-label task counts ("tasks": "labels"), the source
                                           and its distributions' installed versions ("packages")
        meta.json.sha256                   sha256 of meta.json (`sha256sum -c` format)
        other.npy                          [N] uint16, the other text joined by <|endoftext|>
        other.json, other.json.sha256      its sizes, checksums, versions and unigram baseline

A build is written to a temporary sibling and renamed into place, so a killed build leaves nothing
half-written under the final name. Every file's sha256 is checked on load. The other split is a
separate record because it came later: "stdlib" keys (and meta.json) are those of builds that had
none, and `get` adds it, deterministically, to such a build. Its text is not in the "stdlib" key.

Validation task examples never repeat a train prompt (see tasks.py); meta.json records, per label,
the val examples and `val_in_train`, the number of them whose prompt is a train prompt (always 0).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import tokenizers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from psec_jax.artifacts import sha256 as _sha256_file
from psec_jax.models import sources, tasks
from psec_jax.models.sources import is_validation as is_validation
from psec_jax.models.sources import stdlib_files as stdlib_files
from psec_jax.models.sources import stdlib_root as stdlib_root

FORMAT = "psec_jax.text/3"  # bump when the layout or the task format changes: it is part of the cache key
EOT, PAD = "<|endoftext|>", "<|pad|>"
EOT_ID, PAD_ID = 0, 1
MIN_VOCAB = 256 + 2  # the byte alphabet and the two special tokens
MAX_VOCAB = 1 << 16  # token arrays are uint16
TOKENIZER_MAX_BYTES = 32 << 20  # BPE training text (`sources.sample`); the whole stdlib train split fits
_ENCODE_CHUNK = 8 << 20  # characters per batch encode: bounds the memory of its Encoding objects
_ARRAYS = ("train", "val", "tasks_train_tokens", "tasks_train_labels", "tasks_val_tokens", "tasks_val_labels")
_META, _TOKENIZER, _OTHER, _OTHER_META = "meta.json", "tokenizer.json", "other.npy", "other.json"
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
    meta: dict[str, Any]  # contents of meta.json, and of other.json under "other"
    vocab_size: int  # tokenizer vocabulary size (ids are in [0, vocab_size))
    pad_id: int
    eot_id: int
    path: Path  # the directory it was loaded from
    # [N_other] uint16 the held-out other text (not Python), joined by eot_id; never trained on.
    # The default (empty) is for TextData made by hand; `load` always sets it.
    other: np.ndarray = np.zeros(0, np.uint16)


def cache_dir() -> Path:
    """$PSEC_JAX_DATA_DIR, else ~/.cache/psec_jax/datasets.

    The rule of `psec_jax.data.datasets.cache_dir`, duplicated because importing `psec_jax.data`
    imports MuJoCo."""
    return Path(os.environ.get("PSEC_JAX_DATA_DIR", Path.home() / ".cache" / "psec_jax" / "datasets"))


# --- corpus ------------------------------------------------------------------------------------


def _corpus(
    max_corpus_bytes: int | None, source: str = "stdlib", listing: sources.Listing | None = None
) -> dict[str, sources.Split]:
    """Train and val splits of `source` (or of its `listing`), each its first files totalling at most
    `max_corpus_bytes`."""
    corpus = sources.take(sources.listing(source) if listing is None else listing, max_corpus_bytes)
    for split, s in corpus.items():
        if not s.paths:
            raise ValueError(f"the {split} split has no files (max_corpus_bytes={max_corpus_bytes})")
    return corpus


def corpus_sizes(max_corpus_bytes: int | None, source: str = "stdlib") -> dict[str, tuple[int, int]]:
    """{split: (files, bytes)} of the train and val splits the build would take for `max_corpus_bytes`.
    A split's token count is at most its bytes plus one `<|endoftext|>` between files (byte-level BPE: a
    token is at least one byte)."""
    listing = sources.listing(source)
    return {
        split: (len(chosen), sum(len(raw) for _, raw in chosen))
        for split, chosen in ((s, sources.prefix(f, max_corpus_bytes)) for s, f in listing.splits.items())
    }


def min_corpus_bytes(source: str = "stdlib") -> int:
    """The least `max_corpus_bytes` that leaves the tokenizer a file in both splits: the larger of the
    two splits' first files."""
    return max((len(files[0][1]) for files in sources.listing(source).splits.values() if files), default=0)


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
    """[N] uint16 token ids of the texts joined by `<|endoftext|>` ([0] for no texts). Encoded in
    parallel batches of about `_ENCODE_CHUNK` characters."""
    parts, start = [], 0
    while start < len(texts):
        end, size = start, 0
        while end < len(texts) and (end == start or size + len(texts[end]) <= _ENCODE_CHUNK):
            size += len(texts[end])
            end += 1
        for i, encoding in enumerate(tokenizer.encode_batch_fast(texts[start:end], add_special_tokens=False)):
            if start + i:
                parts.append(np.array([EOT_ID], np.uint16))
            parts.append(np.asarray(encoding.ids, np.uint16))
        start = end
    return np.concatenate(parts) if parts else np.zeros(0, np.uint16)


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
    source: str,
) -> dict[str, Any]:
    """The build arguments as meta.json records them ("args"; the source is recorded on its own)."""
    if source not in sources.SOURCES:
        raise ValueError(f"source must be one of {sources.SOURCES}, got {source!r}")
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


def _key(args: dict[str, Any], corpus: dict[str, sources.Split], source: str) -> str:
    identity = {
        "format": FORMAT,
        "args": args,
        "tokenizers": tokenizers.__version__,
        "corpus": {split: s.checksum for split, s in corpus.items()},
    }
    if source != "stdlib":  # stdlib keys are those from before there were sources: existing caches stay valid
        identity["source"] = source
    return sources.sha256_hex(json.dumps(identity, sort_keys=True).encode())[:12]


def cache_path(
    *,
    vocab_size: int,
    max_corpus_bytes: int | None = None,
    seq_len: int,
    num_task_examples: int,
    num_val_task_examples: int,
    seed: int,
    source: str = "stdlib",
) -> Path:
    """`cache_dir()/text/{source}-v{vocab_size}-{hash}`, the hash over the arguments, the source, the
    corpus checksum and the tokenizers version (reads the corpus files to checksum them)."""
    args = _check_args(vocab_size, max_corpus_bytes, seq_len, num_task_examples, num_val_task_examples, seed, source)
    return cache_dir() / "text" / f"{source}-v{vocab_size}-{_key(args, _corpus(max_corpus_bytes, source), source)}"


def _replace(path: Path, write: Callable[[Path], None]) -> None:
    """Write `path` through `write(tmp)` on a temporary sibling renamed over it (atomic)."""
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{path.name}")  # keeps the suffix: np.save adds none
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_other(directory: Path, tokenizer: Tokenizer, max_corpus_bytes: int | None, train: np.ndarray) -> None:
    """Encode the other split into `directory` (other.npy, other.json, and last other.json.sha256, whose
    presence marks it complete). Deterministic, so concurrent writers write the same bytes."""
    listing = sources.other_files()
    split = sources.take(listing, max_corpus_bytes, bytes.decode)["other"]  # may be empty
    tokens = encode_files(tokenizer, split.texts)
    _replace(directory / _OTHER, lambda tmp: np.save(tmp, tokens))
    info = {
        "files": len(split.paths),
        "bytes": split.num_bytes,
        "tokens": int(tokens.size),
        "checksum": split.checksum,
        "duplicates": split.duplicates,
        "paths": split.paths,
        "packages": listing.versions,
        "unigram_loss": unigram_loss(train, tokens, tokenizer.get_vocab_size()) if tokens.size else None,
        "sha256": {_OTHER: _sha256_file(directory / _OTHER), _TOKENIZER: _sha256_file(directory / _TOKENIZER)},
    }
    _replace(directory / _OTHER_META, lambda tmp: tmp.write_text(json.dumps(info, indent=1) + "\n"))
    digest = _sha256_file(directory / _OTHER_META)
    _replace(directory / f"{_OTHER_META}.sha256", lambda tmp: tmp.write_text(f"{digest}  {_OTHER_META}\n"))


def build(
    directory: str | os.PathLike,
    *,
    vocab_size: int,
    max_corpus_bytes: int | None = None,
    seq_len: int,
    num_task_examples: int,
    num_val_task_examples: int,
    seed: int,
    source: str = "stdlib",
) -> Path:
    """Build the text data into `directory` (which must not exist) and return it.

    Args:
      vocab_size: BPE vocabulary size including the two special tokens, in [258, 65536].
      max_corpus_bytes: keep, per split (train, val and other), the first files in sorted order
        totalling at most this many bytes (for fast tests; the other split may be left empty); None
        keeps every file.
      seq_len: model context T; task rows are packed to T + 1 tokens.
      num_task_examples, num_val_task_examples: task examples packed for train and validation.
      seed: root of the task generators (train and val draw from two children of it); val
        examples are drawn from the val side of the task split, excluding every train prompt.
      source: the corpus, one of `sources.SOURCES` ("stdlib" or "packages").
    """
    args = _check_args(vocab_size, max_corpus_bytes, seq_len, num_task_examples, num_val_task_examples, seed, source)
    directory = Path(directory)
    if directory.exists():
        raise FileExistsError(f"{directory} already exists; delete it to rebuild")
    listing = sources.listing(source)
    corpus = _corpus(max_corpus_bytes, source, listing)
    tokenizer_texts = sources.sample(corpus["train"], TOKENIZER_MAX_BYTES)
    tokenizer = train_tokenizer(tokenizer_texts, vocab_size)
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
            "source": source,
            "args": args,
            "vocab_size": actual_vocab,
            "eot_id": EOT_ID,
            "pad_id": PAD_ID,
            "python": sys.version,
            "stdlib": str(stdlib_root()),
            "packages": listing.versions,
            "tokenizers": tokenizers.__version__,
            "tokenizer_train": {"files": len(tokenizer_texts), "chars": sum(map(len, tokenizer_texts))},
            "splits": {
                split: {
                    "files": len(s.paths),
                    "bytes": s.num_bytes,
                    "tokens": int(arrays[split].size),
                    "checksum": s.checksum,
                    "duplicates": s.duplicates,
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
        _write_other(tmp, tokenizer, max_corpus_bytes, arrays["train"])
        try:
            tmp.rename(directory)
        except OSError as e:  # someone else finished first
            raise FileExistsError(f"{directory} already exists; delete it to rebuild") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


def _verify_json(path: Path, hint: str) -> Any:
    """The contents of a JSON file after checking it against its `.sha256` sidecar."""
    side = path.with_name(f"{path.name}.sha256")
    for f in (path, side):
        if not f.is_file():
            raise TextDataError(f"{f} is missing; {hint}")
    if side.read_text().split()[:1] != [_sha256_file(path)]:
        raise TextDataError(f"{path} is corrupt (sha256 mismatch); {hint}")
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise TextDataError(f"{path} is not valid JSON ({e}); {hint}") from None


def _verify_files(directory: Path, names: tuple[str, ...], table: dict[str, str], hint: str) -> None:
    for name in names:
        f = directory / name
        if not f.is_file():
            raise TextDataError(f"{f} is missing; {hint}")
        if table.get(name) != _sha256_file(f):
            raise TextDataError(f"{f} is corrupt (sha256 mismatch); {hint}")


def _verify(directory: Path) -> dict[str, Any]:
    hint = f"delete {directory}/ to rebuild"
    meta_path = directory / _META
    meta = _verify_json(meta_path, hint)
    lacking = [k for k in _META_KEYS if not isinstance(meta, dict) or k not in meta]
    if lacking or not isinstance(meta["sha256"], dict):
        raise TextDataError(f"{meta_path} lacks {', '.join(lacking) or 'a sha256 table'}; {hint}")
    _verify_files(directory, (_TOKENIZER, *(f"{a}.npy" for a in _ARRAYS)), meta["sha256"], hint)
    return meta


def _verify_other(directory: Path, meta: dict[str, Any]) -> dict[str, Any]:
    hint = f"delete {directory}/ to rebuild (a build from before the other split: `text.get` adds it)"
    info = _verify_json(directory / _OTHER_META, hint)
    if not isinstance(info, dict) or not isinstance(info.get("sha256"), dict):
        raise TextDataError(f"{directory / _OTHER_META} lacks a sha256 table; {hint}")
    if info["sha256"].get(_TOKENIZER) != meta["sha256"][_TOKENIZER]:
        raise TextDataError(f"{directory / _OTHER} was encoded with another tokenizer; {hint}")
    _verify_files(directory, (_OTHER,), info["sha256"], hint)
    return info


def _open_tokenizer(directory: Path) -> Tokenizer:
    tokenizer = Tokenizer.from_file(str(directory / _TOKENIZER))
    tokenizer.encode_special_tokens = True  # not saved in tokenizer.json
    return tokenizer


def load(directory: str | os.PathLike) -> TextData:
    """Open a built directory after checking every file's sha256 (TextDataError names a bad file)."""
    directory = Path(directory)
    meta = _verify(directory)
    other = _verify_other(directory, meta)
    arrays = {name: np.load(directory / f"{name}.npy", mmap_mode="r") for name in (*_ARRAYS, "other")}
    return TextData(
        **arrays,
        tokenizer=_open_tokenizer(directory),
        meta={**meta, "other": other},
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
    source: str = "stdlib",
) -> TextData:
    """The text data for these build arguments (see `build`), from the cache, built there if absent.
    A cached build from before the other split gets it added (other.npy, other.json)."""
    args = dict(
        vocab_size=vocab_size,
        max_corpus_bytes=max_corpus_bytes,
        seq_len=seq_len,
        num_task_examples=num_task_examples,
        num_val_task_examples=num_val_task_examples,
        seed=seed,
        source=source,
    )
    path = cache_path(**args)
    if not path.exists():
        try:
            build(path, **args)
        except FileExistsError:
            if not path.exists():
                raise
    if not (path / f"{_OTHER_META}.sha256").exists():
        _verify(path)  # the build it is added to must be sound
        _write_other(path, _open_tokenizer(path), max_corpus_bytes, np.load(path / "train.npy", mmap_mode="r"))
    return load(path)
