"""Expert parallelism on 8 emulated devices equals the single-device layer (values and gradients)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from psec_jax import moe, parallel
from psec_jax.testing import assert_trees_close

E, D, F, T = 8, 16, 32, 64


def loss_fn(backend, **kw):
    def loss(params, x):
        y, aux, stats = moe.moe_apply(params, x, moe.MoEConfig(router="top_p", p=0.6, backend=backend, **kw))
        return jnp.sum(y**2) + aux["total"], (y, stats["dropped_fraction"])

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))


@pytest.mark.parametrize(
    "axes",
    [
        {"data": 2, "expert": 4},
        pytest.param({"data": 1, "fsdp": 2, "expert": 2, "model": 2}, marks=pytest.mark.slow),
        pytest.param({"data": 8, "expert": 1}, marks=pytest.mark.slow),
    ],
)
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
            moe.moe_apply(params, x, moe.MoEConfig(backend="expert_parallel"))


def test_emulated_ragged_all_to_all_matches_the_documented_example():
    # the example of jax.lax.ragged_all_to_all's docstring, axis of size 2
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:2]), ("x",), axis_types=(jax.sharding.AxisType.Auto,))
    args = [
        [[1, 2, 2], [3, 4, 0]],
        [[0] * 4] * 2,
        [[0, 1], [0, 1]],
        [[1, 2], [1, 1]],
        [[0, 0], [1, 2]],
        [[1, 1], [2, 1]],
    ]

    def one(op, out, *ints):
        return moe.ragged_all_to_all_emulated(op[0], out[0], *(i[0] for i in ints), axis_name="x")[None]

    fn = jax.jit(jax.shard_map(one, mesh=mesh, in_specs=P("x"), out_specs=P("x")))
    got = fn(*(jnp.asarray(a, jnp.float32 if i < 2 else jnp.int32) for i, a in enumerate(args)))
    np.testing.assert_array_equal(got, [[1, 3, 0, 0], [2, 2, 4, 0]])


@pytest.mark.parametrize(
    "axes",
    [{"data": 2, "expert": 4}, pytest.param({"data": 1, "fsdp": 2, "expert": 2, "model": 2}, marks=pytest.mark.slow)],
)
@pytest.mark.parametrize("skewed", [False, True])
def test_ragged_exchange_equals_one_device_and_drops_nothing(axes, skewed):
    params = moe.init_moe(jax.random.key(0), D, F, E)
    x = jax.random.normal(jax.random.key(1), (T, D))
    if skewed:  # every token goes to expert 0 (its top-p set is {0}): one device is sent every token
        x, params["router"] = jnp.abs(x), params["router"].at[:, 0].add(0.5)
    (ref_l, (ref_y, _)), ref_g = loss_fn("dropless")(params, x)
    with jax.set_mesh(parallel.make_mesh(axes)):
        # the default capacity (1.25) would drop; the ragged exchange has no capacity
        (l, (y, dropped)), g = loss_fn("expert_parallel", exchange="ragged_emulated")(params, x)
    assert float(dropped) == 0.0
    assert_trees_close((l, y, g), (ref_l, ref_y, ref_g))


def test_exchange_choice_on_cpu():
    params = moe.init_moe(jax.random.key(0), D, F, E)
    x = jax.random.normal(jax.random.key(1), (T, D))
    assert not moe.ragged_supported("cpu")  # XLA:CPU: "ragged-all-to-all is not supported"
    with jax.set_mesh(parallel.make_mesh({"data": 2, "expert": 4})):
        with pytest.raises(ValueError, match="ragged_all_to_all, which 'cpu' does not compile"):
            moe.moe_apply(params, x, moe.MoEConfig(backend="expert_parallel", exchange="ragged"))
        with pytest.raises(ValueError, match="unknown exchange 'magic'"):
            moe.MoEConfig(backend="expert_parallel", exchange="magic")
