"""The LM experiment (`psec-jax lm_moe`): top-1 vs top-2 vs top-p MoE language models at equal steps on equal data.

Stages (each its own workdir under `stages/`, resumable, skipped once finished): one per router in
`train.routers`, whose members are `train.seeds` initialisations, and `top_p_sweep`, whose members are
the thresholds of `train.sweep_p`. A stage's members run as ONE compiled program (`lax.map` over the
members, or `vmap`); the threshold p is a traced scalar. Every chunk of `train.log_every` steps ends
with a validation pass (held-out stdlib text and task rows). At the end `results.{json,md,png}` are
written into the workdir (see `psec_jax.models.report`).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from psec_jax import config_check as cc
from psec_jax import loop, parallel, prng, progress, runs
from psec_jax.config_check import UsageError
from psec_jax.models import compare, comparison_md, evaluation, members, pipeline, report, sources, tasks, text
from psec_jax.models import train as lm_train
from psec_jax.models import transformer as tf
from psec_jax.moe import BACKENDS
from psec_jax.parallel import distributed

# "member": each member draws its own batches from its seed (stage members with equal seeds, across
# stages, see equal data: paired arms); "shared": every member sees the one stream of config.seed
DATA_ORDERS = ("member", "shared")


class Stage(NamedTuple):
    name: str  # workdir stages/<name>
    router: str  # "top1", "top2" or "top_p"
    members: tuple[str, ...]  # metric-name suffix of each member
    seeds: tuple[int, ...]  # [M] member initialisation seeds
    ps: tuple[float, ...]  # [M] top-p thresholds (unused by top-k)


def stages(config: ml_collections.ConfigDict) -> list[Stage]:
    """The stages the config asks for, in the order they run: one per router of `train.routers`, one
    per extra top-p threshold of `train.arm_p` (named `top_p<p>`, every seed), then the sweep."""
    t, n = config.train, config.train.seeds
    seeds, names = tuple(range(n)), tuple(f"seed{i}" for i in range(n))
    out = [Stage(r, r, names, seeds, (config.router.p,) * n) for r in t.routers]
    out += [Stage(f"top_p{p:g}", "top_p", names, seeds, (p,) * n) for p in t.arm_p]
    if t.sweep_p:
        out.append(
            Stage("top_p_sweep", "top_p", tuple(f"p{p:g}" for p in t.sweep_p), (0,) * len(t.sweep_p), tuple(t.sweep_p))
        )
    return out


def check_config(config: ml_collections.ConfigDict) -> None:
    """ConfigError (one line) for values that cannot train; run before anything is compiled."""
    cc.positive_int(
        config,
        "data.vocab_size",
        "data.seq_len",
        "data.batch_size",
        "data.num_task_examples",
        "data.num_val_task_examples",
        "data.val_corpus_rows",
        "data.heldout_rows",
        "data.token_rows",
        "model.d_model",
        "model.num_layers",
        "model.num_heads",
        "model.num_experts",
        "model.d_ff_expert",
        "model.moe_every",
        "train.seeds",
        "train.max_to_keep",
    )
    cc.non_negative(
        config,
        "data.task_rows",
        "data.val_task_rows",
        "data.max_corpus_bytes",
        "data.final_val_rows",
        "model.max_k",
        "router.load_balance_weight",
        "router.dynamic_weight",
        "router.z_weight",
        "optim.weight_decay",
        "optim.warmup_steps",
        "optim.final_lr_fraction",
    )
    cc.positive(config, "optim.learning_rate", "optim.clip_norm", "model.rope_base")
    cc.in_range(config, "router.p", 0.0, 1.0, low_open=True)
    cc.in_range(config, "data.vocab_size", 258, 65536)
    cc.in_range(config, "optim.b1", 0.0, 0.999999)
    cc.in_range(config, "optim.b2", 0.0, 0.999999)
    cc.non_negative(config, "seed", "data.seed")
    cc.one_of(config, "data.source", sources.SOURCES)
    cc.one_of(config, "model.backend", tf.BACKENDS)
    cc.one_of(config, "model.dtype", tf.DTYPES)
    cc.multiple_of(config, "train.num_steps", "train.log_every")
    cc.multiple_of(config, "train.checkpoint_every", "train.log_every")
    cc.one_of(config, "train.members", ("map", "vmap"))
    cc.positive_int(config, "train.microbatches")
    if config.data.batch_size % config.train.microbatches:
        raise cc.ConfigError(
            f"train.microbatches={config.train.microbatches} must divide data.batch_size={config.data.batch_size}"
        )
    if config.data.task_rows > config.data.batch_size:
        raise cc.ConfigError(f"data.task_rows={config.data.task_rows} exceeds data.batch_size={config.data.batch_size}")
    if not config.train.routers or set(config.train.routers) - set(lm_train.stage_names()):
        raise cc.ConfigError(
            f"train.routers={tuple(config.train.routers)} must be a non-empty subset of {lm_train.stage_names()}"
        )
    if len(set(config.train.routers)) != len(config.train.routers):
        raise cc.ConfigError(f"train.routers={tuple(config.train.routers)} repeats a router")
    cc.one_of(config, "train.data_order", DATA_ORDERS)
    for name in ("arm_p", "sweep_p"):
        ps = tuple(config.train[name])
        if any(not 0.0 < p <= 1.0 for p in ps) or len({f"{p:g}" for p in ps}) != len(ps):
            raise cc.ConfigError(f"train.{name}={ps}: thresholds must be in (0, 1] and distinct")
    if any(f"{p:g}" == f"{config.router.p:g}" for p in config.train.arm_p) and "top_p" in config.train.routers:
        raise cc.ConfigError(f"train.arm_p={tuple(config.train.arm_p)} repeats router.p={config.router.p} of top_p")
    if config.optim.warmup_steps >= config.train.num_steps:
        raise cc.ConfigError(
            f"optim.warmup_steps={config.optim.warmup_steps} must be below train.num_steps={config.train.num_steps}"
        )
    try:
        for router in config.train.routers:
            lm_train.model_spec(config, router)
    except ValueError as e:
        raise cc.ConfigError(f"model: {e}") from None
    # a chunk's batches are built on the host at once: int32 inputs and targets, float32 weights, int8 labels
    chunk_bytes = config.train.log_every * config.data.batch_size * config.data.seq_len * 13
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if chunk_bytes > memory:
        raise cc.ConfigError(
            f"train.log_every={config.train.log_every} steps of data.batch_size="
            f"{config.data.batch_size} rows of data.seq_len={config.data.seq_len} tokens make "
            f"{chunk_bytes / 2**30:.0f} GiB of batches per chunk, more than this machine's "
            f"{memory / 2**30:.0f} GiB of memory: lower train.log_every"
        )
    check_data_sizes(config)
    check_mesh(config)


def check_mesh(config: ml_collections.ConfigDict, num_devices: int | None = None) -> None:
    """ConfigError (one line) for a `config.mesh` that cannot be laid out: sizes positive or -1 (at most
    one), a back-end that needs a mesh only with a sharded one, and with `num_devices` given (the run knows
    them once the backend is up) a product that uses exactly those devices, or, without model axes, a
    `mesh.data` that divides every stage's member count."""
    for axis in parallel.AXES:
        size = config.mesh[axis]
        if size != -1 and size < 1:
            raise cc.ConfigError(f"mesh.{axis}={size} must be a positive int or -1 (the devices the others leave)")
    sharded = members.is_sharded(config.mesh)
    if BACKENDS[config.model.backend].mesh and not sharded:
        raise cc.ConfigError(
            f"model.backend={config.model.backend!r} needs a mesh with an expert axis: set config.mesh.expert"
        )
    if num_devices is None:
        return
    if sharded:
        try:
            parallel.mesh_shape(config.mesh, num_devices)
        except ValueError as e:
            raise cc.ConfigError(f"config.mesh: {e}") from None
    elif config.mesh.data != -1:
        if config.mesh.data > num_devices:
            raise cc.ConfigError(f"mesh.data={config.mesh.data}: only {num_devices} devices are available")
        for stage in stages(config):
            if len(stage.members) % config.mesh.data:
                raise cc.ConfigError(
                    f"mesh.data={config.mesh.data} does not divide stage {stage.name}'s {len(stage.members)} members"
                )


