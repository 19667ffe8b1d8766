"""The lm_moe transformer written in PyTorch, for the throughput comparison (`lm_train_throughput.py`).

    model = TorchLM.from_jax(params, spec)          # the same weights as psec_jax.models.transformer.init
    loss, lm = model.loss(inputs, targets, weights)   # LM cross-entropy + every MoE layer's weighted aux losses
    opt = adamw_like_optax(model, config)             # clip + AdamW with optax's schedule and decay mask

The same computation as `psec_jax.models.transformer` (moe_every = 1, float32): pre-norm blocks, RoPE
(rotate-half) causal attention, SwiGLU experts, the routers of `psec_jax.routing` (top-k with raw
weights, top-p: smallest prefix of the sorted probabilities whose cumulative sum exceeds p) and the aux
losses of `psec_jax.moe.losses`. Two choices are PyTorch's idiom rather than a transcription:
attention runs through `scaled_dot_product_attention` (what a PyTorch user writes; the same math), and
the MoE dispatch is the official Dynamic_MoE code's loop over experts (gather the tokens that chose an
expert, run it, `index_add_` the weighted outputs), as `moe_throughput.torch_loop` does.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def _tensor(a) -> torch.nn.Parameter:
    return torch.nn.Parameter(torch.from_numpy(np.array(a, np.float32)))


def rms_norm(x: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return x * torch.rsqrt(x.square().mean(-1, keepdim=True) + eps) * scale


def rope(x: torch.Tensor, base: float) -> torch.Tensor:
    """x [B, H, T, dh] rotated at positions 0..T-1 (rotate-half form, as the JAX model)."""
    t, dh = x.shape[-2], x.shape[-1]
    inv_freq = base ** (-torch.arange(0, dh // 2, dtype=torch.float32) / (dh // 2))
    angle = torch.arange(t, dtype=torch.float32)[:, None] * inv_freq  # [T, dh/2]
    cos, sin = angle.cos(), angle.sin()
    x1, x2 = x.chunk(2, -1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)


def route(
    logits: torch.Tensor, router: str, k: int, p: float, renormalize: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """logits [N, E] -> (probs [N, E], expert ids [N, S], weights [N, S] with 0 for unused slots); top-k
    weights renormalised to sum 1 when asked (top-p keeps raw probabilities)."""
    probs = logits.softmax(-1)
    if router == "top_k":
        weights, ids = probs.topk(k, -1)
        return probs, ids, weights / weights.sum(-1, keepdim=True) if renormalize else weights
    sorted_probs, ids = probs.sort(dim=-1, descending=True, stable=True)  # ties to the lower id
    over = sorted_probs.cumsum(-1) > p
    kept = (over.int().cumsum(-1) - over.int()) == 0  # no earlier slot crossed p
    return probs, ids, sorted_probs * kept


def aux_losses(logits, probs, ids, weights, mask, num_experts: int, norm: str, lb_w: float, dyn_w: float, z_w: float):
    """psec_jax.moe.losses over the tokens where mask [N] is 1: balance E * sum f P (f: share of
    assignments or of tokens, `norm`; no gradient), entropy, z."""
    used = ((weights > 0) & (mask[:, None] > 0)).flatten().float()
    counts = torch.zeros(num_experts).index_add_(0, ids.flatten(), used)
    n = mask.sum().clamp_min(1.0)
    f = counts / (counts.sum().clamp_min(1.0) if norm == "assignments" else n)
    mean = lambda v: (v * mask.reshape(-1, *([1] * (v.dim() - 1)))).sum(0) / n
    balance = num_experts * (f * mean(probs)).sum()
    entropy = -mean((probs * logits.log_softmax(-1)).sum(-1))
    z = mean(logits.logsumexp(-1).square())
    return lb_w * balance + dyn_w * entropy + z_w * z


class TorchLM(torch.nn.Module):
    """The lm_moe model (moe_every = 1) with parameters copied from a psec_jax parameter tree."""

    def __init__(self, params: dict, spec):
        super().__init__()
        if spec.moe_every != 1 or spec.dtype != "float32":
            raise ValueError("the PyTorch twin covers moe_every = 1 in float32 only")
        self.spec, m = spec, spec.moe
        self.router, self.k, self.p = m.router, m.k, m.p
        self.weights = (m.load_balance_weight, m.dynamic_weight, m.z_weight)
        if m.router not in ("top_k", "top_p") or m.router == "top_p" and m.renormalize or m.max_k is not None:
            raise ValueError(f"the PyTorch twin covers top_k and raw, untruncated top_p, got {m}")
        g = params["groups"]["moe"]
        layer = lambda tree, i: {k: _tensor(v[i]) for k, v in tree.items()}
        self.embed = _tensor(params["embed"])
        self.final_norm = _tensor(params["final_norm"])
        self.unembed = _tensor(params["unembed"])
        self.layers = torch.nn.ModuleList()
        for i in range(spec.num_groups):
            block = torch.nn.ParameterDict(
                {
                    "attn_norm": _tensor(g["attn_norm"][i]),
                    "ffn_norm": _tensor(g["ffn_norm"][i]),
                    "router": _tensor(g["moe"]["router"][i]),
                    **layer(g["attn"], i),
                }
            )
            block.experts = torch.nn.ModuleList(
                torch.nn.ParameterDict({k: _tensor(v[i, e]) for k, v in g["moe"]["experts"].items()})
                for e in range(spec.num_experts)
            )
            self.layers.append(block)

    @classmethod
    def from_jax(cls, params: dict, spec) -> TorchLM:
        return cls(params, spec)

    def attention(self, w, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        heads = lambda name: rope(torch.einsum("btd,dhk->bhtk", x, w[name]), self.spec.rope_base)
        v = torch.einsum("btd,dhk->bhtk", x, w["wv"])
        o = F.scaled_dot_product_attention(heads("wq"), heads("wk"), v, is_causal=True)  # [B, H, T, dh]
        return torch.einsum("bhtk,hkd->btd", o, w["wo"])

    def moe(self, block, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = x.reshape(-1, x.shape[-1])
        logits = tokens @ block["router"]
        probs, ids, weights = route(logits, self.router, self.k, self.p, self.spec.moe.renormalize)
        out = torch.zeros_like(tokens)
        for e, w in enumerate(block.experts):  # the official code's dispatch
            tok, slot = torch.nonzero((ids == e) & (weights > 0), as_tuple=True)
            if len(tok):
                h = tokens[tok]
                y = (F.silu(h @ w["gate"]) * (h @ w["up"])) @ w["down"]
                out.index_add_(0, tok, y * weights[tok, slot, None])
        norm = self.spec.moe.load_balance_norm
        aux = aux_losses(logits, probs, ids, weights, mask.flatten(), self.spec.num_experts, norm, *self.weights)
        return out.reshape(x.shape), aux

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens [B, T], mask [B, T] (positions the aux losses count; None: all) -> (logits [B, T, V], the
        layers' weighted aux losses [], their mean or sum over layers as `spec.aux_layers` says)."""
        mask = torch.ones(tokens.shape) if mask is None else mask.float()
        x, aux = self.embed[tokens], 0.0
        for block in self.layers:
            x = x + self.attention(block, rms_norm(x, block["attn_norm"]))
            y, a = self.moe(block, rms_norm(x, block["ffn_norm"]), mask)
            x, aux = x + y, aux + a
        aux = aux / len(self.layers) if self.spec.aux_layers == "mean" else aux
        return rms_norm(x, self.final_norm) @ self.unembed, aux

    def loss(self, inputs, targets, weights) -> tuple[torch.Tensor, torch.Tensor]:
        """(training objective [], LM loss []) as `transformer.loss`: weighted mean NLL + aux losses."""
        logits, aux = self(inputs, (weights > 0) if self.spec.mask_padding else None)
        nll = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
        lm = (nll * weights.flatten()).sum() / weights.sum().clamp_min(1.0)
        return lm + aux, lm


