"""A controlled task mixture whose per-token difficulty is known by construction.

Three tasks, each in an easy and a hard variant, drawn uniformly (one example per line):

| task | easy | hard |
|---|---|---|
| copy | `copy k q z =` -> ` k q z` | the same with 12 letters |
| sort | `sort 312=` -> `123` | the same with 10 digits |
| modular | `(3+5)%10=` -> `8` | `(12*34+56)%97=` -> `73` (a, b, c two-digit) |

Every answer is followed by a newline terminator. Letters and digits are drawn uniformly with
replacement. The tokenizer (`text.py`) splits every digit into its own token, so digit strings need
no separators; letters are space-separated so that byte-level BPE never merges two of them (` k` is
one token, or two where the vocabulary lacks it).

The label of an answer token is `2 * task_index + hard` (0..5, see `label_names`); every other
token (prompt, the answer's terminating newline, pad, corpus) has label -1. The terminator stays in
the token stream and is trained on, but it is trivial to predict and a different share of each
variant's answer, so it is not an answer token. Prompt, answer and terminator are tokenized
separately, so the answer's tokens are known exactly, and examples are packed whole into
fixed-length rows (`pack`).

Train/validation split: no validation prompt is a train prompt, so every variant's validation score
measures unseen problems. The two small problem spaces are split by construction, a fifth of each
held out for validation with the same rule and format:

  - modular/easy (100 prompts): validation iff (a + 2b) % 5 == 0 (20 pairs; every answer 0..9 occurs
    on both sides);
  - sort/easy (1000 prompts): validation iff the digit sum % 5 == 0 (200 triples; so validation
    answers, the sorted strings, are never train answers either).

The other variants (copy/easy: 26^3 prompts; the hard ones: >= 90^3) are drawn from their whole
space, and `generate(..., exclude=train prompts)` redraws a validation prompt (within its variant, so
the label mix stays uniform) until it is not a train prompt.
"""

from __future__ import annotations

import itertools
import string
from collections.abc import Collection, Sequence
from typing import NamedTuple

import numpy as np
from tokenizers import Tokenizer

TASKS = ("copy", "sort", "modular")
DIFFICULTIES = ("easy", "hard")
SPLITS = ("train", "val")
NUM_LABELS = len(TASKS) * len(DIFFICULTIES)
IGNORE = -1  # label of every token that is not part of an answer
TERMINATOR = "\n"  # ends every answer; in the token stream, labelled IGNORE
MAX_REDRAWS = 1000  # consecutive excluded prompts of one variant before `generate` gives up

_COPY_LETTERS = {False: 3, True: 12}
_SORT_DIGITS = {False: 3, True: 10}
# the longest example, prompt + answer + terminator, in bytes (copy/hard: "copy a ... l =" -> " a ... l"):
# a row of this many tokens holds any example whole, whatever the vocabulary (a token is at least a byte)
_LETTERS = " ".join("x" * _COPY_LETTERS[True])
MAX_EXAMPLE_BYTES = len(f"copy {_LETTERS} =" + f" {_LETTERS}" + TERMINATOR)
_SORT_EASY = {
    split: [d for d in itertools.product(range(10), repeat=3) if (sum(d) % 5 == 0) == (split == "val")]
    for split in SPLITS
}
_MODULAR_EASY = {
    split: [(a, b) for a in range(10) for b in range(10) if ((a + 2 * b) % 5 == 0) == (split == "val")]
    for split in SPLITS
}


class Example(NamedTuple):
    """One task instance: the model reads `prompt` and is scored on `answer` less its terminator."""

    prompt: str  # e.g. "sort 312="
    answer: str  # e.g. "123\n", always ending with TERMINATOR
    label: int  # 2 * task index + hard, in [0, NUM_LABELS)


def label_names() -> list[str]:
    """Names of the labels 0..5, e.g. `label_names()[3] == "sort/hard"`."""
    return [f"{task}/{difficulty}" for task in TASKS for difficulty in DIFFICULTIES]


def _copy(rng: np.random.Generator, hard: bool, split: str) -> tuple[str, str]:
    letters = " ".join(string.ascii_lowercase[i] for i in rng.integers(0, 26, _COPY_LETTERS[hard]))
    return f"copy {letters} =", f" {letters}"


def _sort(rng: np.random.Generator, hard: bool, split: str) -> tuple[str, str]:
    if hard:
        digits = rng.integers(0, 10, _SORT_DIGITS[hard])
    else:
        digits = np.array(_SORT_EASY[split][int(rng.integers(len(_SORT_EASY[split])))])
    return f"sort {''.join(map(str, digits))}=", "".join(map(str, np.sort(digits)))


