"""A decoder-only language model whose FFNs are `psec_jax.moe` layers (pure `init` / `apply`).

    spec = Spec(vocab_size=2048, d_model=128, num_layers=4, num_heads=4, num_experts=8, d_ff_expert=256,
                moe=MoEConfig(router="top_p", backend="dropless", dispatch="argsort"))
    params = init(key, spec)
    out = apply(params, tokens, spec, p=0.4)      # logits [B, T, V], aux/stats stacked [G, ...]
    axes = param_axes(spec)                       # logical axis names of every parameter, declared by init

Pre-norm blocks: x += Attention(RMSNorm(x)); x += FFN(RMSNorm(x)), causal multi-head attention with
rotary position embeddings (RoPE, rotate-half form), SwiGLU FFNs. One layer in every `moe_every` has
the MoE layer as its FFN (routed SwiGLU experts, no shared expert); the others a dense SwiGLU FFN.
The layers are grouped as one MoE layer and `moe_every - 1` dense layers (the MoE layer first, as the
official code's `layer_idx % expert_frequency == 0`, or last: `Spec.moe_position`) and the groups are
stacked on a leading axis `[G]` (G = num_layers // moe_every) and run by `lax.scan`, so one
compilation serves any depth; per-group aux losses and routing statistics come out as `[G, ...]`.

Conventions (`Spec` fields; the official code's choice is the default): initialisation `init`,
aux-loss reduction over layers `aux_layers`, MoE placement `moe_position`, and `mask_padding` (aux
losses and routing statistics over the positions whose target is not padding, like HF's load-balance
loss with an attention mask, which masks by input; the official code releases no training code).

Precision: parameters are float32 and cast to `spec.dtype` (bfloat16 by default) where they are used;
activations and the residual stream are in `spec.dtype`; RMSNorm, attention softmax, the router and
the logits are float32.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from psec_jax import parallel
from psec_jax.models import sharding
from psec_jax.moe import BACKENDS as MOE_BACKENDS
from psec_jax.moe import MoEConfig, experts, moe_apply
from psec_jax.routing import ROUTERS

# Dispatch back-ends that keep the model causal (`Backend.causal` in the back-end table): not "capacity",
# whose drops depend on every token in the batch, later positions included. "expert_parallel" (experts
# sharded over the mesh's expert axis; run under `jax.set_mesh`) is given buffers that hold every token
# a device has (capacity T_local per expert), so it drops nothing.
BACKENDS = tuple(name for name, b in MOE_BACKENDS.items() if b.causal)
# Activation dtypes the model runs in. float64 is not among them: with JAX's default 32-bit mode it
# would silently run in float32.
DTYPES = ("float32", "bfloat16", "float16")
# The choices of each convention field of `Spec` (the official code's first).
CONVENTIONS = {"init": ("official", "fan_in"), "aux_layers": ("mean", "sum"), "moe_position": ("first", "last")}
OFFICIAL_STD = 0.02  # the official code's (and HF LLaMA's) initializer_range


@dataclasses.dataclass(frozen=True)
class Spec:
    """Static shape and routing choices of the model (hashable, so it can be a jit static argument)."""

    vocab_size: int
    d_model: int
    num_layers: int
    num_heads: int
    num_experts: int
    d_ff_expert: int  # hidden width of each SwiGLU expert
    d_ff: int = 0  # hidden width of the dense SwiGLU FFNs between MoE layers (unused when moe_every = 1)
    moe_every: int = 1  # one layer in every moe_every is MoE (the first or last of each group: moe_position)
    # routing, dispatch back-end and aux-loss weights of every MoE layer (per MoE layer: LM loss + the
    # weighted aux losses); `apply`'s `p` overrides moe.p, also traced
    moe: MoEConfig = MoEConfig(z_weight=0.0)
    dtype: str = "bfloat16"  # activation dtype
    # conventions the top-p paper's official code fixes and this model makes choices (see `CONVENTIONS`):
    init: str = "official"  # "official": N(0, 0.02) for every matrix and embedding; "fan_in": N(0, 1/fan_in)
    aux_layers: str = "mean"  # MoE layers' aux losses: "mean" (HF's pooled loss's scale) or "sum" (grows with depth)
    moe_position: str = "first"  # the MoE layer in its group of moe_every: "first" (official) or "last"
    mask_padding: bool = True  # aux losses and routing statistics leave out positions whose target is padding
    rope_base: float = 10000.0
    remat: bool = False  # recompute each layer in the backward pass (saves activation memory)
    # layer groups per iteration of the layer scan (`lax.scan`'s unroll): 1 compiles one group whatever the
    # depth; num_groups (or more) unrolls the whole stack, which on CPU saves the scan's per-layer slicing
    # of the stacked weights and its stacked residual buffers (see benchmarks/lm_train_throughput.py)
    scan_unroll: int = 1
    # FSDP under a mesh: gather each layer's weights where used, activations pinned to the batch split.
    # None = yes, except on a mesh of CPU devices: there XLA:CPU runs the resulting independent
    # collectives in different orders on different devices and can deadlock (seen with 8 emulated ones)
    gather_weights: bool | None = None

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "num_layers", "num_heads", "num_experts", "d_ff_expert", "moe_every"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"Spec.{name} must be a positive int, got {getattr(self, name)!r}")
        if self.num_layers % self.moe_every:
            raise ValueError(f"num_layers={self.num_layers} is not a multiple of moe_every={self.moe_every}")
        if self.moe_every > 1 and self.d_ff < 1:
            raise ValueError(f"moe_every={self.moe_every} needs the dense FFN width d_ff >= 1, got {self.d_ff}")
        if self.d_model % self.num_heads or (self.d_model // self.num_heads) % 2:
            raise ValueError(f"d_model={self.d_model} must split into num_heads={self.num_heads} heads of even size")
        if not isinstance(self.moe, MoEConfig):
            raise ValueError(f"Spec.moe must be a psec_jax.moe.MoEConfig, got {type(self.moe).__name__}")
        if ROUTERS[self.moe.router].uses_k and not self.moe.k <= self.num_experts:
            raise ValueError(
                f"router {self.moe.router!r} needs k <= num_experts={self.num_experts}, got k={self.moe.k}"
            )
        if self.moe.backend not in BACKENDS:
            raise ValueError(
                f"backend {self.moe.backend!r} is not one of {BACKENDS} (capacity dispatch drops tokens "
                "depending on later positions, which breaks causality)"
            )
        if not isinstance(self.scan_unroll, int) or isinstance(self.scan_unroll, bool) or self.scan_unroll < 1:
            raise ValueError(f"Spec.scan_unroll must be a positive int, got {self.scan_unroll!r}")
        if not self.rope_base > 0:
            raise ValueError(f"rope_base must be > 0, got {self.rope_base}")
        if self.moe.max_k is not None and not self.moe.max_k <= self.num_experts:
            raise ValueError(f"max_k must be in [1, num_experts={self.num_experts}], got {self.moe.max_k}")
        for name, allowed in CONVENTIONS.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"Spec.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"activation dtype must be one of {DTYPES}, got {self.dtype!r}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    @property
    def num_groups(self) -> int:
        return self.num_layers // self.moe_every

    @property
    def layer_config(self) -> MoEConfig:
        """The MoE layers' config: `moe` with capacity buffers of every token (C = T), so that the
        "expert_parallel" back-end never drops."""
        return dataclasses.replace(self.moe, capacity_factor=float(self.num_experts), capacity_k=1.0)


class Output(NamedTuple):
    logits: jax.Array  # [B, T, V] float32
    aux: dict  # {"load_balance", "dynamic", "z", "total"}: [G] float32, per MoE layer
    stats: dict  # per MoE layer: experts_per_token_mean [G], experts_per_token_max [G], expert_load [G, E],
    #             dropped_fraction [G], truncated_fraction [G], experts_per_token [G, B, T] int32


# ---------------------------------------------------------------------------------------------- init


def _normal(key: jax.Array, shape: tuple[int, ...], fan_in: int) -> jax.Array:
    return jax.random.normal(key, shape, jnp.float32) / jnp.sqrt(fan_in)


# Every parameter is created as a box holding its value and the logical names of its axes (the mesh rules
# of `psec_jax.parallel` map them to mesh axes; `psec_jax.models.sharding` reads them), so its sharding is
# declared here, beside its shape. `init` returns the values; `param_axes` the names.
_box = nn.LogicallyPartitioned


def _norm(d: int) -> nn.LogicallyPartitioned:
    return _box(jnp.ones((d,)), ("norm",))


def _init_attention(key: jax.Array, spec: Spec) -> dict[str, Any]:
    d, h, dh = spec.d_model, spec.num_heads, spec.head_dim
    kq, kk, kv, ko = jax.random.split(key, 4)
    heads_in = ("embed", "heads", "head_dim")
    return {
        "wq": _box(_normal(kq, (d, h, dh), d), heads_in),
        "wk": _box(_normal(kk, (d, h, dh), d), heads_in),
        "wv": _box(_normal(kv, (d, h, dh), d), heads_in),
        "wo": _box(_normal(ko, (h, dh, d), d) / jnp.sqrt(2.0 * spec.num_layers), ("heads", "head_dim", "embed")),
    }


def _init_dense_layer(key: jax.Array, spec: Spec) -> dict[str, Any]:
    ka, kg, ku, kd = jax.random.split(key, 4)
    d, f = spec.d_model, spec.d_ff
    return {
        "attn_norm": _norm(d),
        "attn": _init_attention(ka, spec),
        "ffn_norm": _norm(d),
        "ffn": {
            "gate": _box(_normal(kg, (d, f), d), ("embed", "mlp")),
            "up": _box(_normal(ku, (d, f), d), ("embed", "mlp")),
            "down": _box(_normal(kd, (f, d), f) / jnp.sqrt(2.0 * spec.num_layers), ("mlp", "embed")),
        },
    }


def _init_moe_layer(key: jax.Array, spec: Spec) -> dict[str, Any]:
    ka, km = jax.random.split(key)
    d = spec.d_model
    moe = experts.init_moe(km, d, spec.d_ff_expert, spec.num_experts, boxed=True)  # declares its axes
    down = moe["experts"]["down"]
    moe["experts"]["down"] = down.replace_boxed(down.value / jnp.sqrt(2.0 * spec.num_layers))
    return {"attn_norm": _norm(d), "attn": _init_attention(ka, spec), "ffn_norm": _norm(d), "moe": moe}


def _stacked(tree: Any, name: str | None) -> Any:
    """Boxes made under `jax.vmap`: their values gained a leading axis, named `name` here."""
    return jax.tree.map(lambda b: b.replace(names=(name,) + tuple(b.names)), tree, is_leaf=experts.is_boxed)


def _init_group(key: jax.Array, spec: Spec) -> dict[str, Any]:
    kd, km = jax.random.split(key)
    group = {"moe": _init_moe_layer(km, spec)}
    if spec.moe_every > 1:  # a group's dense layers: a second stacked axis, not sharded
        dense = jax.vmap(lambda k: _init_dense_layer(k, spec))(jax.random.split(kd, spec.moe_every - 1))
        group["dense"] = _stacked(dense, None)
    return group


def _official(boxed: dict[str, Any], key: jax.Array) -> dict[str, Any]:
    """The official code's initialisation: every weight (embedding, projections, router, experts,
    unembedding) drawn afresh from N(0, OFFICIAL_STD^2), no depth scaling; RMSNorm scales stay 1."""
    leaves, treedef = jax.tree.flatten(boxed, is_leaf=experts.is_boxed)
    keys = jax.random.split(key, len(leaves))
    redraw = lambda b, k: b.replace_boxed(OFFICIAL_STD * jax.random.normal(k, b.value.shape, jnp.float32))
    return treedef.unflatten([b if "norm" in b.names else redraw(b, k) for b, k in zip(leaves, keys)])


def init_boxed(key: jax.Array, spec: Spec) -> dict[str, Any]:
    """`init`'s parameters, each in a `nn.LogicallyPartitioned` box with the logical names of its axes;
    `spec.init` says how they are drawn ("fan_in": N(0, 1) embedding, N(0, 1/fan_in) matrices with the
    residual projections further scaled by 1/sqrt(2 L); "official": `_official`)."""
    ke, kg, ku = jax.random.split(key, 3)
    d = spec.d_model
    groups = jax.vmap(lambda k: _init_group(k, spec))(jax.random.split(kg, spec.num_groups))
    boxed = {
        "embed": _box(jax.random.normal(ke, (spec.vocab_size, d), jnp.float32), ("vocab", "embed")),
        "groups": _stacked(groups, "layers"),  # the stacked layer groups, never sharded
        "final_norm": _norm(d),
        "unembed": _box(_normal(ku, (d, spec.vocab_size), d), ("embed", "vocab")),
    }
    return _official(boxed, jax.random.fold_in(key, 1)) if spec.init == "official" else boxed


def init(key: jax.Array, spec: Spec) -> dict[str, Any]:
    """float32 parameters: embed [V, d], groups (each leaf [G, ...]; dense layers [G, moe_every-1, ...]),
    final_norm [d], unembed [d, V] (not tied to the embedding)."""
    return experts.unbox(init_boxed(key, spec))


def param_axes(spec: Spec) -> dict[str, Any]:
    """The logical axis names of every parameter, as `init_boxed` declares them: a tree like `init`'s
    with a tuple of names (str or None) per leaf (from shapes only, nothing allocated)."""
    return jax.tree.map(lambda a: a, _declared_axes(spec), is_leaf=lambda a: isinstance(a, tuple))  # a fresh tree


@functools.lru_cache(maxsize=64)  # apply reads them at every trace
def _declared_axes(spec: Spec) -> dict[str, Any]:
    boxed = jax.eval_shape(lambda: init_boxed(jax.random.key(0), spec))
    return jax.tree.map(lambda b: tuple(b.names), boxed, is_leaf=experts.is_boxed)


# ------------------------------------------------------------------------------------------- layers


def rms_norm(scale: jax.Array, x: jax.Array, eps: float = 1e-6) -> jax.Array:
    """x [..., d] normalised by its root mean square (in float32), times scale [d]; x's dtype."""
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, -1, keepdims=True) + eps) * scale
    return y.astype(x.dtype)


