"""Fused routing: one Pallas kernel from router logits to everything dispatch needs.

Per block of `block_tokens` tokens the kernel reads the logits once and writes

- the softmax probabilities [T, E] (float32),
- the kept experts, their weights and the slot mask [T, K] (K = k for top-k, max_k for top-p),
- each slot's rank among the earlier tokens of its block with the same (slot, expert) key, and
- the block's counts per (slot, key) [K, E + 1] (key E: a slot not in use).

A few [num_blocks, K, E + 1] prefix sums in jnp then turn ranks into each slot's destination row in
expert-grouped order (`positions`) and give the per-expert counts, so the grouped matmul needs no
global argsort. Grid steps are independent (no carry between blocks), so the grid may run in parallel.

Selection: Pallas has no sort lowering, so the kernel runs rounds of max extraction (the largest
remaining probability, ties to the lower expert id, as `lax.top_k`), accumulating the top-p
cumulative sum left to right as `psec_jax.routing.routers.sequential_cumsum` does, which makes the
kernel's kept set the reference's exactly, given the same probabilities. Top-p stops as soon as
every token of the block has crossed p (the remaining slots are unused and their layout is known),
so a block costs its largest kept count of rounds, not max_k. A round is two vector reductions over
E per token, against O(E log E) for a sort, plus the within-block ranks: one [B, B] @ [B, E + 2]
matmul (a strictly lower-triangular mask times the slot's one-hot keys), which suits the MXU and
tensor cores.

Platforms: the kernel picks its lowering from the platform it is lowered for
(`jax.lax.platform_dependent`), never from the caller: Mosaic on TPU; Pallas interpret mode on CPU;
on NVIDIA GPUs Pallas' Triton path, with every array padded to a power of two as Triton needs
(experts with -inf logits, never selected; slots and one-hot keys past those in use; blocks of at
most `GPU_BLOCK_TOKENS`) and cut back outside, so every platform returns the same arrays. Mosaic
GPU's Pallas lowering (jax 0.10.2) refuses the kernel's row reductions ("No support for axes yet"),
wants a layout cast on every iota and copies of >= 128 bytes; Triton takes the kernel as written. It
is deprecated from jax 0.11 (a DeprecationWarning at lowering), still there in 0.11.2.

Both return a `RouteOutput` with `positions` [T, K] and `counts` [E] set.
`fused_route_reference` is the pure-jnp statement of the same outputs (the `psec_jax.routing` routers
and a stable argsort); tests compare the two in interpret mode on CPU. The kernel's `custom_vjp`
passes gradients to the logits through the probabilities (weights are probabilities at the kept ids).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as pltriton

from psec_jax.routing import ROUTERS, RouteOutput, invert_permutation, routers, sort_assignments

MAX_BLOCK_TOKENS = 1024  # the kernel holds a [B, B] float32 mask for the within-block ranks
# Triton holds a block's arrays in registers: [B, keys] of 8192 float32 fit 8 warps of sm_90 without spills
# (Triton 3.6 + ptxas, E = 64: 243 registers; at 4 warps, 255 and spills), so the block shrinks as E grows.
GPU_BLOCK_TOKENS = 64
GPU_BLOCK_ELEMENTS = 8192


class _KernelOut(NamedTuple):
    """The kernel's arrays, cut to the T real tokens (block counts: one row per grid step)."""

    probs: jax.Array  # [T, E] float32 softmax of the logits
    ids: jax.Array  # [T, K] int32 experts by descending probability (unused slots: unspecified)
    weights: jax.Array  # [T, K] float32 probabilities of the kept experts, 0 elsewhere (bad tokens: NaN, 0, ...)
    mask: jax.Array  # [T, K] int32 1 where the slot is in use
    rank: jax.Array  # [T, K] int32 rank among the block's earlier tokens with the same (slot, key)
    truncated: jax.Array  # [T, 1] int32 1 where top-p wanted more than K slots
    block_counts: jax.Array  # [NB, K, E + 1] int32 per block, slot and key (key E: slot not in use)


class _Routed(NamedTuple):
    """What every platform's branch returns: the same shapes whatever its block and padding."""

    probs: jax.Array  # [T, E] float32
    ids: jax.Array  # [T, K] int32
    weights: jax.Array  # [T, K] float32
    mask: jax.Array  # [T, K] int32
    truncated: jax.Array  # [T, 1] int32
    positions: jax.Array  # [T, K] int32 destination row of each slot in expert-grouped order
    counts: jax.Array  # [E] int32 assignments per expert


