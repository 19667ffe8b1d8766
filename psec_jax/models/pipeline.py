"""Language-model batches built on the host from memory-mapped token arrays (`text.TextData`).

A training batch of B rows mixes `task_rows` random rows of the packed train task arrays (first)
with B - task_rows windows of T + 1 tokens at uniform random offsets of train.npy. The rows and
offsets of step s are drawn from `np.random.default_rng([seed, s])` alone (a member's own stream:
`[seed, member, s, 1]`), so `batch(s)` is a pure function of (seed, member, s): a run resumed at any
step sees exactly the stream it would have seen, and `chunk` (steps stacked for a scanned training
loop) equals stacking `batch`. Only the needed windows are read from the memory maps; the corpus is
never copied whole, nor put on the device.

Rows of T + 1 tokens become inputs `row[:-1]` and targets `row[1:]`; a target's weight is 0 when
it is padding, and its label is the task label of the target token (-1 for corpus, prompt, an
answer's terminating newline, and pad).

The fixed evaluation set is `validation`; `validation_text_rows` says which of its rows are corpus
windows, and `max_rows` how many corpus windows and task rows the val split can supply.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from psec_jax.models.tasks import IGNORE
from psec_jax.models.text import TextData


class Batch(NamedTuple):
    """Next-token prediction rows; a leading [S] axis is added by `chunk` and `validation`."""

    inputs: np.ndarray  # [B, T] int32 token ids
    targets: np.ndarray  # [B, T] int32, inputs shifted left by one
    weights: np.ndarray  # [B, T] float32, 0 where the target is padding, else 1
    labels: np.ndarray  # [B, T] int8, task label of the target token (tasks.label_names), -1 if none


def _split(rows: np.ndarray, labels: np.ndarray, pad_id: int) -> Batch:
    """rows, labels [..., T + 1] -> Batch of [..., T]."""
    targets = rows[..., 1:].astype(np.int32)
    return Batch(
        rows[..., :-1].astype(np.int32),
        targets,
        (targets != pad_id).astype(np.float32),
        np.ascontiguousarray(labels[..., 1:]),
    )


def _with_tasks(
    corpus: np.ndarray,
    task_tokens: np.ndarray,
    task_labels: np.ndarray,
    rows: np.ndarray,
    axis: int,
    tasks_first: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Corpus windows [..., n, T + 1] joined along `axis` with the task rows `rows` [..., m]:
    (tokens, labels) [..., n + m, T + 1], corpus labels IGNORE."""
    labels = np.full(corpus.shape, IGNORE, np.int8)
    if rows.size == 0:  # the task rows may be packed to another length
        return corpus, labels
    tokens, labels = [task_tokens[rows], corpus], [task_labels[rows], labels]
    if not tasks_first:
        tokens, labels = tokens[::-1], labels[::-1]
    return np.concatenate(tokens, axis), np.concatenate(labels, axis)


def _task_row_len(data: TextData) -> int:
    return data.tasks_train_tokens.shape[1]


class Batches:
    """The training stream: `batch(step)` -> Batch [B, T], `chunk(start, S)` -> Batch [S, B, T]."""

    def __init__(
        self, data: TextData, batch_size: int, seq_len: int, task_rows: int, seed: int, member: int | None = None
    ):
        """Args:
        data: built text data (`text.get`).
        batch_size: rows B per step.
        seq_len: tokens T per row; must equal the build's seq_len when task_rows > 0.
        task_rows: rows per step taken from the packed task arrays, in [0, batch_size].
        seed: stream seed (non-negative); with the step it fixes every draw.
        member: a member's own stream (non-negative; e.g. its initialisation seed), so that members differ
          in data order as well as initialisation; None: the stream every member shares.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= task_rows <= batch_size:
            raise ValueError(f"task_rows must be in [0, batch_size={batch_size}], got {task_rows}")
        if seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {seq_len}")
        if seq_len + 1 > data.train.size:
            raise ValueError(f"seq_len={seq_len} is too long for the train split ({data.train.size} tokens)")
        if task_rows and seq_len + 1 != _task_row_len(data):
            raise ValueError(
                f"seq_len={seq_len} must equal the seq_len the task rows were packed for "
                f"({_task_row_len(data) - 1}) when task_rows > 0"
            )
        if task_rows and data.tasks_train_tokens.shape[0] == 0:
            raise ValueError("task_rows > 0 but the data has no train task rows")
        if seed < 0 or member is not None and member < 0:
            raise ValueError(f"seed and member must be >= 0, got {seed} and {member}")
        self.data, self.batch_size, self.seq_len, self.task_rows, self.seed = data, batch_size, seq_len, task_rows, seed
        self.member = member

    def draws(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """(task row indices [task_rows], corpus window offsets [batch_size - task_rows]) of a step."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        # the shared order stays [seed, step]; a member's ends in 1, so no zero-padding makes it equal another's
        rng = np.random.default_rng([self.seed, step] if self.member is None else [self.seed, self.member, step, 1])
        rows = (
            rng.integers(0, self.data.tasks_train_tokens.shape[0], self.task_rows)
            if self.task_rows
            else np.zeros((0,), np.int64)
        )
        offsets = rng.integers(0, self.data.train.size - self.seq_len, self.batch_size - self.task_rows)
        return rows, offsets

    def chunk(self, start_step: int, num_steps: int) -> Batch:
        """Steps start_step .. start_step + num_steps - 1 stacked: Batch of [num_steps, B, T]."""
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        draws = [self.draws(step) for step in range(start_step, start_step + num_steps)]
        rows = np.stack([r for r, _ in draws])  # [S, task_rows]
        offsets = np.stack([o for _, o in draws])  # [S, B - task_rows]
        corpus = self.data.train[offsets[..., None] + np.arange(self.seq_len + 1)]  # [S, B - task_rows, T + 1]
        tokens, labels = _with_tasks(corpus, self.data.tasks_train_tokens, self.data.tasks_train_labels, rows, 1)
        return _split(tokens, labels, self.data.pad_id)

    def batch(self, step: int) -> Batch:
        """The batch of one step: Batch of [B, T], a pure function of (seed, step)."""
        return Batch(*(x[0] for x in self.chunk(step, 1)))