def check_devices(config: ml_collections.ConfigDict) -> None:
    """`check_mesh` against the devices of the started backend (the CLI runs it before the workdir is
    touched)."""
    check_mesh(config, jax.device_count())


def check_data_sizes(config: ml_collections.ConfigDict) -> None:
    """ConfigError (one line) for `config.data` sizes the corpus and task mixture cannot supply, from the
    stdlib's file sizes alone (nothing is read or tokenized): a token is at least one byte, so a split of
    N bytes in F files has at most N + F - 1 tokens, and a task example of b bytes at most b tokens."""
    d = config.data
    if d.seq_len + 1 < tasks.MAX_EXAMPLE_BYTES:
        raise cc.ConfigError(
            f"data.seq_len={d.seq_len} must be >= {tasks.MAX_EXAMPLE_BYTES - 1}: task rows of "
            f"seq_len + 1 tokens must hold the longest task example ({tasks.MAX_EXAMPLE_BYTES} "
            f"bytes) whatever the vocabulary"
        )
    if d.val_task_rows > d.num_val_task_examples:
        raise cc.ConfigError(
            f"data.val_task_rows={d.val_task_rows} exceeds data.num_val_task_examples="
            f"{d.num_val_task_examples} (each row holds at least one example)"
        )
    try:
        minimum = text.min_corpus_bytes(d.source)
    except sources.MissingDistributionError as e:  # the message names the distribution and how to install it
        raise cc.ConfigError(f"data.source={d.source!r}: {e}") from None
    if 0 < d.max_corpus_bytes < minimum:
        raise cc.ConfigError(
            f"data.max_corpus_bytes={d.max_corpus_bytes} leaves a split of the {d.source} corpus "
            f"without a file for the tokenizer: use >= {minimum} (0: the whole corpus)"
        )
    sizes, t1, cap = text.corpus_sizes(d.max_corpus_bytes or None, d.source), d.seq_len + 1, _corpus_cap(config)
    most = {split: size + files - 1 for split, (files, size) in sizes.items()}  # tokens
    why = lambda split: f"at most {most[split]} tokens ({sizes[split][1]} bytes in {sizes[split][0]} file(s))"
    if most["train"] < t1:
        raise cc.ConfigError(
            f"a training window of data.seq_len + 1 = {t1} tokens is longer than the train split "
            f"of {cap} can be: {why('train')}"
        )
    if most["val"] < d.val_corpus_rows * t1:
        raise cc.ConfigError(
            f"data.val_corpus_rows={d.val_corpus_rows} windows of data.seq_len + 1 = {t1} tokens "
            f"need {d.val_corpus_rows * t1}, more than the val split of {cap} can have: {why('val')}"
        )


