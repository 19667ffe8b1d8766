"""A task mixture whose two variants per task are compared at matched answer positions.

Three tasks, drawn uniformly (one example per line); sort and lookup then draw their variant
uniformly, while an addition example holds answer tokens of both its labels:

| task | example | labels of the answer tokens |
|---|---|---|
| sort | `sort 312=` -> `123` | all `sort/easy` (3 digits); `sort/hard` with 10 digits |
| addition | `0199+0001=` -> `00200` | per digit, MSB first: `no_carry no_carry carry carry -` |
| lookup | `find a=3 k=7 k?` -> `7` | `lookup/1` (1 distractor pair); `lookup/8` with 9 pairs |

Every answer is followed by a newline terminator. Digits are drawn uniformly (with replacement);
the tokenizer (`text.py`) splits every digit into its own token, so every answer character here is
one token. Letters are space-separated so that byte-level BPE never merges two of them.

The label of an answer token is `2 * task_index + variant` (0..5, see `label_names`); every other
token (prompt, unscored answer digits, the answer's terminating newline, pad, corpus) is IGNORE
(-1). An `Example` carries one label per answer character, so one example may hold several labels.
Prompt, answer and terminator are tokenized separately, so the answer's tokens are known exactly,
and examples are packed whole into fixed-length rows (`pack`).

Why the variants are meant to differ, and what is matched:

  - sort: 3 vs 10 digits. The one task whose difficulty was measured in the labelled order. Its
    positions are not matched (a 10-digit answer has 10 positions, a 3-digit one 3); it is kept as
    the known-ordered reference.
  - addition: `a+b=` with a, b in [0, 10^4) written with 4 digits, the sum with 5 digits, most
    significant first. An answer digit is labelled `carry` iff its column receives a carry from the
    columns below it, i.e. `a mod 10^c + b mod 10^c >= 10^c` for column c (c = 0 the units). Written
    MSB first, a digit with a carry depends on lower columns that are not yet written: the model
    must both resolve the carry chain and add one, where a no-carry digit is the column's digit sum.
    Both labels occur at every scored position (about 45% carry at the tens, 50% above), with the
    same input token kinds, and ~85% of the examples hold both, so the two labels are mostly compared
    within the same examples. The units digit never receives a carry, so it is unscored (IGNORE):
    labelling it `no_carry` would add a position that has no `carry` counterpart. The leading digit
    is the carry out of the thousands column, so there `carry` is always "1" and `no_carry` "0".
  - lookup: `find k=v ... q?` -> the value of key q, with 2 or 9 pairs (distinct letter keys, digit
    values, the queried pair at a uniform place). The answer is one digit token, always predicted
    from the same input token `?` right after the queried key, so the compared positions hold the
    same token; the variants differ only in how many distractor pairs the retrieval must ignore
    (and so in how far back the pairs reach).

Train/validation split: no validation prompt is a train prompt, so every label's validation score
measures unseen problems. Splits by construction, a fifth held out for validation:

  - sort/easy (1000 prompts): validation iff the digit sum % 5 == 0 (200 triples; so validation
    answers, the sorted strings, are never train answers either);
  - addition and lookup: validation iff `int(sha256(key), 16) % 5 == 0` for a key of the problem
    that ignores the order of the operands (`a+b` and `b+a`) and of the pairs, so a validation
    problem is not a train problem written differently either (`addition_split`, `lookup_split`).

sort/hard (10^10 prompts) is drawn from its whole space, and `generate(..., exclude=train prompts)`
redraws any validation prompt (within its variant, so the label mix stays uniform) until it is not a
train prompt.
"""

from __future__ import annotations

import hashlib
import itertools
import string
from collections.abc import Callable, Collection, Sequence
from typing import NamedTuple

import numpy as np
from tokenizers import Tokenizer

TASKS = ("sort", "addition", "lookup")
VARIANTS = (("easy", "hard"), ("no_carry", "carry"), ("1", "8"))  # per task: label 2 * task + variant
SPLITS = ("train", "val")
NUM_LABELS = 2 * len(TASKS)
IGNORE = -1  # label of every token that is not a scored answer token
TERMINATOR = "\n"  # ends every answer; in the token stream, labelled IGNORE
MAX_REDRAWS = 1000  # consecutive excluded prompts of one variant before `generate` gives up
VAL_SHARE = 5  # a problem is validation iff its hash (or sort/easy digit sum) % VAL_SHARE == 0

