"""Every dispatch back-end against the loop-over-experts reference: values and gradients."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from psec_jax import moe
from psec_jax.testing import assert_no_recompile, assert_trees_close, tolerance

T, D, F = 48, 16, 24
ONE_DEVICE = [name for name, b in moe.BACKENDS.items() if not b.mesh]  # expert_parallel: tests/multidevice


def setup(e: int, activation: str = "swiglu", dtype=jnp.float32, seed: int = 0):
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    params = moe.init_moe(k1, D, F, e, activation=activation)
    x = jax.random.normal(k2, (T, D), dtype)
    return params, x


def make_route(params, x, router: str):
    logits = x.astype(jnp.float32) @ params["router"]
    config = moe.MoEConfig(router=router, k=min(2, logits.shape[-1]), p=0.4)
    return moe.route(logits * 3.0, config)  # sharper logits: a mix of 1..E experts


def loss_fn(backend: str, fixed: moe.RouteOutput, activation: str, **kw):
    """Scalar loss through a back-end; ids/mask fixed, weights recomputed so the router gets grads."""
    expert_fn = moe.EXPERTS[activation]

    def loss(x, experts, router):
        probs = jax.nn.softmax(3.0 * (x.astype(jnp.float32) @ router), -1)
        w = jnp.take_along_axis(probs, fixed.expert_ids, 1) * fixed.mask
        r = fixed.replace(weights=w, probs=probs)
        if backend == "loop":
            y = moe.loop_reference(x, r, expert_fn, experts)
        else:
            y = moe.dispatch(x, r, expert_fn, experts, moe.MoEConfig(backend=backend, **kw))[0]
        return jnp.sum(y.astype(jnp.float32) * jnp.cos(jnp.arange(D)))

    return loss


@pytest.mark.parametrize("router", ["top_k", "top_p"])
@pytest.mark.parametrize("backend", ["dense", "capacity", "dropless", "ragged"])
@pytest.mark.parametrize("e", [1, 8])
def test_backend_equals_loop_reference(backend, router, e):
    params, x = setup(e)
    r = make_route(params, x, router)
    kw = {"capacity_factor": float(e * r.num_slots), "block_size": 8} if backend != "dense" else {}
    kw = {k: v for k, v in kw.items() if (k == "capacity_factor") == (backend == "capacity")}
    ref = moe.loop_reference(x, r, moe.swiglu_expert, params["experts"])
    config = moe.MoEConfig(backend=backend, **kw)
    y, dropped = jax.jit(lambda x, p: moe.dispatch(x, r, moe.swiglu_expert, p, config))(x, params["experts"])
    rtol, atol = tolerance(jnp.float32)
    assert_trees_close(y, ref, rtol=rtol, atol=atol)
    assert float(dropped) == 0.0
    args = (x, params["experts"], params["router"])
    g_ref = jax.grad(loss_fn("loop", r, "swiglu"), argnums=(0, 1, 2))(*args)
    g = jax.jit(jax.grad(loss_fn(backend, r, "swiglu", **kw), argnums=(0, 1, 2)))(*args)
    assert_trees_close(g, g_ref, rtol=1e-4, atol=1e-5)


def test_gelu_experts_and_uneven_blocks():
    params, x = setup(4, activation="gelu", seed=3)
    r = make_route(params, x, "top_p")
    ref = moe.loop_reference(x, r, moe.gelu_expert, params["experts"])
    for block in (1, 5, 64):  # block 5 leaves partial blocks, 64 > any group
        y = moe.dropless(x, r, moe.gelu_expert, params["experts"], block_size=block)
        assert_trees_close(y, ref, rtol=1e-5, atol=1e-5)


def test_capacity_drops_and_reports_it():
    params, x = setup(8)
    r = moe.top_k(x @ params["router"] * 5.0, 2)
    y, dropped = moe.capacity(x, r, moe.swiglu_expert, params["experts"], capacity_factor=0.5)
    cap = moe.capacity_of(T, 8, 0.5, 2)
    counts = np.bincount(np.asarray(r.expert_ids).ravel(), minlength=8)
    want = np.maximum(counts - cap, 0).sum() / counts.sum()
    np.testing.assert_allclose(float(dropped), want, rtol=1e-6)
    assert want > 0
    # a large factor keeps everything and equals dropless
    big, none = moe.capacity(x, r, moe.swiglu_expert, params["experts"], capacity_factor=4.0)
    assert float(none) == 0.0
    assert_trees_close(big, moe.dropless(x, r, moe.swiglu_expert, params["experts"]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", ["dense", "capacity", "dropless"])
def test_no_recompile_when_routing_changes(backend):
    params, x = setup(8)
    config = moe.MoEConfig(router="top_p", backend=backend)
    fn = jax.jit(jax.grad(lambda p, x: jnp.sum(moe.moe_apply(p, x, config)[0] ** 2)))
    x2 = jax.random.normal(jax.random.PRNGKey(9), x.shape) * 3.0  # different group sizes
    assert_no_recompile(fn, params, x, next_args=lambda out: (params, x2 + out["router"].sum() * 0))


def test_moe_layer_under_jit_grad_vmap_and_bf16():
    layer = moe.MoE(num_experts=4, d_ff=F, config=moe.MoEConfig(router="top_p", p=0.4))
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 6, D))
    variables = layer.init(jax.random.PRNGKey(1), x)
    y, aux, stats = jax.jit(layer.apply)(variables, x)
    assert y.shape == x.shape and y.dtype == jnp.float32
    assert set(aux) == {"load_balance", "dynamic", "z", "total"}
    assert 1.0 <= float(stats["experts_per_token_mean"]) <= float(stats["experts_per_token_max"]) <= 4
    np.testing.assert_allclose(float(stats["expert_load"].sum()), 1.0, rtol=1e-6)

    def loss(v):
        y, aux, _ = layer.apply(v, x)
        return jnp.mean(y**2) + aux["total"]

    grads = jax.jit(jax.grad(loss))(variables)
    leaves = jax.tree.leaves(grads)
    assert all(np.all(np.isfinite(g)) for g in leaves) and all(float(jnp.abs(g).max()) > 0 for g in leaves)
    per_example = jax.vmap(lambda xi: layer.apply(variables, xi)[0])(x)  # vmap over a batch axis
    assert_trees_close(per_example, y, rtol=1e-5, atol=1e-6)
    y16, _, _ = jax.jit(layer.apply)(variables, x.astype(jnp.bfloat16))  # bf16 activations, fp32 params
    assert y16.dtype == jnp.bfloat16
    rtol, atol = tolerance(jnp.bfloat16)
    assert_trees_close(y16.astype(jnp.float32), y, rtol=5 * rtol, atol=5 * atol)
    x16 = x.astype(jnp.bfloat16)
    grads16 = jax.jit(jax.grad(lambda v: jnp.mean(layer.apply(v, x16)[0].astype(jnp.float32) ** 2)))(variables)
    grads32 = jax.jit(jax.grad(lambda v: jnp.mean(layer.apply(v, x)[0] ** 2)))(variables)
    assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads16))  # fp32 params get fp32 grads
    assert_trees_close(grads16, grads32, rtol=10 * rtol, atol=10 * atol)


def test_bad_arguments_fail_clearly():
    params, x = setup(4)
    with pytest.raises(ValueError, match="unknown dispatch back-end 'sparse'"):
        moe.MoEConfig(backend="sparse")
    with pytest.raises(ValueError, match="unknown router 'top_q'"):
        moe.MoEConfig(router="top_q")
    with pytest.raises(ValueError, match="x has d=7 but the router expects d=16"):
        moe.moe_apply(params, jnp.zeros((3, 7)))
    with pytest.raises(ValueError, match="saved_slots must be >= 0"):
        moe.MoEConfig(saved_slots=-1.0)
    with pytest.raises(ValueError, match="unknown routing dispatch 'sorted'"):
        moe.MoEConfig(dispatch="sorted")
    with pytest.raises(ValueError, match=r"top-p threshold p must be in \(0, 1\]"):
        moe.MoEConfig(p=1.5)
    with pytest.raises(ValueError, match="k must be a Python int"):
        moe.MoEConfig(k=2.0)
    with pytest.raises(ValueError, match="capacity_factor must be a finite number > 0"):
        moe.MoEConfig(capacity_factor=float("nan"))
    with pytest.raises(ValueError, match="unknown grouped matmul 'cutlass'"):
        moe.MoEConfig(grouped_matmul="cutlass")
    assert hash(moe.MoEConfig(k=3)) == hash(moe.MoEConfig(k=3))  # a jit static argument, a Flax field
    with pytest.raises(ValueError, match="unknown expert activation"):
        moe.init_moe(jax.random.PRNGKey(0), D, F, 4, activation="relu")


def test_tail_ladder_sizes_and_every_tail_size_is_exact():
    assert moe.tail_sizes(64) == (8, 16, 24, 32, 40, 48, 56, 64)
    assert moe.tail_sizes(5) == (5,) and moe.tail_sizes(300)[-1] == 300
    with pytest.raises(ValueError, match="block_size must be >= 1"):
        moe.tail_sizes(0)
    params, x = setup(3, seed=5)
    r = moe.top_k(x @ params["router"], 2)  # 96 assignments over 3 experts: tails of many sizes
    ref = moe.loop_reference(x, r, moe.swiglu_expert, params["experts"])
    for block in (8, 24, 40):
        y = moe.dropless(x, r, moe.swiglu_expert, params["experts"], block_size=block)
        assert_trees_close(y, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("saved_slots", [None, 0.0, 0.5])
def test_dropless_gradients_with_saved_recomputed_and_mixed_activations(saved_slots):
    """None keeps every row's activations, 0 recomputes every block, 0.5 (T/2 rows) mixes both;
    a plain function expert (not a SplitExpert) is always recomputed."""
    params, x = setup(4, seed=7)
    r = make_route(params, x, "top_p")
    assert int(r.mask.sum()) > T // 2  # so 0.5 really leaves rows to recompute
    args = (x, params["experts"], params["router"])
    g_ref = jax.grad(loss_fn("loop", r, "swiglu"), argnums=(0, 1, 2))(*args)
    kw = {"block_size": 8, "saved_slots": saved_slots}
    g = jax.jit(jax.grad(loss_fn("dropless", r, "swiglu", **kw), argnums=(0, 1, 2)))(*args)
    assert_trees_close(g, g_ref, rtol=1e-4, atol=1e-5)
    plain = lambda p, xs: moe.swiglu_expert(p, xs)
    grads = lambda expert: jax.grad(
        lambda x, experts: jnp.sum(moe.dropless(x, r, expert, experts, **kw) * jnp.cos(jnp.arange(D))), (0, 1)
    )(x, params["experts"])
    assert_trees_close(grads(plain), grads(moe.swiglu_expert), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", ["dropless", "capacity"])
def test_split_expert_layout_equals_stacked_and_returns_split_gradients(backend):
    """The split layout (a tuple of per-expert pytrees; dropless unrolls over it, the other back-ends
    stack it with the same `stack_experts`, so capacity stands for them) gives the stacked layout's
    outputs, and gradients in the split layout equal to the stacked gradients' slices."""
    params, x = setup(4, seed=11)
    r = make_route(params, x, "top_p")
    kw = {"block_size": 8} if backend == "dropless" else {}
    split = moe.split_experts(params["experts"])
    assert isinstance(split, tuple) and len(split) == 4 and split[2]["up"].shape == params["experts"]["up"].shape[1:]
    assert_trees_close(moe.stack_experts(split), params["experts"], rtol=0, atol=0)
    args = (x, params["experts"], params["router"])
    g_stacked = jax.jit(jax.grad(loss_fn(backend, r, "swiglu", **kw), argnums=(0, 1, 2)))(*args)
    g_split = jax.jit(jax.grad(loss_fn(backend, r, "swiglu", **kw), argnums=(0, 1, 2)))(x, split, params["router"])
    assert isinstance(g_split[1], tuple) and len(g_split[1]) == 4
    assert_trees_close(g_split[0], g_stacked[0], rtol=1e-5, atol=1e-6)
    assert_trees_close(moe.stack_experts(g_split[1]), g_stacked[1], rtol=1e-5, atol=1e-6)
    assert_trees_close(g_split[2], g_stacked[2], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="route has 4 experts but the expert params hold 3"):
        moe.dispatch(x, r, moe.swiglu_expert, split[:3], moe.MoEConfig(backend=backend, **kw))


