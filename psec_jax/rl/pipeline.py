"""Glue shared by the PSEC experiments: building the actor from a config, running a stage for several
seeds at once (vmapped, chunked, checkpointed, resumable), acting functions, and saving policies.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from psec_jax import artifacts, lora, loop, runs
from psec_jax.data.offline import OfflineData
from psec_jax.rl import critics, diffusion, policy, train
from psec_jax.rl.policy import Actor, Skills

POLICY_FORMAT = "psec_jax.diffusion_policy/1"
COMPOSER_FORMAT = "psec_jax.composer/1"


def network_config(size: str = "paper") -> ml_collections.ConfigDict:
    """The noise network and LoRA settings: ``"paper"`` (PSEC's sizes) or ``"small"`` (for a CPU)."""
    if size not in ("paper", "small", "tiny"):
        raise ValueError(f"unknown network size {size!r}; choose paper, small or tiny")
    c = ml_collections.ConfigDict()
    c.hidden = {"paper": 256, "small": 128, "tiny": 16}[size]  # residual width of the MLP-ResNet
    c.ff = {"paper": 1024, "small": 512, "tiny": 32}[size]  # width inside each residual block
    c.num_blocks = {"paper": 3, "small": 2, "tiny": 1}[size]  # residual blocks
    c.time_features = {"paper": 64, "small": 32, "tiny": 8}[size]  # Fourier features of the diffusion step
    c.time_hidden = {"paper": 128, "small": 64, "tiny": 16}[size]  # width of the time MLP (2 layers)
    c.dropout = 0.1  # dropout inside the residual blocks (training only)
    c.diffusion_steps = 5  # T of the VP schedule
    c.lora_rank = 8  # rank of every LoRA skill
    c.lora_alpha = 16.0  # LoRA scale (the official code multiplies by alpha, not alpha / rank)
    c.mlp_adapter_hidden = {"paper": (256, 256), "small": (128, 128), "tiny": (16,)}[size]  # MLP-adapter ablation
    return c


def make_actor(c: ml_collections.ConfigDict, obs_dim: int, act_dim: int, kind: str = "lora") -> Actor:
    """The diffusion actor for a ``network_config``; ``kind`` "lora" or "mlp" (skill type)."""
    if kind not in policy.SKILL_KINDS:
        raise ValueError(f"unknown skill kind {kind!r}; choose from {policy.SKILL_KINDS}")
    net = diffusion.NoiseNet(act_dim, hidden=c.hidden, ff=c.ff, num_blocks=c.num_blocks,
                             time_features=c.time_features, time_hidden=c.time_hidden, dropout=c.dropout)
    cfg = lora.LoRAConfig(rank=c.lora_rank, alpha=c.lora_alpha, scaling="alpha", targets=(r"(^|/)kernel$",))
    return Actor(net, diffusion.make_schedule(c.diffusion_steps), kind, cfg, obs_dim,
                 tuple(c.mlp_adapter_hidden))


def seed_keys(seed: int, num_seeds: int, name: str) -> jax.Array:
    """[num_seeds] keys of stage ``name``: seed s uses ``fold_in(key(seed + s), crc(name))``."""
    from psec_jax import prng

    return jnp.stack([prng.stream(jax.random.key(seed + s), name) for s in range(num_seeds)])


def run_stage(trainer: train.Trainer, keys: jax.Array, frozen: Any, data: OfflineData, *,
              workdir: str | os.PathLike, config: ml_collections.ConfigDict, desc: str,
              frozen_per_seed: bool = True) -> tuple[train.StageState, list[dict]]:
    """Trains ``len(keys)`` seeds of one stage at once (vmapped), in jitted scan chunks with metrics,
    a progress bar and checkpoints in ``workdir`` (resumed if present). ``frozen``: leading seed axis
    when ``frozen_per_seed``, else shared. Returns the final state (leading seed axis) and records."""
    axis = 0 if frozen_per_seed else None
    init = jax.jit(jax.vmap(trainer.init, in_axes=(0, axis)))
    chunk = jax.jit(jax.vmap(trainer.chunk, in_axes=(0, axis, None)))
    state = init(keys, frozen)
    return loop.run_chunks(lambda s: chunk(s, frozen, data), state, num_chunks=trainer.num_chunks,
                           steps_per_chunk=trainer.steps_per_chunk, workdir=workdir, config=config,
                           desc=desc)


def make_act(actor: Actor, critic: critics.Critic, num_candidates: int, mode: str | None = None,
             composer: policy.Composer | None = None) -> Any:
    """An acting function ``(params, obs [E, obs_dim], key) -> actions [E, A]`` that samples
    ``num_candidates`` actions per state and keeps the one the critic scores best.

    params: ``{"base", "skills", "critic"}`` (+ ``"composer"`` when ``composer`` is given;
    ``"skills"`` may be None). Without a composer the skills are applied with weight 1."""

    def act(params: Mapping[str, Any], obs: jax.Array, key: jax.Array) -> jax.Array:
        if composer is None:
            sample = lambda s, k: actor.sample(params["base"], params["skills"], None, s, k)
        else:
            sample = lambda s, k: policy.composed_sample(actor, params["base"], params["skills"], mode,
                                                         composer.apply(params["composer"], s), s, k)
        score = lambda s, a: critic.score(params["critic"], s, a)
        return policy.select_best(sample, score, obs, key, num_candidates)

    return act


def take_seed(tree: Any, i: int) -> Any:
    """Seed i of a pytree with a leading seed axis, as host numpy arrays."""
    return jax.tree.map(lambda x: np.asarray(x[i]), tree)


def save_base(directory: str | os.PathLike, params: Any, net_config: ml_collections.ConfigDict,
              obs_dim: int, act_dim: int, **meta: Any) -> Path:
    """The pretrained noise net with everything needed to rebuild its actor (``load_base``)."""
    info = {"format": POLICY_FORMAT, "network": runs.to_jsonable(net_config), "obs_dim": obs_dim,
            "act_dim": act_dim, **meta}
    return artifacts.save_tree(directory, params, info)


def load_base(directory: str | os.PathLike, kind: str = "lora") -> tuple[Actor, Any, dict]:
    """(actor, params, metadata) of a policy saved with ``save_base``."""
    params, meta = artifacts.load_tree(directory)
    if meta.get("format") != POLICY_FORMAT:
        raise artifacts.ArtifactError(f"{directory}: not a psec_jax diffusion policy (format {meta.get('format')!r})")
    actor = make_actor(ml_collections.ConfigDict(meta["network"]), meta["obs_dim"], meta["act_dim"], kind)
    return actor, params, meta


def library_of(base: Any, skills: Skills, names: list[str], config: lora.LoRAConfig,
               train_configs: Mapping[str, Any] | None = None) -> lora.SkillLibrary:
    """A SkillLibrary of LoRA skills stacked in ``skills`` (one seed, no seed axis)."""
    lib = None
    for i, name in enumerate(names):
        adapter = jax.tree.map(lambda x: x[i], skills.params)
        meta = {"train_config": runs.to_jsonable((train_configs or {}).get(name, {}))}
        lib = (lora.SkillLibrary.create(base, name, adapter, config, **meta) if lib is None
               else lib.add(name, adapter, config, **meta))
    return lib


def save_composer(directory: str | os.PathLike, params: Any, *, mode: str, kind: str,
                  skills: list[str], **meta: Any) -> Path:
    """A trained composer with how it composes (``mode``, composer ``kind``, skill names)."""
    info = {"format": COMPOSER_FORMAT, "mode": mode, "kind": kind, "skills": skills, **meta}
    return artifacts.save_tree(directory, {"params": params}, info)