SORT, ADDITION, LOOKUP = range(len(TASKS))
SORT_DIGITS = (3, 10)  # per variant
ADDITION_DIGITS = 4  # operand width; the sum has one digit more
LOOKUP_PAIRS = (2, 9)  # per variant: the queried pair and 1 or 8 distractors
_SORT_EASY = {
    split: [d for d in itertools.product(range(10), repeat=3) if (sum(d) % VAL_SHARE == 0) == (split == "val")]
    for split in SPLITS
}


class Example(NamedTuple):
    """One task instance: the model reads `prompt` and is scored on the answer characters whose label
    is not IGNORE (the terminator never is)."""

    prompt: str  # e.g. "0199+0001="
    answer: str  # e.g. "00200\n", always ending with TERMINATOR
    labels: tuple[int, ...]  # one per character of `answer` less TERMINATOR, in [0, NUM_LABELS) or IGNORE


def label_names() -> list[str]:
    """Names of the labels 0..5, e.g. `label_names()[3] == "addition/carry"`."""
    return [f"{task}/{variant}" for task, variants in zip(TASKS, VARIANTS) for variant in variants]


# task -> (harder label, easier label): the pairs compared at matched positions
HARDER = {
    "addition": ("addition/carry", "addition/no_carry"),
    "lookup": ("lookup/8", "lookup/1"),
    "sort": ("sort/hard", "sort/easy"),
}


# --- examples from their problems -------------------------------------------------------------------


def sort_example(digits: Sequence[int]) -> Example:
    """`sort {digits}=` -> the digits in ascending order, each labelled sort/easy (3 digits) or
    sort/hard (10 digits)."""
    if len(digits) not in SORT_DIGITS:
        raise ValueError(f"sort takes {SORT_DIGITS[0]} or {SORT_DIGITS[1]} digits, got {len(digits)}")
    label = 2 * SORT + SORT_DIGITS.index(len(digits))
    return Example(
        f"sort {''.join(map(str, digits))}=", "".join(map(str, sorted(digits))) + TERMINATOR, (label,) * len(digits)
    )


def addition_example(a: int, b: int) -> Example:
    """`{a:04d}+{b:04d}=` -> `{a + b:05d}`; the answer digit of column c (c = 0 the units) is labelled
    addition/carry iff `a mod 10^c + b mod 10^c >= 10^c`, else addition/no_carry, and the units digit
    (c = 0, never a carry) IGNORE. E.g. 199 + 1: "00200", labels (no_carry, no_carry, carry, carry, -1)."""
    top = 10**ADDITION_DIGITS
    if not (0 <= a < top and 0 <= b < top):
        raise ValueError(f"addition operands must be in [0, {top}), got {a} and {b}")
    columns = range(ADDITION_DIGITS, -1, -1)  # the answer's digits, most significant first
    labels = tuple(2 * ADDITION + int(a % 10**c + b % 10**c >= 10**c) if c else IGNORE for c in columns)
    w = ADDITION_DIGITS
    return Example(f"{a:0{w}d}+{b:0{w}d}=", f"{a + b:0{w + 1}d}" + TERMINATOR, labels)


def lookup_example(pairs: Sequence[tuple[str, int]], query: str) -> Example:
    """`find k=v k=v ... q?` -> the value of key `q`, labelled lookup/1 (2 pairs) or lookup/8 (9 pairs).

    Args:
      pairs: (key, value) in prompt order: distinct lowercase letters, digits 0..9.
      query: one of the keys.
    """
    keys = [k for k, _ in pairs]
    if len(pairs) not in LOOKUP_PAIRS or len(set(keys)) != len(keys) or query not in keys:
        raise ValueError(
            f"lookup takes {LOOKUP_PAIRS} pairs of distinct keys and one of them as query, got {pairs}, {query!r}"
        )
    if any(len(k) != 1 or k not in string.ascii_lowercase or v not in range(10) for k, v in pairs):
        raise ValueError(f"lookup keys must be lowercase letters and values digits, got {pairs}")
    label = 2 * LOOKUP + LOOKUP_PAIRS.index(len(pairs))
    prompt = "find " + " ".join(f"{k}={v}" for k, v in pairs) + f" {query}?"
    return Example(prompt, f"{dict(pairs)[query]}" + TERMINATOR, (label,))


