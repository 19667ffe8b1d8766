"""The fused routing kernel (interpret mode on CPU) against its pure-jnp reference.

Selection is compared bit for bit given the same probabilities (the reference run on the kernel's
own softmax); the kernel's softmax against the reference's to the float32 tolerance (XLA's CPU
reduction over a block can round the denominator differently from one over all tokens).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from psec_jax import moe
from psec_jax.kernels import fused_route, fused_route_reference, fused_routing
from psec_jax.routing import sort_assignments
from psec_jax.testing import assert_trees_close, tolerance

FIELDS = ("expert_ids", "weights", "mask", "experts_per_token", "truncated", "positions", "counts")


def adversarial(t: int, e: int, seed: int = 0) -> np.ndarray:
    """Random rows plus ties, a uniform row, a dominant expert, NaN, +inf, all -inf and some -inf."""
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(t, e)) * 2).astype(np.float32)
    special = [np.zeros(e), np.full(e, 3.0), np.eye(1, e, e // 2)[0] * 30]
    if e >= 3:
        tie = rng.normal(size=e)
        tie[[0, 2]] = tie.max() + 1  # two equal leaders, not adjacent
        special.append(tie)
    nan = rng.normal(size=e)
    nan[e - 1] = np.nan
    some_inf = rng.normal(size=e)
    some_inf[: e // 2] = -np.inf
    special += [nan, np.where(np.arange(e) == 0, np.inf, 0.0), np.full(e, -np.inf), some_inf]
    x[: len(special)] = np.stack(special)
    return x


def assert_same_selection(got, want):
    """Every field equal; expert ids only in used slots (elsewhere unspecified by `RouteOutput`)."""
    np.testing.assert_array_equal(got.mask, want.mask)
    for f in FIELDS:
        a, b = np.asarray(getattr(got, f)), np.asarray(getattr(want, f))
        if f == "expert_ids":
            a, b = np.where(got.mask, a, -1), np.where(want.mask, b, -1)
        np.testing.assert_array_equal(a, b, err_msg=f)


CASES = [
    ("top_k", dict(k=1)),
    ("top_k", dict(k=3)),
    ("top_p", dict(p=0.4)),
    ("top_p", dict(p=0.9, max_k=2)),
    ("top_p", dict(p=1.0)),
]


@pytest.mark.parametrize("e", [1, 5, 64])  # 64: above the jnp router's pairwise-sort and partial-sort sizes
@pytest.mark.parametrize("rule, kw", CASES)
def test_kernel_equals_reference(rule, kw, e):
    if kw.get("k", 1) > e or kw.get("max_k", 1) > e:
        pytest.skip("more slots than experts")
    logits = adversarial(45, e)  # 45 tokens: not a multiple of the 16-token block
    got = jax.jit(lambda l: fused_route(l, rule, block_tokens=16, **kw))(logits)
    assert_same_selection(got, fused_route_reference(logits, rule, probs=got.probs, **kw))
    want = fused_route_reference(logits, rule, **kw)
    finite = np.all(np.isfinite(np.asarray(want.probs)), -1)
    np.testing.assert_allclose(np.asarray(got.probs)[finite], np.asarray(want.probs)[finite], *tolerance(jnp.float32))
    assert np.all(np.isnan(np.asarray(got.probs)[~finite])) and (~finite).sum() == 3  # NaN, +inf, all -inf
    ids = np.asarray(got.expert_ids)
    assert ids.min() >= 0 and ids.max() < e
    sort = sort_assignments(want.replace(positions=None, counts=None))  # the back-ends' argsort
    order = np.zeros(ids.size, np.int64)
    order[np.asarray(got.positions).T.reshape(-1)] = np.arange(ids.size)
    np.testing.assert_array_equal(order, sort.order)
    np.testing.assert_array_equal(got.counts, sort.sizes)


def test_hand_worked_example():
    """3 experts, p = 0.6, probabilities chosen by hand (logits = log probs):
    token 0 [0.5, 0.3, 0.2]: 0.5 <= 0.6, 0.8 > 0.6 -> experts 0, 1
    token 1 [0.1, 0.7, 0.2]: 0.7 > 0.6 -> expert 1
    token 2 [0.25, 0.25, 0.5]: 0.5, then 0.75 > 0.6 -> experts 2, 0 (tie to the lower id)
    Expert-grouped, slot-major: expert 0 <- (slot 0, t0), (slot 1, t2); expert 1 <- (0, t1), (1, t0);
    expert 2 <- (0, t2); then the unused slots (1, t1), (2, t0), (2, t1), (2, t2)."""
    probs = np.array([[0.5, 0.3, 0.2], [0.1, 0.7, 0.2], [0.25, 0.25, 0.5]], np.float32)
    r = fused_route(jnp.log(probs), "top_p", p=0.6, block_tokens=8)
    np.testing.assert_array_equal(np.where(r.mask, r.expert_ids, -1), [[0, 1, -1], [1, -1, -1], [2, 0, -1]])
    np.testing.assert_array_equal(r.counts, [2, 2, 1])
    # positions[t, j]: t0 slot 0 -> 0, t2 slot 1 -> 1, t1 slot 0 -> 2, t0 slot 1 -> 3, t2 slot 0 -> 4,
    # unused: t1 slot 1 -> 5, t0 slot 2 -> 6, t1 slot 2 -> 7, t2 slot 2 -> 8
    np.testing.assert_array_equal(r.positions, [[0, 3, 6], [2, 5, 7], [4, 1, 8]])


@pytest.mark.parametrize("e, max_k", [(8, None), (64, 20)])
def test_exact_float32_boundaries(e, max_k):
    """p equal to a token's own cumulative sum (kernel's probabilities, summed left to right)."""
    logits = (np.random.default_rng(e).normal(size=(64, e)) * 1.5).astype(np.float32)
    route = jax.jit(lambda l, p: fused_route(l, "top_p", p=p, max_k=max_k, block_tokens=16))
    probs = np.asarray(route(logits, 0.5).probs)
    sums = np.cumsum(-np.sort(-probs, -1), -1, dtype=np.float32)
    for t, j in [(0, 0), (1, 1), (3, 4)]:
        p = sums[t, j]
        got = route(logits, p)
        np.testing.assert_array_equal(got.probs, probs)
        assert int(got.experts_per_token[t]) == min(j + 2, max_k or e)  # slot j's sum is not > p
        assert_same_selection(got, fused_route_reference(logits, "top_p", p=p, max_k=max_k, probs=got.probs))


@pytest.mark.parametrize("rule, kw", [("top_k", dict(k=3)), ("top_p", dict(p=0.5))])
def test_bf16_logits_zero_tokens_and_renormalize(rule, kw):
    logits = jnp.asarray(adversarial(20, 6)).astype(jnp.bfloat16)  # with the NaN / inf rows
    got = fused_route(logits, rule, renormalize=True, block_tokens=8, **kw)
    assert got.probs.dtype == got.weights.dtype == jnp.float32
    assert_same_selection(got, fused_route_reference(logits, rule, renormalize=True, probs=got.probs, **kw))
    w, finite = np.asarray(got.weights), np.all(np.isfinite(np.asarray(got.probs)), -1)
    np.testing.assert_allclose(w[finite].sum(-1), 1.0, rtol=1e-6)
    assert np.all(np.isnan(w[~finite, 0])) and np.all(w[~finite, 1:] == 0)  # the NaN stays in its one slot
    empty = fused_route(jnp.zeros((0, 6)), "top_k", k=2)
    assert empty.expert_ids.shape == empty.positions.shape == (0, 2) and empty.counts.tolist() == [0] * 6


@pytest.mark.parametrize(
    "rule, kw, e",
    [
        ("top_k", dict(k=3), 8),
        ("top_p", dict(p=0.5, max_k=3), 8),
        ("top_p", dict(p=0.5, renormalize=True), 8),
        pytest.param("top_p", dict(p=0.7), 64, marks=pytest.mark.slow),
    ],
)
def test_gradients_equal_the_reference(rule, kw, e):
    """Through the router weights (logits = x @ W): a loss on the weights, the probabilities and the
    aux losses; then through the logits with a NaN token, whose gradient is NaN in both."""
    kx, kw_, kc = jax.random.split(jax.random.PRNGKey(e), 3)
    x, w = jax.random.normal(kx, (40, 12)), jax.random.normal(kw_, (12, e))
    slots = kw.get("k", kw.get("max_k", e))
    c_w, c_p = jax.random.normal(kc, (40, slots)), jnp.sin(jnp.arange(40 * e).reshape(40, e))
    fused = lambda l: fused_route(l, rule, block_tokens=16, **kw)
    ref = lambda l: fused_route_reference(l, rule, **kw)

    def loss(route_fn, aux=True):
        def f(logits):
            r = route_fn(logits)
            ok = jnp.isfinite(r.probs).all(-1, keepdims=True)
            out = jnp.sum(jnp.where(ok, r.weights * c_w, 0.0)) + jnp.sum(jnp.where(ok, r.probs * c_p, 0.0))
            return out + (moe.aux_losses(r)["total"] if aux else 0.0)

        return f

    through_w = lambda route_fn: jax.grad(lambda w, x: loss(route_fn)(x @ w), (0, 1))
    assert_trees_close(jax.jit(through_w(fused))(w, x), through_w(ref)(w, x))
    logits = (x @ w).at[3, 1].set(jnp.nan)
    got, want = jax.jit(jax.grad(loss(fused, aux=False)))(logits), jax.grad(loss(ref, aux=False))(logits)
    assert np.all(np.isnan(np.asarray(got)[3])) and np.all(np.isnan(np.asarray(want)[3]))
    assert_trees_close(np.delete(np.asarray(got), 3, 0), np.delete(np.asarray(want), 3, 0))


def test_traced_and_vmapped_threshold():
    logits = jnp.asarray(adversarial(30, 8)[8:])
    ps = jnp.array([0.2, 0.5, 0.95])
    batched = jax.jit(jax.vmap(lambda p: fused_route(logits, "top_p", p=p, block_tokens=8)))(ps)
    for i, p in enumerate(np.asarray(ps)):
        one = fused_route(logits, "top_p", p=float(p), block_tokens=8)
        for f in FIELDS:
            np.testing.assert_array_equal(np.asarray(getattr(batched, f))[i], np.asarray(getattr(one, f)), err_msg=f)


@pytest.mark.parametrize("router", ["top_k", "top_p"])
def test_moe_layer_with_fused_dispatch_equals_argsort(router):
    """The back-ends that take the kernel's positions (capacity with drops, so priority order counts)."""
    params = moe.init_moe(jax.random.PRNGKey(0), 16, 24, 8)
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 20, 16))
    for backend in ("dropless", "capacity", "ragged"):
        config = moe.MoEConfig(router=router, k=2, p=0.5, backend=backend, capacity_factor=0.5, capacity_k=1.0)
        apply = jax.jit(moe.moe_apply, static_argnums=2)
        got, want = apply(params, x, dataclasses.replace(config, dispatch="fused")), apply(params, x, config)
        assert_trees_close(got, want)
        if backend == "capacity":
            assert float(got[2]["dropped_fraction"]) > 0.1
    config = lambda dispatch: moe.MoEConfig(router=router, p=0.5, dispatch=dispatch)
    loss = lambda dispatch: lambda p, x: jnp.mean(moe.moe_apply(p, x, config(dispatch))[0] ** 2)
    assert_trees_close(
        jax.jit(jax.grad(loss("fused"), (0, 1)))(params, x), jax.grad(loss("argsort"), (0, 1))(params, x)
    )


