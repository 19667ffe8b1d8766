"""A controlled task mixture whose per-token difficulty is known by construction.

Three tasks, each in an easy and a hard variant, drawn uniformly (one example per line):

| task | easy | hard |
|---|---|---|
| copy | `copy k q z =` -> ` k q z` | the same with 12 letters |
| sort | `sort 312=` -> `123` | the same with 10 digits |
| modular | `(3+5)%10=` -> `8` | `(12*34+56)%97=` -> `73` (a, b, c two-digit) |

Every answer ends with a newline, which is part of the answer. Letters and digits are drawn
uniformly with replacement. The tokenizer (`text.py`) splits every digit into its own token, so
digit strings need no separators; letters are space-separated so that byte-level BPE never merges
two of them (` k` is one token, or two where the vocabulary lacks it).

The label of an answer token is `2 * task_index + hard` (0..5, see `label_names`); every other
token (prompt, pad, corpus) has label -1. Prompt and answer are tokenized separately, so the
answer's tokens are known exactly, and examples are packed whole into fixed-length rows (`pack`).
"""

from __future__ import annotations

import string
from typing import NamedTuple, Sequence

import numpy as np
from tokenizers import Tokenizer

TASKS = ("copy", "sort", "modular")
DIFFICULTIES = ("easy", "hard")
NUM_LABELS = len(TASKS) * len(DIFFICULTIES)
IGNORE = -1  # label of every token that is not part of an answer

_COPY_LETTERS = {False: 3, True: 12}
_SORT_DIGITS = {False: 3, True: 10}


class Example(NamedTuple):
    """One task instance: the model reads `prompt` and is scored on `answer`."""

    prompt: str  # e.g. "sort 312="
    answer: str  # e.g. "123\n"
    label: int  # 2 * task index + hard, in [0, NUM_LABELS)


def label_names() -> list[str]:
    """Names of the labels 0..5, e.g. `label_names()[3] == "sort/hard"`."""
    return [f"{task}/{difficulty}" for task in TASKS for difficulty in DIFFICULTIES]


def _copy(rng: np.random.Generator, hard: bool) -> tuple[str, str]:
    letters = " ".join(string.ascii_lowercase[i] for i in rng.integers(0, 26, _COPY_LETTERS[hard]))
    return f"copy {letters} =", f" {letters}\n"


def _sort(rng: np.random.Generator, hard: bool) -> tuple[str, str]:
    digits = rng.integers(0, 10, _SORT_DIGITS[hard])
    return f"sort {''.join(map(str, digits))}=", "".join(map(str, np.sort(digits))) + "\n"


def _modular(rng: np.random.Generator, hard: bool) -> tuple[str, str]:
    if hard:
        a, b, c = (int(x) for x in rng.integers(10, 100, 3))
        return f"({a}*{b}+{c})%97=", f"{(a * b + c) % 97}\n"
    a, b = (int(x) for x in rng.integers(0, 10, 2))
    return f"({a}+{b})%10=", f"{(a + b) % 10}\n"


_GENERATORS = (_copy, _sort, _modular)


def generate(rng: np.random.Generator, num_examples: int) -> list[Example]:
    """`num_examples` examples, task and difficulty each drawn uniformly (see the module docstring)."""
    if num_examples < 0:
        raise ValueError(f"num_examples must be >= 0, got {num_examples}")
    examples = []
    for _ in range(num_examples):
        task, hard = int(rng.integers(len(TASKS))), bool(rng.integers(2))
        prompt, answer = _GENERATORS[task](rng, hard)
        examples.append(Example(prompt, answer, 2 * task + hard))
    return examples


def pack(tokenizer: Tokenizer, examples: Sequence[Example], row_len: int,
         pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Tokenize examples and pack them whole, in order, into rows of `row_len` tokens.

    An example goes into the current row if it fits, else it starts a new row; the rest of a row is
    `pad_id`. Prompt and answer are tokenized separately (no special tokens added).

    Returns:
      tokens: [N, row_len] uint16 token ids.
      labels: [N, row_len] int8, the example's label on its answer tokens, IGNORE elsewhere.
    """
    if tokenizer.get_vocab_size() > 1 << 16:
        raise ValueError(f"vocabulary of {tokenizer.get_vocab_size()} tokens does not fit uint16")
    prompts = tokenizer.encode_batch([e.prompt for e in examples], add_special_tokens=False)
    answers = tokenizer.encode_batch([e.answer for e in examples], add_special_tokens=False)
    rows: list[tuple[list[int], list[int]]] = []
    row_ids: list[int] = []
    row_labels: list[int] = []
    for example, prompt, answer in zip(examples, prompts, answers):
        ids = prompt.ids + answer.ids
        if len(ids) > row_len:
            raise ValueError(f"example {example.prompt + example.answer!r} has {len(ids)} tokens, "
                             f"more than row_len={row_len}")
        if len(row_ids) + len(ids) > row_len:
            rows.append((row_ids, row_labels))
            row_ids, row_labels = [], []
        row_ids += ids
        row_labels += [IGNORE] * len(prompt.ids) + [example.label] * len(answer.ids)
    if row_ids:
        rows.append((row_ids, row_labels))
    tokens = np.full((len(rows), row_len), pad_id, np.uint16)
    labels = np.full((len(rows), row_len), IGNORE, np.int8)
    for r, (ids, labs) in enumerate(rows):
        tokens[r, :len(ids)] = ids
        labels[r, :len(labs)] = labs
    return tokens, labels
