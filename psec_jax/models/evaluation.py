"""The LM's final evaluations beyond the validation split: held-out distributions meant to be harder
(whether they are is measured: their loss beside the validation loss) and the per-token outputs that
difficulty analyses read.

- `heldout_sets`: text the models never trained on in a form they never trained on: "long", windows of
  twice the training length from the validation split (positions past the trained length), and
  "other", windows of the training length from the `other` split (prose and markup, not Python source:
  `text.TextData.other`).
- `token_set`: evenly spaced validation text windows whose per-position outputs (`train.token_outputs`:
  each target's NLL, each routed token's expert count per layer) are saved per stage in `tokens.npz`,
  with the input token ids and each position's window, for `psec_jax.models.difficulty`.

Everything is a pure function of the built data and the config, so every stage (and every seed) is
evaluated on the same positions: per-token comparisons between models are paired.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from psec_jax import progress, runs
from psec_jax.models import members, pipeline, text
from psec_jax.parallel import distributed

ROWS_PER_BATCH = 32
HELDOUT = ("long", "other")


def _text_windows(tokens: np.ndarray, seq_len: int, rows: int) -> tuple[pipeline.Batch, np.ndarray] | None:
    """`pipeline.text_windows` in batches of ROWS_PER_BATCH and its text mask [N, R] (all True)."""
    batch = pipeline.text_windows(np.asarray(tokens), seq_len, rows, ROWS_PER_BATCH, text.PAD_ID)
    return None if batch is None else (batch, np.ones(batch.inputs.shape[:2], bool))


def heldout_sets(data: text.TextData, seq_len: int, rows: int) -> dict[str, tuple[pipeline.Batch, np.ndarray]]:
    """{"long": validation text at 2 x seq_len, "other": the other-text split at seq_len}: each (Batch
    [N, R, T], text mask [N, R]) of at most `rows` windows; a set with too little text is left out."""
    sets = {"long": _text_windows(data.val, 2 * seq_len, rows), "other": _text_windows(data.other, seq_len, rows)}
    return {k: v for k, v in sets.items() if v is not None}


def token_set(data: text.TextData, seq_len: int, rows: int) -> pipeline.Batch:
    """The validation text windows (Batch [N, R, T], at most `rows` rows) whose per-position outputs
    `final_tokens` saves."""
    out = _text_windows(data.val, seq_len, rows)
    if out is None:
        raise ValueError(f"the val split has no window of {seq_len + 1} tokens")
    return out[0]


def _summary(metrics: dict[str, Any], i: int) -> dict[str, Any]:
    keys = ("val_loss", "val_loss_se", "val_experts", "val_experts_per_layer")
    return runs.to_jsonable({k: metrics[k][i] for k in keys})


def final_extras(
    program: members.Program,
    states: Any,
    stage_members: tuple[str, ...],
    ps: tuple[float, ...],
    sets: dict[str, tuple[pipeline.Batch, np.ndarray]],
    tokens: pipeline.Batch,
    directory: Path,
    step: int,
) -> dict[str, dict]:
    """Every member on each held-out set ({member: {set: {val_loss, val_loss_se, val_experts,
    val_experts_per_layer}}}, cached in `directory`/heldout_eval.json for `step`) and its per-position
    outputs on `tokens` (`directory`/tokens.npz: nll [M, N, R, T] float32, experts [M, G, N, R, T]
    uint8, inputs and weights [N, R, T], members [M], step)."""
    path = directory / "heldout_eval.json"
    if path.is_file():
        saved = json.loads(path.read_text())
        # (its keys come back sorted as strings: seed10 before seed2)
        if saved.get("step") == step and sorted(saved["members"]) == sorted(stage_members):
            if (directory / "tokens.npz").is_file():
                with np.load(directory / "tokens.npz") as z:
                    if list(z["members"]) == list(stage_members) and int(z["step"]) == step:
                        return {m: saved["members"][m] for m in stage_members}
    p = jnp.asarray(ps, jnp.float32)
    out: dict[str, dict] = {m: {} for m in stage_members}
    with progress.phase(f"lm_moe {directory.name}: held-out evaluation", disable=not distributed.is_main()):
        for name, (batch, rows) in sets.items():
            metrics = distributed.to_host(
                program.evaluate(states, jax.tree.map(jnp.asarray, batch), jnp.asarray(rows), p)
            )
            for i, m in enumerate(stage_members):
                out[m][name] = _summary(metrics, i)
        per_token = distributed.to_host(program.tokens(states, jax.tree.map(jnp.asarray, tokens), p))
    if distributed.is_main():
        arrays = {
            "nll": np.asarray(per_token["nll"], np.float32),
            "experts": np.asarray(per_token["experts"], np.uint8),
            "inputs": np.asarray(tokens.inputs, np.int32),
            "weights": np.asarray(tokens.weights, np.float32),
            "members": np.asarray(stage_members),
            "step": np.asarray(step),
        }
        tmp = directory / "tokens.tmp.npz"
        np.savez_compressed(tmp, **arrays)
        tmp.replace(directory / "tokens.npz")
        runs.write_json_atomic(path, {"step": step, "members": out})
    return out
