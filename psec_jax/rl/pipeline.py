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
from flax import struct

from psec_jax import artifacts, lora, loop, runs
from psec_jax.data.offline import OfflineData
from psec_jax.rl import critics, diffusion, policy, train
from psec_jax.rl.policy import Actor, Skills

POLICY_FORMAT = "psec_jax.diffusion_policy/1"
COMPOSER_FORMAT = "psec_jax.composer/1"


@struct.dataclass
class Normalizer:
    """Observation standardisation fixed by pi_0's training data; every later stage (skills, critics,
    composers) and acting use the same statistics, so the frozen network always sees its own inputs.
    (DMC walker velocities reach +-50 while joint angles stay in [-1, 1]: unnormalised, diffusion BC
    on 10 expert walk trajectories returned ~80 against ~950 with normalisation, runs/bc_check*.py.)"""

    mean: jax.Array  # [obs_dim]
    std: jax.Array  # [obs_dim], floored at 1e-3

    @classmethod
    def of(cls, data: OfflineData) -> "Normalizer":
        """Statistics of ``data.observations``."""
        return cls(jnp.mean(data.observations, 0), jnp.maximum(jnp.std(data.observations, 0), 1e-3))

    @classmethod
    def identity(cls, obs_dim: int) -> "Normalizer":
        return cls(jnp.zeros((obs_dim,)), jnp.ones((obs_dim,)))

    def __call__(self, obs: jax.Array) -> jax.Array:
        """Standardised observations [..., obs_dim]."""
        return (obs - self.mean) / self.std

    def data(self, data: OfflineData) -> OfflineData:
        """``data`` with observations and next observations standardised."""
        return data.replace(observations=self(data.observations), next_observations=self(data.next_observations))


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
    # lax.map, not vmap, for init: the same values, but XLA compiles the vmapped initialisers of large
    # networks 3x slower on CPU (31 s vs 11 s for the full-network expand init)
    if frozen_per_seed:
        init = jax.jit(lambda k, f: jax.lax.map(lambda kf: trainer.init(*kf), (k, f)))
    else:
        init = jax.jit(lambda k, f: jax.lax.map(lambda k1: trainer.init(k1, f), k))
    chunk = jax.jit(jax.vmap(trainer.chunk, in_axes=(0, axis, None)))
    state = init(keys, frozen)
    return loop.run_chunks(lambda s: chunk(s, frozen, data), state, num_chunks=trainer.num_chunks,
                           steps_per_chunk=trainer.steps_per_chunk, workdir=workdir, config=config,
                           desc=desc)


def compose_frozen(actor: Actor, base: Any, skills: Skills, mode: str, obs: jax.Array, keys: jax.Array
                   ) -> dict[str, Any]:
    """What ``train.make_compose`` keeps frozen, for S seeds: ``{"base", "skills"}`` (leading seed
    axis), plus in ``"action"`` mode ``"actions"`` [S, N, K+1, A], one sampled action of each component
    for each target state obs [N, obs_dim] (keys [S])."""
    frozen = {"base": base, "skills": skills}
    if mode == "action":
        sample = lambda b, sk, k: policy.component_actions(actor, b, sk, obs, k)
        frozen["actions"] = jax.jit(jax.vmap(sample))(base, skills, keys)
    return frozen


def make_sampler(actor: Actor, mode: str | None = None, composer: policy.Composer | None = None) -> Any:
    """``sample(params, obs [M, obs_dim], key) -> actions [M, A]`` of the policy in ``params``
    (``{"base", "skills"}`` + ``"composer"`` when ``composer`` is given; ``"skills"`` may be None).
    Without a composer the skills are applied with weight 1; with one, they are composed by ``mode``."""

    def sample(params: Mapping[str, Any], obs: jax.Array, key: jax.Array) -> jax.Array:
        if composer is None:
            return actor.sample(params["base"], params["skills"], None, obs, key)
        w = composer.apply(params["composer"], obs)
        return policy.composed_sample(actor, params["base"], params["skills"], mode, w, obs, key)

    return sample


def pretrain_base(actor: Actor, config: ml_collections.ConfigDict, data: OfflineData, normalizer: Normalizer,
                  *, workdir: str | os.PathLike, data_name: str) -> Any:
    """Stage 1 of every experiment: diffusion BC of pi_0 on ``data`` (standardised), for
    ``config.num_seeds`` seeds, or once and shared when ``config.share_pretrain``; saves it (with its
    normaliser) to ``workdir/policies/pi0``. Returns the EMA parameters with a leading seed axis."""
    n_pre = 1 if config.share_pretrain else config.num_seeds
    pre, _ = run_stage(train.make_pretrain(actor, config.pretrain), seed_keys(config.seed, n_pre, "pretrain"),
                       None, data, workdir=Path(workdir) / "stages" / "pretrain", config=config,
                       desc="pretrain", frozen_per_seed=False)
    base = repeat_seeds(pre.ema, config.num_seeds) if config.share_pretrain else pre.ema
    save_base(Path(workdir) / "policies" / "pi0", take_seed(base, 0), config.network, actor.obs_dim,
              actor.act_dim, normalizer, data=data_name)
    return base