def check_data(config: ml_collections.ConfigDict, data: text.TextData) -> None:
    """UsageError (one line) when the built data has fewer tokens or task rows than `config.data` asks
    for (`check_data_sizes` bounds them by bytes before the build; BPE merges leave fewer tokens)."""
    d, t1, cap = config.data, config.data.seq_len + 1, _corpus_cap(config)
    if data.train.size < t1:
        raise UsageError(
            f"lm_moe: a training window of data.seq_len + 1 = {t1} tokens is longer than the train "
            f"split of {cap} ({data.train.size} tokens in {data.path})"
        )
    if data.val.size < d.val_corpus_rows * t1:
        raise UsageError(
            f"lm_moe: data.val_corpus_rows={d.val_corpus_rows} windows of data.seq_len + 1 = {t1} "
            f"tokens need {d.val_corpus_rows * t1}, more than the val split of {cap} has "
            f"({data.val.size} tokens in {data.path})"
        )
    if data.tasks_val_tokens.shape[0] < d.val_task_rows:
        raise UsageError(
            f"lm_moe: data.val_task_rows={d.val_task_rows} exceeds the {data.tasks_val_tokens.shape[0]} "
            f"rows that data.num_val_task_examples={d.num_val_task_examples} fill ({data.path})"
        )


def _corpus_cap(config: ml_collections.ConfigDict) -> str:
    cap = config.data.max_corpus_bytes
    return f"data.max_corpus_bytes={cap}" + ("" if cap else " (the whole corpus)")


