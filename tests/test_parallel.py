"""psec_jax.parallel on one device: mesh specs and their errors, logical-axis rules, the LM's parameter
axes, sweeps (the multi-device behaviour is in tests/multidevice, run by test_multidevice.py)."""

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import PartitionSpec as P

from psec_jax import moe, parallel
from psec_jax.models import sharding
from psec_jax.models import transformer as tf
from psec_jax.testing import assert_trees_close


def test_mesh_shape_resolves_the_free_axis_and_names_every_bad_spec():
    assert parallel.mesh_shape({"data": -1, "expert": 4}, 8) == {"data": 2, "fsdp": 1, "expert": 4, "model": 1}
    assert parallel.mesh_shape(parallel.get_config(), 8)["data"] == 8
    bad = [
        ({"data": 2, "expert": 2}, 8, r"data=2 x fsdp=1 x expert=2 x model=1 needs 4 devices, but 8 are available"),
        ({"data": -1, "expert": 3}, 8, "the fixed axes take 3 devices, which does not divide the 8"),
        ({"data": -1, "model": -1}, 8, "only one mesh axis may be -1"),
        ({"data": 0}, 1, "mesh axis 'data' must be a positive int or -1"),
        ({"data": 2.0}, 2, "mesh axis 'data' must be a positive int"),
        ({"tensor": 2}, 2, r"unknown mesh axes \['tensor'\]"),
    ]
    for spec, n, message in bad:
        with pytest.raises(ValueError, match=message):
            parallel.mesh_shape(spec, n)
    with pytest.raises(ValueError, match="needs 2 devices, but 1 are available"):
        parallel.make_mesh({"data": 2})


def test_logical_rules_never_reuse_a_mesh_axis_and_fit_any_shape():
    assert parallel.logical_spec(("expert", "embed", "mlp")) == P("expert", "fsdp", "model")
    assert parallel.logical_spec(("batch", None)) == P(("data", "fsdp", "expert"), None)
    with pytest.raises(ValueError, match=r"no sharding rule for logical axes \['channels'\]"):
        parallel.logical_spec(("channels",))
    mesh = jax.sharding.AbstractMesh((2, 1, 4, 1), parallel.AXES)
    assert parallel.fit_spec(P("expert", "fsdp"), (6, 8), mesh) == P(None, None)  # 6 experts over 4: replicated
    assert parallel.fit_spec(P(("data", "expert"), None), (16, 3), mesh) == P(("data", "expert"), None)


@pytest.mark.parametrize("preset", [dict(moe_every=1), dict(moe_every=2, d_ff=64)])
def test_every_lm_parameter_has_logical_axes(preset):
    """The axes are declared where init creates each parameter (`tf.init_boxed`); `tf.param_axes` holds them."""
    spec = tf.Spec(vocab_size=64, d_model=16, num_layers=2, num_heads=2, num_experts=4, d_ff_expert=32, **preset)
    shapes = jax.eval_shape(lambda: tf.init(jax.random.key(0), spec))
    declared = jax.eval_shape(lambda: tf.init_boxed(jax.random.key(0), spec))
    axes = sharding.logical_axes(declared)
    assert axes == tf.param_axes(spec)
    flat = jax.tree.leaves(axes, is_leaf=lambda x: isinstance(x, tuple))
    assert all(len(a) == s.ndim for a, s in zip(flat, jax.tree.leaves(shapes)))
    assert jax.tree.structure(axes, is_leaf=lambda x: isinstance(x, tuple)) == jax.tree.structure(shapes)
    assert axes["groups"]["moe"]["moe"]["experts"]["gate"] == ("layers", "expert", "embed", "mlp")
    assert sharding.param_specs(declared)["embed"] == P("model", "fsdp")
    if "dense" in shapes["groups"]:
        assert axes["groups"]["dense"]["ffn"]["down"] == ("layers", None, "mlp", "embed")
    with pytest.raises(ValueError, match=r"parameter \['bias'\] of shape \(3,\) declares no logical axes"):
        sharding.logical_axes({"bias": jnp.zeros(3)})


def test_sweep_on_one_device_equals_jit_vmap_in_both_member_modes():
    fn = lambda key, scale: (jax.random.normal(key, (3,)) * scale, jnp.sum(scale))
    keys = jax.random.split(jax.random.key(0), 4)
    ref = jax.jit(jax.vmap(fn, in_axes=(0, None)))(keys, jnp.float32(2.0))
    for members in ("vmap", "map"):
        assert_trees_close(parallel.sweep(fn, (0, None), members=members)(keys, jnp.float32(2.0)), ref)
    with pytest.raises(ValueError, match="members must be one of"):
        parallel.sweep(fn, members="pmap")
    with pytest.raises(ValueError, match=r"mapped arguments must share one member count, got \[3, 4\]"):
        parallel.sweep(fn, (0, 0))(keys, jnp.ones(3))


def test_expert_parallel_without_a_mesh_is_a_clear_error():
    params = moe.init_moe(jax.random.key(0), 8, 16, 4)
    with pytest.raises(ValueError, match="expert_parallel dispatch needs a device mesh"):
        moe.moe_apply(params, jnp.ones((8, 8)), moe.MoEConfig(backend="expert_parallel"))