@pytest.mark.parametrize(
    "rule, kw, e", [("top_k", dict(k=3), 5), ("top_p", dict(p=0.9, max_k=2), 5), ("top_p", dict(p=0.4), 64)]
)
def test_gpu_layout_in_interpret_mode_equals_reference(rule, kw, e):
    """The Triton branch's layout (experts, slots and keys padded to powers of two, 16-token blocks) run
    in interpret mode: the same selection, positions and probabilities as the unpadded kernel."""
    logits = adversarial(45, e)
    slots = kw.get("k", kw.get("max_k", e))
    p = jnp.float32(kw.get("p", 1.0))
    run = lambda l: fused_routing._routed(l, p, rule=rule, slots=slots, block=16, platform="cuda", interpret=True)
    assert fused_routing._layout("cuda", 16, e, slots)[1:] != (e, slots, e + 2, e + 1)  # something is padded
    got, cpu = jax.jit(run)(logits), fused_route(logits, rule, block_tokens=16, **kw)
    mask = got.mask == 1
    np.testing.assert_array_equal(mask, cpu.mask)
    np.testing.assert_array_equal(np.where(mask, got.ids, -1), np.where(cpu.mask, cpu.expert_ids, -1))
    np.testing.assert_array_equal(got.probs, cpu.probs)  # -inf padding leaves the softmax's sums alone
    for f, want in (("weights", cpu.weights), ("positions", cpu.positions), ("counts", cpu.counts)):
        np.testing.assert_array_equal(getattr(got, f), want, err_msg=f)
    np.testing.assert_array_equal(got.truncated[:, 0] == 1, cpu.truncated)