def load_data(config: ml_collections.ConfigDict) -> text.TextData:
    """The tokenized corpus and task mixture of `config.data`, built into the data cache on first use."""
    d = config.data
    get = lambda: text.get(
        vocab_size=d.vocab_size,
        max_corpus_bytes=d.max_corpus_bytes or None,
        seq_len=d.seq_len,
        num_task_examples=d.num_task_examples,
        num_val_task_examples=d.num_val_task_examples,
        seed=d.seed,
        source=d.source,
    )
    if jax.process_count() == 1:
        return get()
    if distributed.is_main():  # one process builds the cache, the others wait and read it
        data = get()
    multihost_utils.sync_global_devices("lm_moe data built")
    return data if distributed.is_main() else get()


def chunk_validation(config: ml_collections.ConfigDict, data: text.TextData) -> pipeline.Batch:
    """The small fixed validation Batch [val_corpus_rows + val_task_rows, T] (text rows first) that ends
    every training chunk."""
    d = config.data
    rows = d.val_corpus_rows + d.val_task_rows
    val = pipeline.validation(data, rows, d.seq_len, d.val_corpus_rows, d.val_task_rows)
    return jax.tree.map(lambda a: jnp.asarray(a[0]), val)


def full_validation(
    data: text.TextData, seq_len: int, rows_per_batch: int = 64, max_corpus_rows: int = 0
) -> tuple[pipeline.Batch, np.ndarray, float]:
    """The whole validation split (every task row and non-overlapping text window, at most
    `max_corpus_rows` of them when > 0, evenly spaced; less the rows past the last whole batch: text
    windows while more of them remain, else task rows) as Batch [N, rows_per_batch, T] (one batch of
    every row where there are fewer), its text-row mask [N, rows_per_batch], and the unigram baseline
    (train unigram, add-one) on exactly its text targets."""
    corpus_rows, task_rows = pipeline.max_rows(data, seq_len)
    if max_corpus_rows > 0:
        corpus_rows = min(corpus_rows, max_corpus_rows)
    rows_per_batch = min(rows_per_batch, corpus_rows + task_rows)
    extra = (corpus_rows + task_rows) % rows_per_batch  # rows past the last whole batch
    if corpus_rows > extra:
        corpus_rows -= extra
    else:
        task_rows -= extra
    full = pipeline.validation(data, rows_per_batch, seq_len, corpus_rows, task_rows)
    rows = pipeline.validation_text_rows(corpus_rows, task_rows, rows_per_batch)
    unigram = text.unigram_loss(data.train, full.targets[rows].reshape(-1), data.vocab_size)
    return full, rows, unigram


def _flatten(metrics: dict[str, Any], members: tuple[str, ...], num_layers: int) -> dict[str, Any]:
    """{name: [M, ...]} -> {"name/member[/index]": scalar}: one logged scalar per member, layer and task label."""
    labels = [n.replace("/", "_") for n in tasks.label_names()]
    out = {}
    for name, value in metrics.items():
        for i, member in enumerate(members):
            v = value[i]
            if v.ndim == 0:
                out[f"{name}/{member}"] = v
            elif name.endswith("per_layer") and v.ndim == 1:
                out.update({f"{name}/{member}/layer{g}": v[g] for g in range(num_layers)})
            elif v.ndim == 1:
                out.update({f"{name}/{member}/{labels[c]}": v[c] for c in range(len(labels))})
            else:  # [G, NUM_LABELS]
                out.update(
                    {
                        f"{name}/{member}/layer{g}/{labels[c]}": v[g, c]
                        for g in range(v.shape[0])
                        for c in range(len(labels))
                    }
                )
    return out