def adamw_like_optax(model: TorchLM, config) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """`psec_jax.models.train.optimizer` in PyTorch: AdamW (no decay on norms and routers) with optax's
    warmup-cosine schedule; clip the gradients' global norm to `config.optim.clip_norm` before `step`."""
    o, steps = config.optim, config.train.num_steps
    no_decay = lambda name: "norm" in name or "router" in name
    groups = [
        {"params": [p for n, p in model.named_parameters() if not no_decay(n)], "weight_decay": o.weight_decay},
        {"params": [p for n, p in model.named_parameters() if no_decay(n)], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=o.learning_rate, betas=(o.b1, o.b2), eps=1e-8)

    def fraction(step: int) -> float:  # optax.warmup_cosine_decay_schedule(0, lr, warmup, steps, end)
        if step < o.warmup_steps:
            return step / o.warmup_steps
        t = min(step - o.warmup_steps, steps - o.warmup_steps) / max(steps - o.warmup_steps, 1)
        return o.final_lr_fraction + (1 - o.final_lr_fraction) * 0.5 * (1 + math.cos(math.pi * t))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, fraction)


def train_step(model: TorchLM, opt, schedule, clip_norm: float, inputs, targets, weights) -> torch.Tensor:
    """One gradient step; returns the objective (detached)."""
    opt.zero_grad(set_to_none=True)
    total, _ = model.loss(inputs, targets, weights)
    total.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
    opt.step()
    schedule.step()
    return total.detach()