def test_no_silent_fallback_to_interpret_mode():
    """The platform picks the lowering: no branch for ROCm, and interpret=False has none for CPU."""
    f = jax.jit(lambda l: fused_route(l, "top_p", p=0.4).positions)
    with pytest.raises(NotImplementedError, match="not found for platform rocm"):
        jax.export.export(f, platforms=["rocm"])(jax.ShapeDtypeStruct((64, 8), jnp.float32))
    with pytest.raises(NotImplementedError, match="not found for platform cpu"):
        fused_route(jnp.zeros((4, 8)), "top_k", k=2, interpret=False)


def test_bad_arguments_fail_clearly():
    logits = jnp.zeros((4, 8))
    with pytest.raises(ValueError, match="unknown routing rule 'top_q'"):
        fused_route(logits, "top_q")
    for bad in (12, 2048):
        with pytest.raises(ValueError, match=rf"block_tokens must be a multiple of 8 in \[8, 1024\], got {bad}"):
            fused_route(logits, "top_k", k=2, block_tokens=bad)
    with pytest.raises(ValueError, match=r"k must be in \[1, E=8\]"):
        fused_route(logits, "top_k", k=9)
    with pytest.raises(ValueError, match=r"p must be in \(0, 1\]"):
        fused_route(logits, "top_p", p=1.5)
    with pytest.raises(TypeError, match="floating point"):
        fused_route(logits.astype(jnp.int32), "top_p", p=0.5)
    with pytest.raises(ValueError, match="unknown routing dispatch 'sorted'"):
        moe.MoEConfig(dispatch="sorted")