@pytest.mark.parametrize("router", ["top_k", "top_p"])
def test_a_non_finite_token_is_nan_in_every_backend_and_leaves_the_others_alone(router):
    """One documented behaviour: the NaN token's output is NaN everywhere, ids stay in [0, E)."""
    params, x = setup(4)
    logits = (x.astype(jnp.float32) @ params["router"]).at[5, 1].set(jnp.nan).at[9].set(-jnp.inf)
    config = moe.MoEConfig(router=router, k=2, p=0.6)
    r = moe.route(logits, config)
    ok = np.ones(T, bool)
    ok[[5, 9]] = False
    ref = moe.loop_reference(x[ok], moe.route(logits[ok], config), moe.swiglu_expert, params["experts"])
    for backend in ONE_DEVICE:
        kw = {"capacity_factor": 8.0} if backend == "capacity" else {}
        y, dropped = moe.dispatch(x, r, moe.swiglu_expert, params["experts"], moe.MoEConfig(backend=backend, **kw))
        y = np.asarray(y)
        assert np.all(np.isnan(y[~ok])), backend
        np.testing.assert_allclose(y[ok], ref, *tolerance(jnp.float32), err_msg=backend)


@pytest.mark.parametrize("backend", ONE_DEVICE)
def test_zero_tokens_give_an_empty_output_and_zero_losses(backend):
    params, _ = setup(4)
    for router in ("top_k", "top_p"):
        config = moe.MoEConfig(router=router, backend=backend)
        y, aux, stats = jax.jit(moe.moe_apply, static_argnums=2)(params, jnp.zeros((2, 0, D)), config)
        assert y.shape == (2, 0, D) and stats["experts_per_token"].shape == (2, 0)
        assert all(float(v) == 0.0 for v in aux.values())
        assert float(stats["experts_per_token_max"]) == float(stats["truncated_fraction"]) == 0.0


def test_moe_input_rank_and_dtype_are_checked():
    params, x = setup(4)
    with pytest.raises(ValueError, match="rank-0"):
        moe.moe_apply(params, jnp.float32(1.0))
    with pytest.raises(TypeError, match="floating point, got dtype int32"):
        moe.moe_apply(params, x.astype(jnp.int32))
    y, _, stats = moe.moe_apply(params, x[0])  # rank 1: one token [d]
    assert y.shape == (D,) and stats["experts_per_token"].shape == ()
    np.testing.assert_allclose(y, moe.moe_apply(params, x[:1])[0][0], *tolerance(jnp.float32))