def _check_validation_rows(num_corpus_rows: int, num_task_rows: int, batch_size_rows: int) -> int:
    if batch_size_rows < 1:
        raise ValueError(f"batch_size_rows must be >= 1, got {batch_size_rows}")
    if num_corpus_rows < 0 or num_task_rows < 0:
        raise ValueError(f"num_corpus_rows and num_task_rows must be >= 0, got {num_corpus_rows}, {num_task_rows}")
    total = num_corpus_rows + num_task_rows
    if total == 0 or total % batch_size_rows:
        raise ValueError(
            f"num_corpus_rows + num_task_rows = {total} must be a positive multiple of "
            f"batch_size_rows={batch_size_rows}"
        )
    return total


def max_rows(data: TextData, seq_len: int) -> tuple[int, int]:
    """(corpus, task) rows that `validation` can take at most for this seq_len: the non-overlapping
    windows of seq_len + 1 tokens in val.npy, and the val task rows (0 unless the task rows were
    packed for this seq_len). Pass them, made a multiple of the batch size, to evaluate on the
    whole val split."""
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    t1 = seq_len + 1
    return data.val.size // t1, data.tasks_val_tokens.shape[0] if t1 == _task_row_len(data) else 0


def validation_text_rows(num_corpus_rows: int, num_task_rows: int, batch_size_rows: int) -> np.ndarray:
    """[N / batch_size_rows, batch_size_rows] bool: True where the row of `validation` with these
    arguments is a corpus window, False where it is a task row (use it rather than the order)."""
    total = _check_validation_rows(num_corpus_rows, num_task_rows, batch_size_rows)
    return (np.arange(total) < num_corpus_rows).reshape(total // batch_size_rows, batch_size_rows)


def _spread_windows(tokens: np.ndarray, n: int, t1: int) -> np.ndarray:
    """[n, t1] windows of tokens [N] starting at multiples of N // n (>= t1 when n * t1 <= N, so they never
    overlap), evenly spread over the whole array."""
    stride = tokens.size // n if n else 0
    return np.asarray(tokens[(np.arange(n) * stride)[:, None] + np.arange(t1)])


def validation(data: TextData, batch_size_rows: int, seq_len: int, num_corpus_rows: int, num_task_rows: int) -> Batch:
    """The fixed evaluation set, split into batches: Batch of [N / batch_size_rows, batch_size_rows, T].

    Rows are, in order, `num_corpus_rows` non-overlapping windows of T + 1 tokens evenly spaced over
    val.npy, then the first `num_task_rows` rows of the val task arrays; N, their total, must be a
    multiple of `batch_size_rows` (so an evaluation can scan over the leading axis like `chunk`).
    `validation_text_rows` gives the same layout as a mask; `max_rows` the most rows available.
    """
    total = _check_validation_rows(num_corpus_rows, num_task_rows, batch_size_rows)
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    t1 = seq_len + 1
    if num_corpus_rows * t1 > data.val.size:
        raise ValueError(
            f"seq_len={seq_len} is too long for the val split: {num_corpus_rows} windows of "
            f"{t1} tokens need {num_corpus_rows * t1}, it has {data.val.size}"
        )
    if num_task_rows > data.tasks_val_tokens.shape[0]:
        raise ValueError(
            f"num_task_rows={num_task_rows} but the val task arrays have only {data.tasks_val_tokens.shape[0]} rows"
        )
    if num_task_rows and t1 != _task_row_len(data):
        raise ValueError(
            f"seq_len={seq_len} must equal the seq_len the task rows were packed for "
            f"({_task_row_len(data) - 1}) when num_task_rows > 0"
        )
    corpus = _spread_windows(data.val, num_corpus_rows, t1)
    tokens, labels = _with_tasks(
        corpus, data.tasks_val_tokens, data.tasks_val_labels, np.arange(num_task_rows), 0, tasks_first=False
    )
    shape = (total // batch_size_rows, batch_size_rows, t1)
    return _split(tokens.reshape(shape), labels.reshape(shape), data.pad_id)


def text_windows(tokens: np.ndarray, seq_len: int, max_rows: int, batch_size_rows: int, pad_id: int) -> Batch | None:
    """Evenly spaced, non-overlapping windows of seq_len + 1 tokens of `tokens` [N] (no task rows), as many
    whole batches of min(batch_size_rows, rows) rows as fit in `max_rows` rows: Batch [K, R, seq_len]
    with labels -1; None when not one window fits."""
    if seq_len < 1 or max_rows < 1 or batch_size_rows < 1:
        raise ValueError(
            f"seq_len, max_rows and batch_size_rows must be >= 1, got {seq_len}, {max_rows}, {batch_size_rows}"
        )
    t1 = seq_len + 1
    available = min(tokens.size // t1, max_rows)
    per_batch = min(batch_size_rows, available)
    if per_batch < 1:
        return None
    n = available // per_batch * per_batch
    rows = _spread_windows(tokens, n, t1).reshape(n // per_batch, per_batch, t1)
    return _split(rows, np.full(rows.shape, -1, np.int8), pad_id)