# --- the split ----------------------------------------------------------------------------------------


def _split_of_key(key: str) -> str:
    return "val" if int(hashlib.sha256(key.encode()).hexdigest(), 16) % VAL_SHARE == 0 else "train"


def addition_split(a: int, b: int) -> str:
    """The side of the split ("train" or "val") of the problem a + b, the same as that of b + a."""
    return _split_of_key(f"addition {min(a, b)} {max(a, b)}")


def lookup_split(pairs: Sequence[tuple[str, int]], query: str) -> str:
    """The side of the split ("train" or "val") of a lookup problem, whatever the order of its pairs."""
    return _split_of_key(f"lookup {sorted(pairs)} {query}")


# --- drawing ------------------------------------------------------------------------------------------


def _sort(rng: np.random.Generator, variant: int, split: str) -> Example:
    if variant:
        return sort_example(rng.integers(0, 10, SORT_DIGITS[1]).tolist())
    return sort_example(_SORT_EASY[split][int(rng.integers(len(_SORT_EASY[split])))])


def _addition(rng: np.random.Generator, variant: int, split: str) -> Example:
    while True:  # rejection: a fifth of the draws land on the val side
        a, b = (int(x) for x in rng.integers(0, 10**ADDITION_DIGITS, 2))
        if addition_split(a, b) == split:
            return addition_example(a, b)


def _lookup(rng: np.random.Generator, variant: int, split: str) -> Example:
    n = LOOKUP_PAIRS[variant]
    while True:
        keys = [string.ascii_lowercase[i] for i in rng.choice(26, n, replace=False)]
        pairs = list(zip(keys, (int(v) for v in rng.integers(0, 10, n))))
        query = keys[int(rng.integers(n))]
        if lookup_split(pairs, query) == split:
            return lookup_example(pairs, query)


# per task: (draw, number of variants drawn per example); an addition example holds both its labels
_GENERATORS: tuple[tuple[Callable[[np.random.Generator, int, str], Example], int], ...] = (
    (_sort, 2),
    (_addition, 1),
    (_lookup, 2),
)

# the longest example, prompt + answer + terminator, in bytes (lookup/8, "find a=0 ... i=0 a?" -> "0"):
# a row of this many tokens holds any example whole, whatever the vocabulary (a token is at least a byte)
MAX_EXAMPLE_BYTES = max(
    len((e.prompt + e.answer).encode())
    for e in (
        sort_example([0] * SORT_DIGITS[1]),
        addition_example(0, 0),
        lookup_example([(k, 0) for k in string.ascii_lowercase[: LOOKUP_PAIRS[1]]], "a"),
    )
)


