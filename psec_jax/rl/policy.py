"""The skill-conditioned diffusion actor and the three ways of composing skills.

``Actor`` bundles the noise network, its schedule and the skill kind:

- ``"lora"``: skills are LoRA adapters of every Dense of the noise net, stacked ``[K, ...]``
  (``psec_jax.lora`` trees); weights enter every layer (PSEC, composition in parameter space).
- ``"mlp"``: skills are ``MLPAdapter``s stacked ``[K, ...]`` whose outputs are added to the noise
  prediction (the MLP-adapter ablation).

Composition modes (``COMPOSE_MODES``), each with weights ``w(s)`` from a composer (``AlphaNet`` or
fixed):

- ``"param"`` (PSEC): one network whose skills are weighted by ``w(s)`` [B, K].
- ``"noise"`` (NSEC): components j = 0..K (0 = the base policy alone, j = the base plus skill j);
  eps = sum_j w_j(s) eps_j inside the sampler; ``w`` is [B, K+1].
- ``"action"`` (ASEC): each component samples its own action, a = sum_j w_j(s) a_j; ``w`` [B, K+1].
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
from flax import struct

from psec_jax import lora, moe, routed
from psec_jax.rl import diffusion
from psec_jax.rl.networks import AlphaNet, MLPAdapter

SKILL_KINDS = ("lora", "mlp")
COMPOSE_MODES = ("param", "noise", "action")


@struct.dataclass
class Skills:
    """K skills stacked on a leading axis."""

    params: Any  # lora: adapter tree of LoRAPair(a [K, d_in, r], b [K, r, d_out]); mlp: MLPAdapter params [K, ...]
    scales: jax.Array  # [K] per-skill scale (the LoRA scale; 1 for MLP adapters)

    @property
    def num(self) -> int:
        return self.scales.shape[-1]

    @staticmethod
    def stack(parts: list[Skills]) -> Skills:
        """Concatenate skill stacks along the skill axis (all must have equal shapes but K)."""
        return jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=0), *parts)


class Actor(NamedTuple):
    """The diffusion actor's pure functions (see the module docstring)."""

    net: diffusion.NoiseNet
    schedule: diffusion.Schedule
    kind: str  # "lora" or "mlp"
    lora_config: lora.LoRAConfig
    obs_dim: int
    mlp_hidden: tuple[int, ...] = (256, 256)  # widths of MLP-adapter skills

    @property
    def act_dim(self) -> int:
        return self.net.act_dim

    def init_base(self, key: jax.Array) -> Any:
        """Fresh noise-net parameters."""
        return diffusion.init_noise_net(self.net, key, self.obs_dim)

    def init_skill(self, key: jax.Array, base: Any) -> Skills:
        """One fresh skill (K=1) that leaves the policy unchanged."""
        if self.kind == "lora":
            adapter = lora.init(key, base, self.lora_config)
        else:
            adapter = self._mlp().init(
                key, jnp.zeros((1, self.obs_dim)), jnp.zeros((1, self.act_dim)), jnp.zeros((1,), jnp.int32)
            )["params"]
        return self.as_skills(jax.tree.map(lambda x: x[None], adapter))

    @property
    def skill_scale(self) -> float:
        """The configured scale of every skill: the LoRA scale, 1 for MLP adapters. Configuration, never
        trained: a saved library records it, so it must be what the policy was evaluated with."""
        return self.lora_config.scale if self.kind == "lora" else 1.0

    def as_skills(self, params: Any) -> Skills:
        """``Skills`` of trained adapter parameters (leaves ``[K, ...]``) at the configured scale."""
        k = jax.tree.leaves(params)[0].shape[0]
        return Skills(params, jnp.full((k,), self.skill_scale, jnp.float32))

    def _mlp(self) -> MLPAdapter:
        return MLPAdapter(self.act_dim, self.schedule.betas.shape[0], self.mlp_hidden)

    def eps(
        self,
        base: Any,
        skills: Skills | None,
        weights: jax.Array | None,
        obs: jax.Array,
        a_t: jax.Array,
        t: jax.Array,
        dropout_key: jax.Array | None = None,
    ) -> jax.Array:
        """Noise prediction [B, A] of the base plus skills weighted by ``weights`` ([K] or [B, K];
        None = all ones). ``dropout_key`` turns on dropout (training)."""
        train = dropout_key is not None
        rngs = {"dropout": dropout_key} if train else {}
        if skills is None:
            return self.net.apply({"params": base}, obs, a_t, t, train=train, rngs=rngs)
        w = jnp.ones((skills.num,)) if weights is None else weights
        if isinstance(w, routed.SkillRoute):  # only each state's selected skills run (LoRA skills only)
            if self.kind != "lora":
                raise ValueError("a routed composition needs LoRA skills")
            variables = {"params": base, lora.LORA_COLLECTION: skills.params}
            return self.net.apply(variables, obs, a_t, t, w.scaled(skills.scales), train=train, rngs=rngs)
        if self.kind == "lora":
            variables = {"params": base, lora.LORA_COLLECTION: skills.params}
            return self.net.apply(variables, obs, a_t, t, w * skills.scales, train=train, rngs=rngs)
        eps = self.net.apply({"params": base}, obs, a_t, t, train=train, rngs=rngs)
        deltas = jax.vmap(lambda p: self._mlp().apply({"params": p}, obs, a_t, t))(skills.params)  # [K, B, A]
        w = jnp.broadcast_to(w * skills.scales, (*obs.shape[:-1], skills.num))
        return eps + jnp.einsum("bk,kba->ba", w, deltas)

    def sample(
        self, base: Any, skills: Skills | None, weights: jax.Array | None, obs: jax.Array, key: jax.Array
    ) -> jax.Array:
        """Actions [B, A] in [-1, 1] sampled for observations [B, obs_dim]."""
        fn = lambda a, t: self.eps(base, skills, weights, obs, a, t)
        return diffusion.sample(fn, self.schedule, key, (obs.shape[0], self.act_dim))