class _Layout(NamedTuple):
    """Static sizes of one platform's kernel: Triton wants powers of two, Mosaic and interpret mode not."""

    block: int  # tokens per grid step
    experts: int  # E, or the power of two above it (padded experts: -inf logits, never selected)
    slots: int  # K, or the power of two above it (padded slots: never written)
    keys: int  # width of the one-hot (slot, key) rows: E + 2, or a power of two >= 16 above it
    counts: int  # width of the block counts: E + 1, or `keys`


def _pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def _layout(platform: str, block: int, e: int, slots: int) -> _Layout:
    if platform != "cuda":
        return _Layout(block, e, slots, e + 2, e + 1)
    keys = _pow2(max(16, e + 2))  # 16: Triton's smallest dot operand
    block = min(GPU_BLOCK_TOKENS, _pow2(block), GPU_BLOCK_ELEMENTS // keys)
    return _Layout(max(16, block), _pow2(e), _pow2(slots), keys, keys)


# The selection rules the kernel's code implements (k slots; the smallest prefix whose mass crosses p). A
# router marked `fused` in the table must be one of them: any other is refused, never run as top-p.
KERNEL_RULES = ("top_k", "top_p")


def _check(logits: jax.Array, rule: str, k: int | None, p, max_k: int | None) -> int:
    """Validates the arguments; returns the slot count K."""
    if rule not in ROUTERS or not ROUTERS[rule].fused:
        raise ValueError(f"unknown routing rule {rule!r}; choose from {fused_rules()}")
    if rule not in KERNEL_RULES:
        raise ValueError(f"router {rule!r} is marked fused, but the kernel implements only {KERNEL_RULES}")
    routers.check_logits(logits)
    e = logits.shape[-1]
    if rule == "top_k":
        return routers.check_count("k", k, e)
    routers.check_p(p)
    return e if max_k is None else routers.check_count("max_k", max_k, e)


def fused_rules() -> tuple[str, ...]:
    """The routers of `psec_jax.routing.ROUTERS` this kernel implements (those marked `fused`)."""
    return tuple(name for name, r in ROUTERS.items() if r.fused)


def fused_route_reference(
    logits: jax.Array,
    rule: str,
    *,
    k: int | None = None,
    p=None,
    max_k: int | None = None,
    renormalize: bool = False,
    probs: jax.Array | None = None,
) -> RouteOutput:
    """The pure-jnp reference: the table's top-k / top-p router and a stable argsort by expert.

    logits [T, E]; rule "top_k" (k slots) or "top_p" (threshold p, max_k slots, default E).
    probs: [T, E] probabilities to select from instead of the softmax of logits; given the kernel's
    own, the selection (ids, mask, positions, counts, truncated, weights) must match it bit for bit.
    """
    _check(logits, rule, k, p, max_k)
    r = ROUTERS[rule].route(logits, k=k, p=p, max_k=max_k, renormalize=renormalize, probs=probs)
    t, kk = r.expert_ids.shape
    order, sizes, _ = sort_assignments(r)  # the back-ends' stable argsort; positions invert it
    return r.replace(positions=invert_permutation(order).reshape(kk, t).T, counts=sizes)


def _kernel(
    logits_ref,
    p_ref,
    probs_ref,
    ids_ref,
    w_ref,
    mask_ref,
    rank_ref,
    trunc_ref,
    counts_ref,
    *,
    rule: str,
    slots: int,
    num_experts: int,
    num_tokens: int,
    block: int,
    keys: int,
):
    e = num_experts
    ep, kp, cw = logits_ref.shape[-1], ids_ref.shape[-1], counts_ref.shape[-1]  # padded on GPU
    x = logits_ref[...].astype(jnp.float32)  # [B, Ep]
    real = pl.program_id(0) * block + jax.lax.broadcasted_iota(jnp.int32, (block, 1), 0) < num_tokens  # [B, 1]
    z = jnp.exp(x - jnp.max(x, axis=-1, keepdims=True))
    probs = z / jnp.sum(z, axis=-1, keepdims=True)
    probs_ref[...] = probs
    col = jax.lax.broadcasted_iota(jnp.int32, (block, ep), 1)
    bad = jnp.min(jnp.where(jnp.isfinite(probs), 1, 0), axis=-1, keepdims=True) == 0  # [B, 1]
    remaining = jnp.where(bad, jnp.where(col == 0, 1.0, 0.0), probs)  # bad rows sort like a one-hot
    if ep > e:  # padded experts sort below every real one
        remaining = jnp.where(col < e, remaining, -1.0)
    p = p_ref[0, 0]
    key_col = jax.lax.broadcasted_iota(jnp.int32, (block, keys), 1)
    earlier = (
        jax.lax.broadcasted_iota(jnp.int32, (block, block), 1) < jax.lax.broadcasted_iota(jnp.int32, (block, block), 0)
    ).astype(jnp.float32)
    slot_col = jax.lax.broadcasted_iota(jnp.int32, (block, kp), 1)

    def one_round(carry):  # extract the j-th largest remaining probability
        j, remaining, csum, crossed, ids, weights, mask, ranks = carry
        top = jnp.max(remaining, axis=-1, keepdims=True)  # [B, 1]
        idx = jnp.min(jnp.where(remaining == top, col, e), axis=-1, keepdims=True)  # ties: lower id
        remaining = jnp.where(col == idx, -1.0, remaining)
        kept = jnp.ones_like(crossed) if rule == "top_k" else ~crossed
        csum = csum + top
        crossed = crossed | (csum > p)
        kept = jnp.where(bad, j == 0, kept)
        idx = jnp.where(bad, 0, idx)
        w = jnp.where(kept, jnp.where(bad, jnp.nan, top), 0.0)  # a bad token: NaN in its one kept slot
        key = jnp.where(real, jnp.where(kept, idx, e), e + 1)  # e: slot not in use, e + 1: padding row
        onehot = (key_col == key).astype(jnp.float32)  # [B, keys]
        rank = jnp.sum(jnp.dot(earlier, onehot, preferred_element_type=jnp.float32) * onehot, axis=-1, keepdims=True)
        count = jnp.sum(onehot, axis=0, keepdims=True)
        counts_ref[0, pl.ds(j, 1), :] = (count if cw == keys else count[:, :cw]).astype(jnp.int32)
        at = slot_col == j
        return (
            j + 1,
            remaining,
            csum,
            crossed,
            jnp.where(at, idx, ids),
            jnp.where(at, w, weights),
            jnp.where(at, kept.astype(jnp.int32), mask),
            jnp.where(at, rank.astype(jnp.int32), ranks),
        )

    def more(carry):  # top-p stops once every real token of the block has crossed p
        j, crossed = carry[0], carry[3]
        # a max over int32, not jnp.any: Triton has no boolean reduction
        return (j < slots) if rule == "top_k" else (j < slots) & (jnp.max((real & ~crossed).astype(jnp.int32)) > 0)

    # Slots the loop does not reach are unused by every real token: key e, rank = the token's index
    # in the block (real tokens come first), block count of key e = the number of real tokens.
    n_real = jnp.sum(real.astype(jnp.int32))
    counts_ref[0] = jnp.where(jax.lax.broadcasted_iota(jnp.int32, (kp, cw), 1) == e, n_real, 0)
    zeros = lambda dtype: jnp.zeros((block, kp), dtype)
    init = (
        0,
        remaining,
        jnp.zeros((block, 1), jnp.float32),
        jnp.zeros((block, 1), bool),
        zeros(jnp.int32),
        zeros(jnp.float32),
        zeros(jnp.int32),
        jax.lax.broadcasted_iota(jnp.int32, (block, kp), 0),
    )
    _, _, _, crossed, ids, weights, mask, ranks = jax.lax.while_loop(more, one_round, init)
    ids_ref[...] = ids
    w_ref[...] = weights
    mask_ref[...] = mask
    rank_ref[...] = ranks
    trunc = (~crossed) & (~bad) & real & (slots < e) if rule == "top_p" else jnp.zeros_like(crossed)
    trunc_ref[...] = trunc.astype(jnp.int32)


def _run_kernel(
    logits: jax.Array, p: jax.Array, rule: str, slots: int, layout: _Layout, platform: str, interpret: bool
) -> _KernelOut:
    """One pallas_call over blocks of `layout.block` tokens, padded as `layout` says and cut back.

    platform: "tpu" (Mosaic) or "cuda" (Triton) picks the compiler parameters; ignored in interpret mode.
    """
    t, e = logits.shape
    block, ep, kp = layout.block, layout.experts, layout.slots
    nb = max(1, pl.cdiv(t, block))
    padded = jnp.pad(logits, ((0, nb * block - t), (0, 0)))
    if ep > e:
        padded = jnp.pad(padded, ((0, 0), (0, ep - e)), constant_values=-jnp.inf)
    rows = lambda width: pl.BlockSpec((block, width), lambda i: (i, 0))
    out_shape = (
        jax.ShapeDtypeStruct((nb * block, ep), jnp.float32),  # probs
        jax.ShapeDtypeStruct((nb * block, kp), jnp.int32),  # ids
        jax.ShapeDtypeStruct((nb * block, kp), jnp.float32),  # weights
        jax.ShapeDtypeStruct((nb * block, kp), jnp.int32),  # mask
        jax.ShapeDtypeStruct((nb * block, kp), jnp.int32),  # rank within block
        jax.ShapeDtypeStruct((nb * block, 1), jnp.int32),  # truncated
        jax.ShapeDtypeStruct((nb, kp, layout.counts), jnp.int32),
    )  # block counts per (slot, key)
    kernel = functools.partial(
        _kernel, rule=rule, slots=slots, num_experts=e, num_tokens=t, block=block, keys=layout.keys
    )
    params = None
    if not interpret:
        params = {
            "tpu": pltpu.CompilerParams(dimension_semantics=("parallel",)),  # blocks independent
            "cuda": pltriton.CompilerParams(num_warps=8 if block * layout.keys > 4096 else 4),
        }[platform]
    outs = pl.pallas_call(
        kernel,
        out_shape=out_shape,
        grid=(nb,),
        in_specs=[rows(ep), pl.BlockSpec((1, 1), lambda i: (0, 0))],
        out_specs=(
            rows(ep),
            rows(kp),
            rows(kp),
            rows(kp),
            rows(kp),
            rows(1),
            pl.BlockSpec((1, kp, layout.counts), lambda i: (i, 0, 0)),
        ),
        interpret=interpret,
        compiler_params=params,
        name=f"fused_{rule}_routing",
    )(padded, jnp.reshape(p, (1, 1)).astype(jnp.float32))
    probs, ids, weights, mask, rank, trunc, block_counts = outs
    return _KernelOut(
        probs[:t, :e],
        *(o[:t, :slots] for o in (ids, weights, mask, rank)),
        trunc[:t],
        block_counts[:, :slots, : e + 1],
    )


def _routed(
    logits: jax.Array, p: jax.Array, *, rule: str, slots: int, block: int, platform: str, interpret: bool = False
) -> _Routed:
    """The kernel with `platform`'s layout ("cpu", "tpu" or "cuda"; interpret mode runs any of them),
    then a few [NB, K, E + 1] prefix sums from its block counts and ranks to each slot's destination
    row (`Sorted`'s layout) and the per-expert counts."""
    t, e = logits.shape
    layout = _layout(platform, block, e, slots)
    out = _run_kernel(logits, p, rule, slots, layout, platform, interpret)
    totals = out.block_counts.sum(0)  # [K, E + 1] per (slot, key)
    group = totals.sum(0)  # [E + 1] assignments per key
    base = (jnp.cumsum(group) - group)[None, None, :]  # where each key's group starts
    base = base + (jnp.cumsum(totals, 0) - totals)[None]  # then earlier slots of that key
    base = base + jnp.cumsum(out.block_counts, 0) - out.block_counts  # then earlier blocks: [NB, K, E + 1]
    keys = jnp.where(out.mask == 1, out.ids, e)
    block_of = jnp.arange(t) // layout.block
    positions = base[block_of[:, None], jnp.arange(slots)[None, :], keys] + out.rank
    return _Routed(
        out.probs,
        out.ids,
        out.weights,
        out.mask,
        out.truncated,
        positions.astype(jnp.int32),
        group[:e].astype(jnp.int32),
    )


def _select(logits: jax.Array, p: jax.Array, rule: str, slots: int, block: int, interpret: bool | None) -> _Routed:
    """The kernel for the platform it is lowered for: every branch is traced, one is lowered."""
    branch = lambda platform, interpret=False: functools.partial(
        _routed, rule=rule, slots=slots, block=block, platform=platform, interpret=interpret
    )
    if interpret:
        return branch("cpu", True)(logits, p)
    compiled = {"tpu": branch("tpu"), "cuda": branch("cuda")}
    if interpret is None:
        compiled["cpu"] = branch("cpu", True)  # the only way to run a Pallas kernel there
    return jax.lax.platform_dependent(logits, p, **compiled)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _route_arrays(logits, p, rule, slots, block, interpret):
    return _select(logits, p, rule, slots, block, interpret)


def _route_fwd(logits, p, rule, slots, block, interpret):
    out = _select(logits, p, rule, slots, block, interpret)
    return out, (out.probs, out.ids, out.mask, jnp.zeros((0,), logits.dtype), p)  # (0-size: carries the dtype)


def _route_bwd(rule, slots, block, interpret, res, g: _Routed):
    """Gradients reach the logits through the probabilities: directly, and as the kept weights."""
    probs, ids, mask, like, p = res
    g_probs, g_weights = g.probs, g.weights
    finite = jnp.all(jnp.isfinite(probs), axis=-1, keepdims=True)  # bad tokens' weights are constants
    g_w = jnp.where((mask == 1) & finite, g_weights, 0.0)
    g_total = g_probs + jnp.zeros_like(probs).at[jnp.arange(probs.shape[0])[:, None], ids].add(g_w)
    g_logits = probs * (g_total - jnp.sum(g_total * probs, axis=-1, keepdims=True))  # softmax vjp
    return g_logits.astype(like.dtype), jnp.zeros_like(p)


_route_arrays.defvjp(_route_fwd, _route_bwd)


def fused_route(
    logits: jax.Array,
    rule: str,
    *,
    k: int | None = None,
    p=None,
    max_k: int | None = None,
    renormalize: bool = False,
    block_tokens: int = 256,
    interpret: bool | None = None,
) -> RouteOutput:
    """Route with the fused kernel: a `RouteOutput` with `positions` and `counts` set (the layout of
    `psec_jax.routing.Sorted`: slot j of token t is assignment j * T + t, valid assignments
    grouped by expert, slot-major then by token within an expert, unused slots after them all).
    Given the same probabilities its selection equals `fused_route_reference`'s bit for bit; its
    softmax may differ from `jax.nn.softmax` by an ulp, so near the threshold the two can keep
    different experts. Differentiable in reverse mode (`custom_vjp`), not forward mode.

    Args:
      logits: [T, E] router logits (any float dtype; T may be 0 and need not divide the block).
      rule: a router of `psec_jax.routing.ROUTERS` marked `fused`: "top_k" (k slots) or "top_p"
        (threshold p in (0, 1], max_k slots, default E).
      renormalize: weights sum to 1 over the kept experts (applied after the kernel).
      block_tokens: tokens per grid step, a multiple of 8 up to MAX_BLOCK_TOKENS (on GPU: the power
        of two above it, at most GPU_BLOCK_TOKENS; the outputs do not depend on the block).
      interpret: True: Pallas interpret mode everywhere; False: compiled (Mosaic on TPU, Triton on
        NVIDIA GPUs; lowering for CPU fails); None (default): compiled, but interpret mode on CPU.
        The platform is the one the computation is lowered for, not the default backend.
    """
    slots = _check(logits, rule, k, p, max_k)
    if not 8 <= block_tokens <= MAX_BLOCK_TOKENS or block_tokens % 8:
        raise ValueError(f"block_tokens must be a multiple of 8 in [8, {MAX_BLOCK_TOKENS}], got {block_tokens}")
    t = logits.shape[0]
    threshold = jnp.asarray(1.0 if p is None else p, jnp.float32)
    block = int(min(block_tokens, max(8, -(-t // 8) * 8)))
    probs, ids, weights, mask, trunc, positions, counts = _route_arrays(
        logits, threshold, rule, slots, block, interpret
    )
    mask = mask == 1
    if renormalize:  # masked: a bad token's NaN must stay in its one slot
        weights = jnp.where(mask, routers.renormalize_weights(weights), 0.0)
    return RouteOutput(
        ids,
        weights,
        mask,
        mask.sum(-1).astype(jnp.int32),
        probs,
        logits,
        trunc[:, 0] == 1,
        positions,
        counts,
    )