# What a rerun in the same workdir may change: it adds (or drops) stages, every stage keeps its own config;
# and the mesh (checkpoints restore into the new layout, the numbers stay those of one device)
RESUME_MAY_CHANGE = (
    "train.routers",
    "train.seeds",
    "train.sweep_p",
    "train.arm_p",
    "mesh.data",
    "mesh.fsdp",
    "mesh.expert",
    "mesh.model",
)


def stage_config(config: ml_collections.ConfigDict, stage: Stage, data: text.TextData) -> ml_collections.ConfigDict:
    """What a stage's checkpoints are checked against on resume: the config without the other stages'
    fields (so adding a router or a threshold keeps finished stages), this stage's members, and the
    identity of the data (a different Python build or tokenizer gives other tokens: refuse to resume)."""
    c = config.to_dict()
    c["train"] = {k: v for k, v in c["train"].items() if "train." + k not in RESUME_MAY_CHANGE}
    c.pop("mesh")
    c["stage"] = {
        "name": stage.name,
        "router": stage.router,
        "members": stage.members,
        "seeds": stage.seeds,
        "ps": stage.ps,
    }
    sha = data.meta["sha256"]
    c["data_identity"] = {
        "cache": data.path.name,
        "train_npy": sha["train.npy"],
        "tokenizer": sha["tokenizer.json"],
        "tasks_train": sha["tasks_train_tokens.npy"],
        "numpy": np.__version__,
    }
    return ml_collections.ConfigDict(c)


def final_evaluation(
    program: members.Program,
    states: lm_train.TrainState,
    stage: Stage,
    full: pipeline.Batch,
    text_rows: np.ndarray,
    path: Path,
    step: int,
) -> dict[str, dict]:
    """Every member evaluated on the whole validation split (cached in `path` for `step`):
    {member: eval_metrics as lists}."""
    if path.is_file():
        saved = json.loads(path.read_text())  # (its keys come back sorted as strings: seed10 before seed2)
        if saved.get("step") == step and sorted(saved["members"]) == sorted(stage.members):
            return {m: saved["members"][m] for m in stage.members}
    with progress.phase(f"lm_moe {stage.name}: final evaluation", disable=not distributed.is_main()):
        metrics = distributed.to_host(
            program.evaluate(
                states, jax.tree.map(jnp.asarray, full), jnp.asarray(text_rows), jnp.asarray(stage.ps, jnp.float32)
            )
        )
    members_ = {m: runs.to_jsonable({k: v[i] for k, v in metrics.items()}) for i, m in enumerate(stage.members)}
    if distributed.is_main():
        runs.write_json_atomic(path, {"step": step, "members": members_})
    return members_