def component_weights(num_skills: int) -> jax.Array:
    """[K+1, K]: row 0 = the base policy (no skill), row j = skill j alone."""
    return jnp.concatenate([jnp.zeros((1, num_skills)), jnp.eye(num_skills)])


def num_outputs(mode: str, num_skills: int) -> int:
    """Size of the composer's output for a composition mode."""
    if mode not in COMPOSE_MODES:
        raise ValueError(f"unknown composition mode {mode!r}; choose from {COMPOSE_MODES}")
    return num_skills if mode == "param" else num_skills + 1


def composed_eps(
    actor: Actor,
    base: Any,
    skills: Skills,
    mode: str,
    w: jax.Array,
    obs: jax.Array,
    a_t: jax.Array,
    t: jax.Array,
    dropout_key: jax.Array | None = None,
) -> jax.Array:
    """eps [B, A] of the composed policy in ``"param"`` or ``"noise"`` mode; w [B, num_outputs]."""
    if mode == "param":
        return actor.eps(base, skills, w, obs, a_t, t, dropout_key)
    if mode != "noise":
        raise ValueError(f"composed_eps takes modes 'param' and 'noise', got {mode!r}")
    each = jax.vmap(lambda cw: actor.eps(base, skills, cw, obs, a_t, t, dropout_key))(component_weights(skills.num))
    return jnp.einsum("bj,jba->ba", w, each)


def composed_sample(
    actor: Actor, base: Any, skills: Skills, mode: str, w: jax.Array, obs: jax.Array, key: jax.Array
) -> jax.Array:
    """Actions [B, A] of the composed policy; w [B, num_outputs(mode, K)]."""
    shape = (obs.shape[0], actor.act_dim)
    if mode == "action":
        comps = component_weights(skills.num)
        keys = jax.random.split(key, comps.shape[0])
        each = jax.vmap(lambda cw, k: actor.sample(base, skills, cw, obs, k))(comps, keys)  # [J, B, A]
        return jnp.einsum("bj,jba->ba", w, each)
    fn = lambda a, t: composed_eps(actor, base, skills, mode, w, obs, a, t)
    return diffusion.sample(fn, actor.schedule, key, shape)


def component_actions(
    actor: Actor, base: Any, skills: Skills, obs: jax.Array, key: jax.Array, chunk: int = 1024
) -> jax.Array:
    """One sampled action of every component (base, base + skill j) for each state: [N, K+1, A].

    What ASEC's composer regresses on; computed once per dataset (in chunks of ``chunk`` states, so
    memory stays bounded) instead of re-sampling K+1 diffusion chains at every training step."""
    n = obs.shape[0]
    pad = -n % chunk
    padded = jnp.concatenate([obs, jnp.zeros((pad, obs.shape[1]), obs.dtype)]).reshape(-1, chunk, obs.shape[1])
    comps = component_weights(skills.num)

    def one(args):
        s, i = args
        keys = jax.random.split(jax.random.fold_in(key, i), comps.shape[0])
        return jax.vmap(lambda cw, k: actor.sample(base, skills, cw, s, k), out_axes=1)(comps, keys)

    out = jax.lax.map(one, (padded, jnp.arange(padded.shape[0])))
    return out.reshape(-1, comps.shape[0], actor.act_dim)[:n]


