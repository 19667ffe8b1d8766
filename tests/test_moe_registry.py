"""The choice tables: a router added through `psec_jax.routing.ROUTERS` alone works in the layer and in the
LM, and the LM reaches every dispatch (back-ends and the fused routing kernel) from its config."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from psec_jax import moe, routing
from psec_jax.configs import lm_moe
from psec_jax.models import runner
from psec_jax.models import train as lm_train
from psec_jax.models import transformer as tf
from psec_jax.testing import assert_trees_close

D, F, E = 8, 16, 4


def first2(logits, *, k, p, max_k, renormalize, probs=None):
    """The toy router: every token to experts 0 and 1, weighted by their probabilities."""
    probs = jax.nn.softmax(logits.astype(jnp.float32), -1) if probs is None else probs
    t = logits.shape[0]
    ids = jnp.broadcast_to(jnp.arange(2, dtype=jnp.int32), (t, 2))
    return routing.RouteOutput(
        ids, probs[:, :2], jnp.ones((t, 2), bool), jnp.full((t,), 2, jnp.int32), probs, logits, jnp.zeros((t,), bool)
    )


@pytest.fixture
def with_first2(monkeypatch):
    """ "first2" in the router table for one test (and so an LM stage of that name: nothing else is added)."""
    monkeypatch.setitem(routing.ROUTERS, "first2", routing.Router(first2, uses_k=False, uses_p=False))


def test_a_router_added_to_the_table_runs_in_the_layer(with_first2):
    params = moe.init_moe(jax.random.key(0), D, F, E)
    x = jax.random.normal(jax.random.key(1), (2, 5, D))
    tokens = x.reshape(-1, D)
    probs = jax.nn.softmax(tokens @ params["router"], -1)
    one = lambda e: moe.swiglu_expert(jax.tree.map(lambda w: w[e], params["experts"]), tokens)
    want = (probs[:, :1] * one(0) + probs[:, 1:2] * one(1)).reshape(x.shape)  # by hand: experts 0 and 1
    for backend in ("dense", "capacity", "dropless"):
        config = moe.MoEConfig(router="first2", backend=backend, capacity_factor=float(E))
        y, aux, stats = jax.jit(moe.moe_apply, static_argnums=2)(params, x, config)
        assert_trees_close(y, want)  # the float32 row of the tolerance table
        np.testing.assert_array_equal(stats["experts_per_token"], np.full((2, 5), 2))
        np.testing.assert_allclose(stats["expert_load"], [0.5, 0.5, 0.0, 0.0])
    layer = moe.MoE(num_experts=E, d_ff=F, config=moe.MoEConfig(router="first2"))
    variables = layer.init(jax.random.key(2), x)
    assert float(layer.apply(variables, x)[2]["experts_per_token_mean"]) == 2.0
    with pytest.raises(ValueError, match="router 'first2' has no fused kernel"):
        moe.MoEConfig(router="first2", dispatch="fused")


def test_a_router_added_to_the_table_runs_in_the_lm(with_first2):
    config = lm_moe.get_config("tiny")
    spec = lm_train.model_spec(config, "first2")
    assert spec.moe.router == "first2" and spec.moe.dynamic_weight == 0.0  # no threshold: no dynamic loss
    params = tf.init(jax.random.key(0), spec)
    tokens = jax.random.randint(jax.random.key(1), (2, 12), 0, config.data.vocab_size)
    out = jax.jit(lambda p, t: tf.apply(p, t, spec))(params, tokens)
    assert out.logits.shape == (2, 12, config.data.vocab_size) and bool(jnp.all(jnp.isfinite(out.logits)))
    np.testing.assert_array_equal(out.stats["experts_per_token"], np.full((spec.num_groups, 2, 12), 2))
    config.train.routers = ("first2",)  # the experiment takes it as a stage of that name
    runner.check_config(config)


def test_a_router_marked_fused_that_the_kernel_does_not_implement_is_refused(monkeypatch):
    from psec_jax.kernels import fused_routing

    monkeypatch.setitem(routing.ROUTERS, "first2", routing.Router(first2, uses_k=False, uses_p=False, fused=True))
    with pytest.raises(ValueError, match="marked fused, but the kernel implements only"):
        fused_routing.fused_route(jnp.zeros((4, E)), "first2", p=0.4)


def test_the_tables_are_restored_after_a_test(monkeypatch):
    with monkeypatch.context() as m:
        m.setitem(routing.ROUTERS, "first2", routing.Router(first2, uses_k=False, uses_p=False))
        assert moe.MoEConfig(router="first2").router == "first2"
    assert "first2" not in routing.ROUTERS
    with pytest.raises(ValueError, match="unknown router 'first2'"):
        moe.MoEConfig(router="first2")


def test_lm_stages_are_config_overrides_on_the_router_table():
    config = lm_moe.get_config("tiny")
    specs = {stage: lm_train.model_spec(config, stage).moe for stage in lm_train.ROUTERS}
    assert (specs["top1"].router, specs["top1"].k, specs["top2"].k) == ("top_k", 1, 2)
    assert specs["top_p"].router == "top_p" and specs["top_p"].p == config.router.p
    assert specs["top1"].dynamic_weight == 0.0 and specs["top_p"].dynamic_weight == config.router.dynamic_weight
    assert all(routing.ROUTERS[s["router"]] for s in lm_train.STAGES.values())
    assert lm_train.model_spec(config, "top3").moe.k == 3
    with pytest.raises(ValueError, match="unknown router 'top9'"):
        lm_train.model_spec(config, "top9")


@pytest.mark.parametrize("stage", ["top2", "top_p"])
def test_the_lm_reaches_every_dispatch_and_the_fused_kernel(stage):
    """Every causal back-end on one device, each with argsort and fused routing (the Pallas kernel in
    interpret mode), from `config.model`: the same forward pass as dropless + argsort."""
    config = lm_moe.get_config("tiny")
    tokens = jax.random.randint(jax.random.key(1), (2, 12), 0, config.data.vocab_size)
    outputs = {}
    for backend in (b for b in tf.BACKENDS if not moe.BACKENDS[b].mesh):
        for dispatch in ("argsort", "fused"):
            config.model.update({"backend": backend, "dispatch": dispatch})
            spec = lm_train.model_spec(config, stage)
            assert (spec.moe.backend, spec.moe.dispatch) == (backend, dispatch)
            params = tf.init(jax.random.key(0), spec)
            outputs[backend, dispatch] = jax.jit(tf.apply, static_argnums=2)(params, tokens, spec)
    want = outputs["dropless", "argsort"]
    for (backend, dispatch), out in outputs.items():
        assert_trees_close((out.logits, out.aux), (want.logits, want.aux))  # the tolerance table
        np.testing.assert_array_equal(
            out.stats["experts_per_token"], want.stats["experts_per_token"], err_msg=f"{backend}/{dispatch}"
        )
    assert dataclasses.replace(spec.moe, dispatch="argsort") != spec.moe  # the spec carries the dispatch