def make_act(actor: Actor, critic: critics.Critic, num_candidates: int, mode: str | None = None,
             composer: policy.Composer | None = None, normalizer: Normalizer | None = None) -> Any:
    """An acting function ``(params, obs [E, obs_dim], key) -> actions [E, A]`` that samples
    ``num_candidates`` actions per state (``make_sampler``) and keeps the one the critic
    (``params["critic"]``) scores best. Raw environment observations are standardised by
    ``normalizer`` first (the one the policy was trained with)."""
    sampler = make_sampler(actor, mode, composer)

    def act(params: Mapping[str, Any], obs: jax.Array, key: jax.Array) -> jax.Array:
        if normalizer is not None:
            obs = normalizer(obs)
        score = lambda s, a: critic.score(params["critic"], s, a)
        return policy.select_best(lambda s, k: sampler(params, s, k), score, obs, key, num_candidates)

    return act


def check_common(config: ml_collections.ConfigDict, stages: tuple[str, ...], critic_fields: tuple[str, ...]
                 ) -> None:
    """ConfigError (one line) for values no PSEC setting can train with: seeds, evaluation, the network,
    every training stage in ``stages`` and every critic config in ``critic_fields`` (dotted names).
    Runs before any data is loaded or anything compiled, so a bad compose stage fails in a second,
    not after pretraining."""
    from psec_jax import config_check as cc

    cc.positive_int(config, "num_seeds", "eval.episodes", "eval.candidates", "eval.episode_length")
    cc.positive_int(config, *(f"network.{f}" for f in ("hidden", "ff", "num_blocks", "time_features",
                                                       "time_hidden", "diffusion_steps", "lora_rank",
                                                       "mlp_adapter_hidden")))
    cc.in_range(config, "network.dropout", 0.0, 0.99)
    cc.positive(config, "network.lora_alpha")
    for stage in stages:
        cc.multiple_of(config, f"{stage}.steps", f"{stage}.log_every")
        cc.positive_int(config, f"{stage}.batch_size")
        cc.positive(config, f"{stage}.learning_rate")
        for field, check in (("weight_decay", cc.non_negative), ("hidden", cc.positive_int),
                             ("ema", lambda c, f: cc.in_range(c, f, 0.0, 1.0, low_open=True))):
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


def check_methods(methods: Any, allowed: tuple[str, ...]) -> None:
    """ValueError naming unknown entries of ``config.methods`` (or an empty list)."""
    unknown = [m for m in methods if m not in allowed]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown} in config.methods; choose from {allowed}")
    if not methods:
        raise ValueError("config.methods is empty")


def repeat_seeds(tree: Any, n: int) -> Any:
    """A one-seed tree [1, ...] repeated to n seeds [n, ...] (a shared pi_0)."""
    return jax.tree.map(lambda x: jnp.repeat(x, n, axis=0), tree)


def take_seed(tree: Any, i: int) -> Any:
    """Seed i of a pytree with a leading seed axis, as host numpy arrays."""
    return jax.tree.map(lambda x: np.asarray(x[i]), tree)


def save_base(directory: str | os.PathLike, params: Any, net_config: ml_collections.ConfigDict,
              obs_dim: int, act_dim: int, normalizer: Normalizer | None = None, **meta: Any) -> Path:
    """The pretrained noise net, its observation normaliser and everything needed to rebuild its actor
    (``load_base``)."""
    normalizer = normalizer or Normalizer.identity(obs_dim)
    info = {"format": POLICY_FORMAT, "network": runs.to_jsonable(net_config), "obs_dim": obs_dim,
            "act_dim": act_dim, **meta}
    tree = {"params": params, "obs_mean": np.asarray(normalizer.mean), "obs_std": np.asarray(normalizer.std)}
    return artifacts.save_tree(directory, tree, info)


def load_base(directory: str | os.PathLike, kind: str = "lora") -> tuple[Actor, Any, Normalizer, dict]:
    """(actor, params, normaliser, metadata) of a policy saved with ``save_base``."""
    tree, meta = artifacts.load_tree(directory)
    if meta.get("format") != POLICY_FORMAT:
        raise artifacts.ArtifactError(f"{directory}: not a psec_jax diffusion policy (format {meta.get('format')!r})")
    actor = make_actor(ml_collections.ConfigDict(meta["network"]), meta["obs_dim"], meta["act_dim"], kind)
    return actor, tree["params"], Normalizer(jnp.asarray(tree["obs_mean"]), jnp.asarray(tree["obs_std"])), meta


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