def run_stage(
    config: ml_collections.ConfigDict,
    stage: Stage,
    data: text.TextData,
    batches: pipeline.Batches,
    val: pipeline.Batch,
    workdir: Path,
) -> tuple[list[dict[str, Any]], lm_train.TrainState, members.Program]:
    """Trains one stage's members (resuming from its checkpoints) in the layout `config.mesh` asks for
    (`psec_jax.models.members`); returns its metric records, the final states and the stage's Program."""
    trainer = lm_train.make_train(config, stage.router, validation=val)
    root = prng.stream(jax.random.key(config.seed), "init")
    keys = jnp.stack([jax.random.fold_in(root, s) for s in stage.seeds])
    ps = jnp.asarray(stage.ps, jnp.float32)
    own = config.train.data_order == "member"
    program = members.program(
        trainer, config.mesh, config.train.members, config.data.batch_size, len(stage.members), own
    )
    steps = config.train.log_every
    d = config.data
    streams = [pipeline.Batches(data, d.batch_size, d.seq_len, d.task_rows, config.seed, s) for s in stage.seeds]

    def chunk(states: lm_train.TrainState) -> tuple[lm_train.TrainState, dict]:
        start = int(distributed.to_host(states.step)[0])
        if own:  # [M, S, B, T]: member i's own order, the same in every stage (paired arms)
            b = jax.tree.map(lambda *x: np.stack(x), *(m.chunk(start, steps) for m in streams))
        else:
            b = batches.chunk(start, steps)
        states, metrics = program.chunk(states, b, ps)
        return states, _flatten(distributed.to_host(metrics), stage.members, trainer.spec.num_groups)

    states, records = loop.run_chunks(
        chunk,
        program.init(keys),
        num_chunks=config.train.num_steps // steps,
        steps_per_chunk=steps,
        workdir=workdir / "stages" / stage.name,
        config=stage_config(config, stage, data),
        checkpoint_every_chunks=config.train.checkpoint_every // steps,
        max_to_keep=config.train.max_to_keep,
        desc=f"lm_moe {stage.name}",
        tensorboard=True,
    )
    return records, states, program


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains every stage in `workdir` (resuming), writes results.{json,md,png} and returns the summary."""
    check_config(config)
    counts = tf.parameter_counts(lm_train.model_spec(config, "top1"))
    say = print if distributed.is_main() else (lambda *a, **k: None)
    say(
        f"model: {counts['total'] / 1e6:.2f}M parameters, {counts['active_top1'] / 1e6:.2f}M active with one "
        f"expert per layer (experts {counts['experts'] / 1e6:.2f}M)",
        flush=True,
    )
    if config.dry_run:
        return counts
    started, commit = time.perf_counter(), runs.git_commit()  # the code that runs, read before it does
    check_devices(config)
    if members.is_sharded(config.mesh):
        shape = parallel.mesh_shape(config.mesh, jax.device_count())
        say(
            f"mesh: {' x '.join(f'{a} {n}' for a, n in shape.items())}; members one after another, each sharded",
            flush=True,
        )
    data = load_data(config)
    check_data(config, data)
    d = config.data
    batches = pipeline.Batches(data, d.batch_size, d.seq_len, d.task_rows, config.seed)
    val = chunk_validation(config, data)
    full, text_rows, unigram = full_validation(data, d.seq_len, max_corpus_rows=d.final_val_rows)
    heldout = evaluation.heldout_sets(data, d.seq_len, d.heldout_rows)
    token_rows = evaluation.token_set(data, d.seq_len, d.token_rows)
    histories = {}
    for stage in stages(config):
        records, states, program = run_stage(config, stage, data, batches, val, Path(workdir))
        directory = Path(workdir) / "stages" / stage.name
        final = final_evaluation(
            program, states, stage, full, text_rows, directory / "final_eval.json", config.train.num_steps
        )
        extras = evaluation.final_extras(
            program, states, stage.members, stage.ps, heldout, token_rows, directory, config.train.num_steps
        )
        final = {m: {**final[m], "heldout": extras[m]} for m in stage.members}
        histories[stage.name] = (stage, records, final)
    results = report.summarize(
        config, histories, data.meta, counts, unigram=unigram, seconds=time.perf_counter() - started, commit=commit
    )
    if distributed.is_main():  # in a multi-process run every process has the results, process 0 writes them
        print(report.write(workdir, results))  # first: a failing comparison must not lose the run's results
        try:
            results["comparison"] = compare.compare(Path(workdir), results, config)  # paired arms (compare.py)
            table = comparison_md.markdown(results["comparison"])
        except Exception as e:  # every stage and result is on disk: one line, exit 1
            (Path(workdir) / "comparison.md").unlink(missing_ok=True)  # an earlier run's would not match
            raise compare.ComparisonError(
                f"the paired comparison failed ({runs.one_line(e)}); results.json is written and every stage "
                f"kept: rerun the same command to compare again"
            ) from e
        report.write(workdir, results)  # again, now with the comparison in results.json
        runs.replace_atomic(Path(workdir) / "comparison.md", lambda tmp: tmp.write_text(table, encoding="utf-8"))
    return results["summary"]