def generate(
    rng: np.random.Generator, num_examples: int, split: str = "train", exclude: Collection[str] = frozenset()
) -> list[Example]:
    """`num_examples` examples, task drawn uniformly and then sort's and lookup's variant uniformly
    (see the module docstring).

    Args:
      split: which side of the problem split to draw from ("train" or "val").
      exclude: prompts never to produce (for "val": the train prompts); an excluded prompt is
        redrawn within its variant, and ValueError is raised after MAX_REDRAWS in a row.
    """
    if num_examples < 0:
        raise ValueError(f"num_examples must be >= 0, got {num_examples}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    examples = []
    for _ in range(num_examples):
        task = int(rng.integers(len(TASKS)))
        draw, num_variants = _GENERATORS[task]
        variant = int(rng.integers(num_variants))
        for _ in range(MAX_REDRAWS):
            example = draw(rng, variant, split)
            if example.prompt not in exclude:
                break
        else:
            name = label_names()[2 * task + variant] if num_variants > 1 else TASKS[task]
            raise ValueError(
                f"{name}: {MAX_REDRAWS} draws in a row were all excluded prompts; "
                f"its {split} problem space is (nearly) exhausted"
            )
        examples.append(example)
    return examples


def split_stats(train: Sequence[Example], val: Sequence[Example], val_labels: np.ndarray) -> dict[str, dict]:
    """Per label name: train and val examples holding any answer token of it, `val_in_train` (of those
    val examples, the ones whose prompt is a train prompt; 0 by construction), its val answer tokens
    and the val rows holding any, from the val labels [R, row_len] that `pack` made of `val`."""
    seen = {e.prompt for e in train}
    return {
        name: {
            "train_examples": sum(i in e.labels for e in train),
            "val_examples": sum(i in e.labels for e in val),
            "val_in_train": sum(i in e.labels and e.prompt in seen for e in val),
            "val_answer_tokens": int((val_labels == i).sum()),
            "val_rows": int((val_labels == i).any(axis=1).sum()),
        }
        for i, name in enumerate(label_names())
    }


# --- packing ------------------------------------------------------------------------------------------


def _token_labels(example: Example, offsets: Sequence[tuple[int, int]]) -> list[int]:
    """The label of each answer token: that of the characters it covers, which must agree."""
    labels = []
    for start, end in offsets:
        covered = set(example.labels[start:end])
        if len(covered) > 1:
            raise ValueError(
                f"answer {example.answer!r} of {example.prompt!r}: token {example.answer[start:end]!r} "
                f"covers characters of labels {sorted(covered)}"
            )
        labels.append(covered.pop() if covered else IGNORE)
    return labels


def pack(tokenizer: Tokenizer, examples: Sequence[Example], row_len: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Tokenize examples and pack them whole, in order, into rows of `row_len` tokens.

    An example goes into the current row if it fits, else it starts a new row; the rest of a row is
    `pad_id`. Prompt, answer and the answer's TERMINATOR are tokenized separately (no special
    tokens added). An answer token takes the label of the answer characters it covers (ValueError if
    they differ; every answer of `generate` is digits, one token each).

    Returns:
      tokens: [N, row_len] uint16 token ids.
      labels: [N, row_len] int8, the label of each answer token (terminator excluded), IGNORE elsewhere.
    """
    if tokenizer.get_vocab_size() > 1 << 16:
        raise ValueError(f"vocabulary of {tokenizer.get_vocab_size()} tokens does not fit uint16")
    for e in examples:
        if not e.answer.endswith(TERMINATOR):
            raise ValueError(f"answer {e.answer!r} of {e.prompt!r} does not end with {TERMINATOR!r}")
        if len(e.labels) != len(e.answer) - len(TERMINATOR):
            raise ValueError(f"answer {e.answer!r} of {e.prompt!r} has {len(e.labels)} labels, not one per character")
        if any(not (IGNORE <= label < NUM_LABELS) for label in e.labels):
            raise ValueError(f"labels {e.labels} of {e.prompt!r} must be in [0, {NUM_LABELS}) or IGNORE")
    encode = lambda texts: tokenizer.encode_batch(texts, add_special_tokens=False)
    prompts = [p.ids for p in encode([e.prompt for e in examples])]
    answers = encode([e.answer[: -len(TERMINATOR)] for e in examples])
    terminator = encode([TERMINATOR])[0].ids
    rows: list[tuple[list[int], list[int]]] = []
    row_ids: list[int] = []
    row_labels: list[int] = []
    for example, prompt, answer in zip(examples, prompts, answers):
        ids = prompt + answer.ids + terminator
        if len(ids) > row_len:
            raise ValueError(
                f"example {example.prompt + example.answer!r} has {len(ids)} tokens, more than row_len={row_len}"
            )
        if len(row_ids) + len(ids) > row_len:
            rows.append((row_ids, row_labels))
            row_ids, row_labels = [], []
        row_ids += ids
        row_labels += [IGNORE] * len(prompt) + _token_labels(example, answer.offsets) + [IGNORE] * len(terminator)
    if row_ids:
        rows.append((row_ids, row_labels))
    tokens = np.full((len(rows), row_len), pad_id, np.uint16)
    labels = np.full((len(rows), row_len), IGNORE, np.int8)
    for r, (ids, labs) in enumerate(rows):
        tokens[r, : len(ids)] = ids
        labels[r, : len(labs)] = labs
    return tokens, labels
