"""Running a PSEC stage for several seeds at once (vmapped, chunked, checkpointed, resumable), and the
config checks every setting shares.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from psec_jax import loop, parallel, prng
from psec_jax.data.offline import OfflineData
from psec_jax.rl import train


def seed_keys(seed: int, num_seeds: int, name: str) -> jax.Array:
    """[num_seeds] keys of stage ``name``: seed s uses ``fold_in(key(seed + s), crc(name))``."""
    return jnp.stack([prng.stream(jax.random.key(seed + s), name) for s in range(num_seeds)])


def check_seed_axis(tree: Any, num_seeds: int, what: str) -> None:
    """Raises a ValueError naming ``what`` unless every leaf of ``tree`` has a leading [num_seeds] axis."""
    bad = sorted({x.shape for x in jax.tree.leaves(tree) if x.shape[:1] != (num_seeds,)})
    if bad:
        raise ValueError(f"{what}: every leaf needs a leading [num_seeds={num_seeds}] axis, got leaves of shape {bad}")


def repeat_seeds(tree: Any, n: int) -> Any:
    """A one-seed tree [1, ...] repeated to n seeds [n, ...] (a shared pi_0)."""
    return jax.tree.map(lambda x: jnp.repeat(x, n, axis=0), tree)


def run_stage(
    trainer: train.Trainer,
    keys: jax.Array,
    inputs: Any,
    data: OfflineData,
    *,
    workdir: str | os.PathLike,
    config: ml_collections.ConfigDict,
    desc: str,
    devices: int = -1,
    members: str = "vmap",
) -> tuple[train.StageState, list[dict]]:
    """Trains ``len(keys)`` seeds of one stage at once (vmapped), in jitted scan chunks with metrics,
    a progress bar and checkpoints in ``workdir`` (resumed if present). ``inputs``: the stage's inputs
    with a leading seed axis on every leaf. Returns the final state (leading seed axis) and records.
    ``config`` is what the checkpoints are checked against. The seeds are split over ``devices`` devices
    (`parallel.sweep`, e.g. ``config.mesh.data``; -1: as many as divide the seed count; a stage of fewer
    seeds, e.g. a shared pi_0's one, over as many of them as divide its count). ``members``: "vmap" (one
    batched program) or "map" (the seeds in turn, ``lax.map``: for stages whose step branches on data,
    e.g. a routed composer's dropless dispatch, which vmap would turn into every branch at once)."""
    check_seed_axis(inputs, keys.shape[0], f"run_stage({desc}) inputs")
    mesh = parallel.members_mesh(devices, keys.shape[0])
    # lax.map, not vmap, for init: the same values, but XLA compiles the vmapped initialisers of large
    # networks 3x slower on CPU (31 s vs 11 s for the full-network expand init)
    init = parallel.sweep(trainer.init, members="map", mesh=mesh)
    chunk = parallel.sweep(trainer.chunk, in_axes=(0, 0, None), mesh=mesh, members=members)
    state = init(keys, inputs)
    return loop.run_chunks(
        lambda s: chunk(s, inputs, data),
        state,
        num_chunks=trainer.num_chunks,
        steps_per_chunk=trainer.steps_per_chunk,
        workdir=workdir,
        config=config,
        desc=desc,
        resume_may_change=("mesh.data",),  # the seeds' devices: the results are the same
    )


def data_recipe(field: str, name: str):
    """The ``datasets.Recipe`` of dataset ``name``, given by ``config.<field>``; ValueError naming the field
    when it does not parse (a name only: nothing is generated)."""
    from psec_jax.data import datasets

    try:
        return datasets.parse(name)
    except ValueError as e:
        raise ValueError(f"config.{field}: {e}") from None


def check_common(config: ml_collections.ConfigDict, stages: tuple[str, ...], critic_fields: tuple[str, ...]) -> None:
    """ConfigError (one line) for values no PSEC setting can train with: seeds, evaluation, the protocol
    switches (obs_norm, expand.objective, compose.alpha_reg and its targets), the network, every training
    stage in ``stages`` and every critic config in ``critic_fields`` (dotted names). Runs before any data
    is loaded or anything compiled, so a bad compose stage fails in a second, not after pretraining."""
    from psec_jax import config_check as cc

    cc.positive_int(config, "num_seeds", "eval.episodes", "eval.candidates", "eval.episode_length")
    cc.non_negative(config, "eval.bootstrap_reps", "compose.alpha_reg")
    cc.one_of(config, "obs_norm", (True, False))
    if config.mesh.data != -1 and (config.mesh.data < 1 or config.num_seeds % config.mesh.data):
        raise cc.ConfigError(
            f"mesh.data={config.mesh.data} must be -1 or a positive divisor of num_seeds={config.num_seeds}"
        )
    cc.one_of(config, "expand.objective", train.OBJECTIVES)
    cc.one_of(config, "compose.alpha_reg_form", train.ALPHA_REG_FORMS)
    if len(config.compose.alpha_targets) != 2:
        raise cc.ConfigError(
            f"config field compose.alpha_targets must be (t0, t1), got {tuple(config.compose.alpha_targets)}"
        )
    cc.positive_int(
        config,
        *(
            f"network.{f}"
            for f in (
                "hidden",
                "ff",
                "num_blocks",
                "time_features",
                "time_hidden",
                "diffusion_steps",
                "lora_rank",
                "mlp_adapter_hidden",
            )
        ),
    )
    cc.in_range(config, "network.dropout", 0.0, 0.99)
    cc.positive(config, "network.lora_alpha")
    for stage in stages:
        cc.multiple_of(config, f"{stage}.steps", f"{stage}.log_every")
        cc.positive_int(config, f"{stage}.batch_size")
        cc.positive(config, f"{stage}.learning_rate")
        for field, check in (
            ("weight_decay", cc.non_negative),
            ("hidden", cc.positive_int),
            ("ema", lambda c, f: cc.in_range(c, f, 0.0, 1.0, low_open=True)),
        ):
            if field in config[stage]:
                check(config, f"{stage}.{field}")
    for critic in critic_fields:
        cc.one_of(config, f"{critic}.kind", ("reward", "cost"))
        cc.positive_int(config, f"{critic}.hidden")
        cc.positive(config, f"{critic}.learning_rate", f"{critic}.max_weight")
        cc.in_range(config, f"{critic}.gamma", 0.0, 1.0)
        cc.in_range(config, f"{critic}.tau", 0.0, 1.0, low_open=True)
        cc.in_range(config, f"{critic}.expectile", 0.0, 1.0, low_open=True)
        cc.non_negative(config, f"{critic}.beta")
