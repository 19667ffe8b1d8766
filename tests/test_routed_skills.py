"""Routed skill composition (`psec_jax.routed`): a route over the skill library in place of dense weights."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from psec_jax import lora, moe, routed
from psec_jax.lora.core import LoRAPair
from psec_jax.testing import assert_trees_close

T, K, D, R, OUT = 12, 6, 8, 2, 5
SCALE = 16.0


def _problem(seed=0):
    ks = jax.random.split(jax.random.key(seed), 6)
    x = jax.random.normal(ks[0], (T, D))
    kernel, bias = jax.random.normal(ks[1], (D, OUT)), jax.random.normal(ks[2], (OUT,))
    adapters = LoRAPair(0.3 * jax.random.normal(ks[3], (K, D, R)), 0.3 * jax.random.normal(ks[4], (K, R, OUT)))
    logits = 2.0 * jax.random.normal(ks[5], (T, K))
    return x, kernel, bias, adapters, logits


def _scales():
    return jnp.full((K,), SCALE)


@pytest.mark.parametrize("backend", routed.BACKENDS)
def test_p_one_keeps_every_skill_and_equals_dense_composition(backend):
    x, kernel, bias, adapters, logits = _problem()
    config = moe.MoEConfig(router="top_p", p=1.0, max_k=K, backend=backend)
    r = routed.route_skills(logits, config, _scales())
    assert np.all(np.asarray(r.route.experts_per_token) == K)
    weights = jax.nn.softmax(logits, -1) * SCALE  # the dense composer's weights: every skill, its probability
    assert_trees_close(
        lora.lora_dense(x, kernel, bias, adapters, r), lora.lora_dense(x, kernel, bias, adapters, weights)
    )


def test_top1_is_the_selected_skill_alone():
    x, kernel, bias, adapters, logits = _problem(1)
    r = routed.route_skills(logits, moe.MoEConfig(router="top_k", k=1), _scales())
    got = lora.lora_dense(x, kernel, bias, adapters, r)
    best, prob = jnp.argmax(logits, -1), jax.nn.softmax(logits, -1).max(-1)
    for t in range(T):  # the base layer plus skill best[t] at weight prob[t] * scale
        one = LoRAPair(adapters.a[best[t]][None], adapters.b[best[t]][None])
        want = lora.lora_dense(x[t], kernel, bias, one, (prob[t] * SCALE)[None])
        assert_trees_close(got[t], want)


def test_grouped_computation_equals_a_loop_over_states():
    x, kernel, bias, adapters, logits = _problem(2)
    r = routed.route_skills(logits, moe.MoEConfig(router="top_p", p=0.6, backend="dropless"), _scales())
    counts = np.asarray(r.route.experts_per_token)
    assert 1 < counts.mean() < K and counts.min() >= 1  # some states one skill, some several
    got = lora.lora_dense(x, kernel, bias, adapters, r)
    ids, w, mask = (np.asarray(v) for v in (r.route.expert_ids, r.route.weights, r.route.mask))
    for t in range(T):
        want = x[t] @ kernel + bias
        for slot in np.flatnonzero(mask[t]):
            i = ids[t, slot]
            want = want + w[t, slot] * SCALE * (x[t] @ adapters.a[i]) @ adapters.b[i]
        assert_trees_close(got[t], want)
    assert_trees_close(got, lora.lora_dense(x, kernel, bias, adapters, r.dense_weights()))


def test_gradients_reach_the_router_and_the_selected_adapters():
    x, kernel, bias, adapters, _ = _problem(3)
    router = jax.random.normal(jax.random.key(9), (D, K))
    config = moe.MoEConfig(router="top_p", p=0.6, backend="dropless")

    def loss(router, adapters, dense=False, aux=True):
        r = routed.route_skills(x @ router, config, _scales())
        y = lora.lora_dense(x, kernel, bias, adapters, r.dense_weights() if dense else r)
        return jnp.sum(y**2) + (routed.aux_losses(r)["total"] if aux else 0.0)

    g_router, g_adapters = jax.jit(jax.grad(loss, argnums=(0, 1)))(router, adapters)
    assert np.all(np.isfinite(np.asarray(g_router))) and float(jnp.abs(g_router).sum()) > 0
    # through the routing weights alone (no aux loss): the gradient of the same composition taken densely
    through_route = jax.grad(lambda rt: loss(rt, adapters, aux=False))(router)
    through_dense = jax.grad(lambda rt: loss(rt, adapters, dense=True, aux=False))(router)
    assert float(jnp.abs(through_route).max()) > 0
    assert_trees_close(through_route, through_dense, rtol=1e-4, atol=1e-3 * float(jnp.abs(through_dense).max()))
    selected = np.unique(
        np.asarray(routed.route_skills(x @ router, config).route.expert_ids)[
            np.asarray(routed.route_skills(x @ router, config).route.mask)
        ]
    )
    per_skill = np.asarray(jnp.abs(g_adapters.a).sum((1, 2)) + jnp.abs(g_adapters.b).sum((1, 2)))
    assert np.all(per_skill[selected] > 0) and np.all(per_skill[np.setdiff1d(np.arange(K), selected)] == 0)


def test_lora_dense_layer_takes_a_route_under_jit_and_checks_its_shapes():
    x, kernel, bias, adapters, logits = _problem(4)
    r = routed.route_skills(logits, moe.MoEConfig(router="top_p", p=0.5), _scales())
    layer = lora.LoRADense(OUT)
    variables = {"params": {"kernel": kernel, "bias": bias}, lora.LORA_COLLECTION: {"kernel": adapters}}
    y = jax.jit(lambda v, x, r: layer.apply(v, x, r))(variables, x, r)
    assert_trees_close(y, lora.lora_dense(x, kernel, bias, adapters, r.dense_weights()))
    stats = routed.routing_stats(r)
    assert float(stats["experts_per_token_mean"]) == pytest.approx(float(np.asarray(r.route.experts_per_token).mean()))
    with pytest.raises(ValueError, match="route of 12 states"):
        lora.lora_dense(x[:5], kernel, bias, adapters, r)
    with pytest.raises(ValueError, match="states, K"):
        routed.route_skills(logits[0], moe.MoEConfig())
    with pytest.raises(ValueError, match="scales"):
        routed.route_skills(logits, moe.MoEConfig(), jnp.ones(3))
    with pytest.raises(ValueError, match="back-end"):  # capacity would drop selected skills silently
        routed.route_skills(logits, moe.MoEConfig(backend="capacity"))
    with pytest.raises(ValueError, match="k=8 exceeds the library's 6 skills"):
        routed.route_skills(logits, moe.MoEConfig(router="top_k", k=8))