COMPOSER_KINDS = ("context", "fixed", "routed")


class Composer(NamedTuple):
    """State -> composition weights [B, num_outputs]: the context-aware AlphaNet, fixed weights, or a
    route over the skills (``routed.SkillRoute``: the AlphaNet's outputs as router logits)."""

    init: Callable[[jax.Array], Any]  # key -> params
    apply: Callable[[Any, jax.Array], Any]  # (params, obs [B, obs_dim]) -> [B, num_outputs] or a SkillRoute


def make_composer(
    kind: str,
    obs_dim: int,
    outputs: int,
    hidden: tuple[int, ...] = (256, 256),
    fixed: tuple[float, ...] | None = None,
    routing: moe.MoEConfig | None = None,
) -> Composer:
    """``kind="context"``: PSEC's AlphaNet (learned). ``kind="fixed"``: the constant ``fixed`` weights
    (default all ones), no context module; its params are that vector [outputs]. ``kind="routed"``: the
    AlphaNet's outputs are router logits over the ``outputs`` skills, routed by ``routing`` (top-k or
    top-p, its back-end and aux-loss weights; ``"param"`` mode only): each state composes its selected
    skills at their routing probabilities."""
    if kind in ("context", "routed"):
        net = AlphaNet(outputs, tuple(hidden))
        init = lambda k: net.init(k, jnp.zeros((1, obs_dim)))["params"]
        if kind == "context":
            return Composer(init, lambda p, s: net.apply({"params": p}, s))
        if routing is None:
            raise ValueError("a routed composer needs its routing (a psec_jax.moe.MoEConfig)")
        return Composer(init, lambda p, s: routed.route_skills(net.apply({"params": p}, s), routing))
    if kind == "fixed":
        w = jnp.asarray(fixed if fixed is not None else (1.0,) * outputs, jnp.float32)
        if w.shape != (outputs,):
            raise ValueError(f"fixed composition weights need {outputs} values, got {tuple(w.shape)}")
        return Composer(lambda k: w, lambda p, s: jnp.broadcast_to(p, (s.shape[0], outputs)))
    raise ValueError(f"unknown composer kind {kind!r}; choose from {COMPOSER_KINDS}")


def make_actor(network: ml_collections.ConfigDict, obs_dim: int, act_dim: int, kind: str = "lora") -> Actor:
    """The diffusion actor of a ``network`` config (``psec_jax.rl.config.network_config``); ``kind``
    "lora" or "mlp" (the skill type)."""
    if kind not in SKILL_KINDS:
        raise ValueError(f"unknown skill kind {kind!r}; choose from {SKILL_KINDS}")
    c = network
    net = diffusion.NoiseNet(
        act_dim,
        hidden=c.hidden,
        ff=c.ff,
        num_blocks=c.num_blocks,
        time_features=c.time_features,
        time_hidden=c.time_hidden,
        dropout=c.dropout,
    )
    cfg = lora.LoRAConfig(rank=c.lora_rank, alpha=c.lora_alpha, scaling="alpha", targets=(r"(^|/)kernel$",))
    return Actor(net, diffusion.make_schedule(c.diffusion_steps), kind, cfg, obs_dim, tuple(c.mlp_adapter_hidden))


def make_sampler(actor: Actor, mode: str | None = None, composer: Composer | None = None) -> Callable:
    """``sample(params, obs [M, obs_dim], key) -> actions [M, A]`` of the policy in ``params``
    (``{"base", "skills"}`` + ``"composer"`` when ``composer`` is given; ``"skills"`` may be None).
    Without a composer the skills are applied with weight 1; with one, they are composed by ``mode``."""

    def sample(params: Any, obs: jax.Array, key: jax.Array) -> jax.Array:
        if composer is None:
            return actor.sample(params["base"], params["skills"], None, obs, key)
        w = composer.apply(params["composer"], obs)
        return composed_sample(actor, params["base"], params["skills"], mode, w, obs, key)

    return sample
