"""Expert parallelism on 8 emulated devices equals the single-device layer (values and gradients)."""

import jax
import jax.numpy as jnp
import pytest

from psec_jax import moe, parallel
from psec_jax.testing import assert_trees_close

E, D, F, T = 8, 16, 32, 64


def loss_fn(backend, **kw):
    def loss(params, x):
        y, aux, stats = moe.moe_apply(params, x, router="top_p", p=0.6, backend=backend, **kw)
        return jnp.sum(y ** 2) + aux["total"], (y, stats["dropped_fraction"])
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))


@pytest.mark.parametrize("axes", [{"data": 2, "expert": 4}, {"data": 1, "fsdp": 2, "expert": 2, "model": 2},
                                  {"data": 8, "expert": 1}])
def test_expert_parallel_equals_one_device_values_and_gradients(axes):
    params = moe.init_moe(jax.random.key(0), D, F, E)
    x = jax.random.normal(jax.random.key(1), (T, D))
    (ref_l, (ref_y, _)), ref_g = loss_fn("dropless")(params, x)
    mesh = parallel.make_mesh(axes)
    with jax.set_mesh(mesh):
        # capacity E / k per device: C = T_local, nothing can be dropped
        (l, (y, dropped)), g = loss_fn("expert_parallel", capacity_factor=float(E), capacity_k=1.0)(params, x)
    assert float(dropped) == 0.0
    assert_trees_close((l, y, g), (ref_l, ref_y, ref_g))


def test_expert_parallel_drops_past_capacity_and_reports_it():
    params = moe.init_moe(jax.random.key(0), D, F, E)
    x = jax.random.normal(jax.random.key(1), (T, D))
    with jax.set_mesh(parallel.make_mesh({"data": 2, "expert": 4})):
        (_, (y, dropped)), _ = loss_fn("expert_parallel", capacity_factor=0.5, capacity_k=1.0)(params, x)
    assert 0.0 < float(dropped) < 1.0 and bool(jnp.all(jnp.isfinite(y)))


def test_expert_parallel_rejects_experts_that_do_not_split_over_the_axis():
    params = moe.init_moe(jax.random.key(0), D, F, 6)
    x = jax.random.normal(jax.random.key(1), (T, D))
    with jax.set_mesh(parallel.make_mesh({"data": 2, "expert": 4})):
        with pytest.raises(ValueError, match="6 experts do not split over the 'expert' axis of size 4"):
            moe.moe_apply(params, x, backend="expert_parallel")