def _modular(rng: np.random.Generator, hard: bool, split: str) -> tuple[str, str]:
    if hard:
        a, b, c = (int(x) for x in rng.integers(10, 100, 3))
        return f"({a}*{b}+{c})%97=", f"{(a * b + c) % 97}"
    a, b = _MODULAR_EASY[split][int(rng.integers(len(_MODULAR_EASY[split])))]
    return f"({a}+{b})%10=", f"{(a + b) % 10}"


_GENERATORS = (_copy, _sort, _modular)


def generate(
    rng: np.random.Generator, num_examples: int, split: str = "train", exclude: Collection[str] = frozenset()
) -> list[Example]:
    """`num_examples` examples, task and difficulty each drawn uniformly (see the module docstring).

    Args:
      split: which side of the small problem spaces' split to draw from ("train" or "val").
      exclude: prompts never to produce (for "val": the train prompts); an excluded prompt is
        redrawn within its variant, and ValueError is raised after MAX_REDRAWS in a row.
    """
    if num_examples < 0:
        raise ValueError(f"num_examples must be >= 0, got {num_examples}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    examples = []
    for _ in range(num_examples):
        task, hard = int(rng.integers(len(TASKS))), bool(rng.integers(2))
        for _ in range(MAX_REDRAWS):
            prompt, answer = _GENERATORS[task](rng, hard, split)
            if prompt not in exclude:
                break
        else:
            raise ValueError(
                f"{label_names()[2 * task + hard]}: {MAX_REDRAWS} draws in a row were all excluded "
                f"prompts; its {split} problem space is (nearly) exhausted"
            )
        examples.append(Example(prompt, answer + TERMINATOR, 2 * task + hard))
    return examples


def split_stats(train: Sequence[Example], val: Sequence[Example], val_labels: np.ndarray) -> dict[str, dict]:
    """Per label name: train and val example counts, `val_in_train` (val examples whose prompt is a
    train prompt; 0 by construction), val answer tokens and val rows holding any, from the val
    labels [R, row_len] that `pack` made of `val`."""
    seen = {e.prompt for e in train}
    return {
        name: {
            "train_examples": sum(e.label == i for e in train),
            "val_examples": sum(e.label == i for e in val),
            "val_in_train": sum(e.label == i and e.prompt in seen for e in val),
            "val_answer_tokens": int((val_labels == i).sum()),
            "val_rows": int((val_labels == i).any(axis=1).sum()),
        }
        for i, name in enumerate(label_names())
    }


def pack(tokenizer: Tokenizer, examples: Sequence[Example], row_len: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Tokenize examples and pack them whole, in order, into rows of `row_len` tokens.

    An example goes into the current row if it fits, else it starts a new row; the rest of a row is
    `pad_id`. Prompt, answer and the answer's TERMINATOR are tokenized separately (no special
    tokens added).

    Returns:
      tokens: [N, row_len] uint16 token ids.
      labels: [N, row_len] int8, the example's label on its answer tokens (terminator excluded),
        IGNORE elsewhere.
    """
    if tokenizer.get_vocab_size() > 1 << 16:
        raise ValueError(f"vocabulary of {tokenizer.get_vocab_size()} tokens does not fit uint16")
    for e in examples:
        if not e.answer.endswith(TERMINATOR):
            raise ValueError(f"answer {e.answer!r} of {e.prompt!r} does not end with {TERMINATOR!r}")
    encode = lambda texts: [e.ids for e in tokenizer.encode_batch(texts, add_special_tokens=False)]
    prompts = encode([e.prompt for e in examples])
    answers = encode([e.answer[: -len(TERMINATOR)] for e in examples])
    terminator = encode([TERMINATOR])[0]
    rows: list[tuple[list[int], list[int]]] = []
    row_ids: list[int] = []
    row_labels: list[int] = []
    for example, prompt, answer in zip(examples, prompts, answers):
        ids = prompt + answer + terminator
        if len(ids) > row_len:
            raise ValueError(
                f"example {example.prompt + example.answer!r} has {len(ids)} tokens, more than row_len={row_len}"
            )
        if len(row_ids) + len(ids) > row_len:
            rows.append((row_ids, row_labels))
            row_ids, row_labels = [], []
        row_ids += ids
        row_labels += [IGNORE] * len(prompt) + [example.label] * len(answer) + [IGNORE] * len(terminator)
    if row_ids:
        rows.append((row_ids, row_labels))
    tokens = np.full((len(rows), row_len), pad_id, np.uint16)
    labels = np.full((len(rows), row_len), IGNORE, np.int8)
    for r, (ids, labs) in enumerate(rows):
        tokens[r, : len(ids)] = ids
        labels[r, : len(labs)] = labs
    return tokens, labels