def rope(x: jax.Array, base: float) -> jax.Array:
    """Rotary position embedding of x [T, H, dh] at positions 0..T-1 (rotate-half form)."""
    t, _, dh = x.shape
    inv_freq = base ** (-jnp.arange(0, dh // 2, dtype=jnp.float32) / (dh // 2))  # [dh/2]
    angle = jnp.arange(t, dtype=jnp.float32)[:, None] * inv_freq  # [T, dh/2]
    cos, sin = jnp.cos(angle)[:, None, :], jnp.sin(angle)[:, None, :]  # [T, 1, dh/2]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1).astype(x.dtype)


def attention(p: dict[str, jax.Array], x: jax.Array, rope_base: float) -> jax.Array:
    """Causal multi-head self-attention of ONE sequence x [T, d] -> [T, d] (vmap over the batch)."""
    w = jax.tree.map(lambda a: a.astype(x.dtype), p)
    q = rope(jnp.einsum("td,dhk->thk", x, w["wq"]), rope_base)
    k = rope(jnp.einsum("td,dhk->thk", x, w["wk"]), rope_base)
    v = jnp.einsum("td,dhk->thk", x, w["wv"])
    scores = jnp.einsum("qhk,shk->hqs", q, k, preferred_element_type=jnp.float32) / jnp.sqrt(q.shape[-1])
    t = x.shape[0]
    causal = jnp.arange(t)[:, None] >= jnp.arange(t)[None, :]  # [q, s]: s is not in q's future
    probs = jax.nn.softmax(jnp.where(causal, scores, -jnp.inf), axis=-1).astype(x.dtype)
    return jnp.einsum("hqs,shk,hkd->qd", probs, v, w["wo"])


def _attend(p: dict[str, Any], x: jax.Array, spec: Spec) -> jax.Array:
    return x + jax.vmap(attention, in_axes=(None, 0, None))(p["attn"], rms_norm(p["attn_norm"], x), spec.rope_base)


def dense_layer(p: dict[str, Any], x: jax.Array, spec: Spec) -> jax.Array:
    """One dense block on x [B, T, d]."""
    x = _attend(p, x, spec)
    return x + experts.swiglu_expert(p["ffn"], rms_norm(p["ffn_norm"], x))  # the experts' SwiGLU, dense


def moe_block(
    p: dict[str, Any], x: jax.Array, spec: Spec, top_p: jax.Array | float, mask: jax.Array | None = None
) -> tuple[jax.Array, dict, dict]:
    """One MoE block on x [B, T, d]: routes all B*T tokens together. Returns (x, aux, stats) with
    scalar aux losses and the layer's routing statistics (experts_per_token [B, T]), over the
    positions where mask [B, T] is True (all when None)."""
    x = _attend(p, x, spec)
    h = rms_norm(p["ffn_norm"], x)
    y, aux, stats = moe_apply(p["moe"], h, spec.layer_config, p=top_p, mask=mask)
    return x + y, aux, stats


def group_block(
    p: dict[str, Any], x: jax.Array, spec: Spec, top_p: jax.Array | float, mask: jax.Array | None = None
) -> tuple[jax.Array, tuple[dict, dict]]:
    """A group's MoE layer and its moe_every - 1 dense layers (a scan): MoE first or last, as
    `spec.moe_position` says."""
    dense = lambda x: jax.lax.scan(lambda h, q: (dense_layer(q, h, spec), None), x, p["dense"])[0]
    if spec.moe_every > 1 and spec.moe_position == "last":
        x = dense(x)
    x, aux, stats = moe_block(p["moe"], x, spec, top_p, mask)
    if spec.moe_every > 1 and spec.moe_position == "first":
        x = dense(x)
    return x, (aux, stats)


# -------------------------------------------------------------------------------------------- model


def _check_tokens(tokens: jax.Array, spec: Spec) -> None:
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be [batch, seq_len], got shape {tokens.shape}")
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise TypeError(f"tokens must be integer ids, got dtype {tokens.dtype}")


def embed(params: dict[str, Any], tokens: jax.Array, spec: Spec) -> jax.Array:
    """tokens [B, T] -> x [B, T, d] in the activation dtype."""
    return params["embed"].astype(spec.dtype)[tokens]


def logits_of(params: dict[str, Any], x: jax.Array) -> jax.Array:
    """Final RMSNorm and the output projection: x [B, T, d] -> float32 logits [B, T, V]."""
    h = rms_norm(params["final_norm"], x)
    return jnp.matmul(h, params["unembed"].astype(h.dtype), preferred_element_type=jnp.float32)


def _gathers_weights(spec: Spec) -> bool:
    if spec.gather_weights is not None:
        return spec.gather_weights
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return False
    platform = getattr(getattr(mesh, "abstract_device", None), "platform", None) or jax.default_backend()
    return platform != "cpu"


def apply(
    params: dict[str, Any],
    tokens: jax.Array,
    spec: Spec,
    p: jax.Array | float | None = None,
    mask: jax.Array | None = None,
) -> Output:
    """Forward pass: tokens [B, T] int -> Output (logits [B, T, V], per-MoE-layer aux and stats).

    p: top-p threshold, a Python float or a traced scalar (so a sweep over p can be vmapped);
    default spec.moe.p. Ignored by routers that do not use p (top-k).
    mask: [B, T] bool, the positions the aux losses and routing statistics count (None: all).
    """
    _check_tokens(tokens, spec)
    if mask is not None and mask.shape != tokens.shape:
        raise ValueError(f"mask has shape {mask.shape}, tokens {tokens.shape}")
    top_p = spec.moe.p if p is None else p
    # FSDP: each layer's weights are gathered where used and the activations [B, T, d] pinned to the
    # batch split; otherwise the partitioner follows the d-split weights into the weight-gradient
    # matmuls and replicates the activations to get there ("involuntary full rematerialization")
    gather = _gathers_weights(spec)
    act = (lambda x: parallel.constrain(x, ("batch", "seq", None))) if gather else (lambda x: x)
    axes = param_axes(spec)
    weights = sharding.gather_weights if gather else (lambda w, _: w)
    group_axes = jax.tree.map(lambda a: a[1:], axes["groups"], is_leaf=lambda a: isinstance(a, tuple))  # one group
    body = lambda x, g: group_block(weights(g, group_axes), act(x), spec, top_p, mask)
    if spec.remat:
        body = jax.checkpoint(body)
    outer, outer_axes = ({k: v for k, v in tree.items() if k != "groups"} for tree in (params, axes))
    outer = weights(outer, outer_axes)
    x, (aux, stats) = jax.lax.scan(body, embed(outer, tokens, spec), params["groups"], unroll=spec.scan_unroll)
    return Output(logits_of(outer, act(x)), aux, stats)


def cross_entropy(logits: jax.Array, targets: jax.Array, weights: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(weighted mean loss [], per-token loss [B, T]) of logits [B, T, V] for integer targets [B, T]
    with weights [B, T] (0 for padding).

    nll = logsumexp(logits) - logits[target], the target's logit picked by a comparison with the
    vocabulary ids rather than a gather: the gather's gradient is a scatter into a [B, T, V] buffer,
    which on CPU cost more than the rest of the loss (the small preset's step: 287.7 vs 303.2 ms).
    """
    logits = logits.astype(jnp.float32)
    hit = targets[..., None].astype(jnp.int32) == jnp.arange(logits.shape[-1])  # [B, T, V]
    nll = jax.nn.logsumexp(logits, -1) - jnp.sum(jnp.where(hit, logits, 0.0), -1)
    return jnp.sum(nll * weights) / jnp.maximum(jnp.sum(weights), 1.0), nll


def loss(
    params: dict[str, Any],
    inputs: jax.Array,
    targets: jax.Array,
    weights: jax.Array,
    spec: Spec,
    p: jax.Array | float | None = None,
) -> tuple[jax.Array, tuple[Output, jax.Array]]:
    """Training objective: LM cross-entropy + the MoE layers' weighted aux losses, their mean or sum
    over layers (`spec.aux_layers`).

    inputs, targets [B, T] int, weights [B, T] (0 for padding). Returns (total [], (Output, LM loss [])),
    for `jax.value_and_grad(..., has_aux=True)`. With `spec.mask_padding` the aux losses and routing
    statistics count only the positions of weight > 0; otherwise every position, padding included.
    """
    if targets.shape != inputs.shape or weights.shape != inputs.shape:
        raise ValueError(f"inputs {inputs.shape}, targets {targets.shape} and weights {weights.shape} must match")
    out = apply(params, inputs, spec, p, weights > 0 if spec.mask_padding else None)
    lm, _ = cross_entropy(out.logits, targets, weights)
    return lm + layer_aux(out.aux["total"], spec), (out, lm)


def layer_aux(per_layer: jax.Array, spec: Spec) -> jax.Array:
    """[] the per-MoE-layer aux losses [G] reduced over layers as `spec.aux_layers` says (mean or sum)."""
    return jnp.mean(per_layer) if spec.aux_layers == "mean" else jnp.sum(per_layer)


def parameter_counts(spec: Spec) -> dict[str, int]:
    """Parameter counts from shapes only (`jax.eval_shape`, nothing allocated): total, the routed experts,
    and active = total - experts + one expert per MoE layer (what one token touches with top-1)."""
    shapes = jax.eval_shape(lambda: init(jax.random.key(0), spec))
    size = lambda tree: sum(math.prod(a.shape) for a in jax.tree.leaves(tree))
    total = size(shapes)
    experts = size(shapes["groups"]["moe"]["moe"]["experts"])
    return {"total": total, "experts": experts, "active_top1": total - experts + experts // spec.num_experts}