# Export lowers for a platform without its device (it compiles nothing): Mosaic TPU, and Pallas' Triton
# path for NVIDIA GPUs, which XLA compiles on the device (its custom call has no compatibility guarantee,
# so export's check for it is turned off). CPU lowers the interpret-mode branch: no custom call.
LOWERINGS = {"tpu": "tpu_custom_call", "cuda": "__gpu$xla.gpu.triton"}
# jax >= 0.11 reads the GPU Triton lowers for from a device: on a host without one, an abstract H100
H100 = jax.sharding.AbstractDevice(device_kind="NVIDIA H100 80GB HBM3", num_cores=132, platform="gpu")
GPU_TARGET = jax.sharding.AbstractMesh((1,), ("x",), axis_types=(jax.sharding.AxisType.Auto,), abstract_device=H100)


@pytest.mark.parametrize("platform", ["tpu", "cuda"])
@pytest.mark.parametrize(
    "rule, kw, e",
    [
        ("top_p", dict(p=0.4), 16),
        ("top_k", dict(k=2), 16),
        ("top_p", dict(p=0.4, max_k=8), 64),
        ("top_k", dict(k=3), 5),
    ],
)
def test_kernel_lowers_for_accelerators(platform, rule, kw, e):
    """Forward (positions) and backward (through the weights and probabilities) of 1000 tokens."""
    target = LOWERINGS[platform]
    fwd = jax.jit(lambda l: fused_route(l, rule, **kw).positions)
    loss = lambda r: jnp.sum(r.weights) + jnp.sum(r.probs)
    bwd = jax.jit(jax.grad(lambda l: loss(fused_route(l, rule, **kw))))
    export = functools.partial(
        jax.export.export,
        platforms=[platform],
        disabled_checks=[jax.export.DisabledSafetyCheck.custom_call(LOWERINGS["cuda"])],
    )
    for f in (fwd, bwd):
        with jax.sharding.use_abstract_mesh(GPU_TARGET) if platform == "cuda" else contextlib.nullcontext():
            text = export(f)(jax.ShapeDtypeStruct((1000, e), jnp.float32)).mlir_module()
        assert target in text and not any(t in text for t in LOWERINGS.values() if t != target)
    cpu = jax.export.export(fwd, platforms=["cpu"])(jax.ShapeDtypeStruct((1000, e), jnp.float32)).mlir_module()
    assert not any(t in cpu for t in LOWERINGS.values())
