"""On 8 emulated devices: sharded sweeps and sharded LM training give what one device gives."""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from psec_jax import parallel
from psec_jax.configs import lm_moe as lm_config
from psec_jax.models import pipeline, sharding
from psec_jax.models import train as lm_train
from psec_jax.rl import config as rl_config
from psec_jax.rl import policy, train
from psec_jax.testing import assert_trees_close


def test_psec_stage_sweep_splits_seeds_over_devices_and_equals_one_device():
    sys.path.insert(0, str(Path(__file__).parents[1]))  # the suite's helpers
    from rl_helpers import ACT, OBS, random_data
    from test_rl_train import stage_config

    actor = policy.make_actor(rl_config.network_config("tiny"), OBS, ACT, "lora")
    trainer = train.make_pretrain(actor, stage_config(steps=4))
    keys, data = jax.random.split(jax.random.key(3), 8), random_data(256)
    one = jax.devices()[0]
    ref = jax.jit(jax.vmap(trainer.train, in_axes=(0, None, None)))(
        jax.device_put(keys, one), train.PretrainInputs(), jax.device_put(data, one)
    )
    run = parallel.sweep(trainer.train, in_axes=(0, None, None))
    out = run(keys, train.PretrainInputs(), data)
    assert run.mesh(keys, train.PretrainInputs(), data).shape["data"] == 8
    leaf = out[1]["bc_loss"]
    assert len({s.device for s in leaf.addressable_shards}) == 8 and leaf.addressable_shards[0].data.shape[0] == 1
    assert_trees_close((out[0].params, out[0].ema, out[1]), (ref[0].params, ref[0].ema, ref[1]))
    # arguments committed to one device (a frozen base made there) are moved onto the sweep's devices
    on_one = jax.device_put(keys, one)
    assert_trees_close(run(on_one, train.PretrainInputs(), jax.device_put(data, one))[1], ref[1])
    # 6 seeds: the default mesh takes the 6 devices that divide them; a given 8-device mesh refuses
    assert parallel.sweep(trainer.train, (0, None, None)).mesh(keys[:6], train.PretrainInputs(), data).size == 6
    with pytest.raises(ValueError, match="6 members do not split over the 8 devices of mesh axis 'data'"):
        parallel.sweep(trainer.train, (0, None, None), mesh=parallel.make_mesh())(
            keys[:6], train.PretrainInputs(), data
        )


def tiny_lm(backend):
    config = lm_config.get_config("tiny")
    config.model.update({"backend": backend, "dtype": "float32"})
    return lm_train.make_train(config, "top_p")


def random_batches(steps=2, rows=8, length=16, vocab=384):
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, vocab, (steps, rows, length + 1)).astype(np.int32)
    return pipeline.Batch(
        tokens[..., :-1],
        tokens[..., 1:],
        np.ones((steps, rows, length), np.float32),
        np.full((steps, rows, length), -1, np.int8),
    )


@pytest.mark.parametrize("backend", [pytest.param("dropless", marks=pytest.mark.slow), "expert_parallel"])
def test_lm_chunk_sharded_fsdp_data_expert_equals_one_device(backend):
    trainer = tiny_lm(backend)
    batches = jax.tree.map(jnp.asarray, random_batches())
    state = trainer.init(jax.random.key(0))
    mesh = parallel.make_mesh({"data": 2, "fsdp": 2, "expert": 2})
    if backend == "dropless":
        ref_state, ref = jax.jit(trainer.chunk)(state, batches, jnp.float32(0.4))
    else:  # the reference: the same model with dropless dispatch on one device
        ref_state, ref = jax.jit(tiny_lm("dropless").chunk)(state, batches, jnp.float32(0.4))
    state_sh = sharding.state_shardings(trainer, mesh)
    batch_sh = sharding.batch_sharding(mesh, ndim=3, batch_dim=1)
    assert batch_sh.spec == P(None, ("data", "fsdp", "expert"), None)
    sharded = sharding.sharded_init(trainer, mesh)(jax.random.key(0))  # created sharded, equal to init
    assert_trees_close(sharded.params, state.params)
    with jax.set_mesh(mesh):
        chunk = jax.jit(trainer.chunk, in_shardings=(state_sh, batch_sh, None), out_shardings=(state_sh, None))
        new_state, metrics = chunk(sharded, jax.device_put(batches, batch_sh), jnp.float32(0.4))
    gate = new_state.params["groups"]["moe"]["moe"]["experts"]["gate"]  # [G, E, d, f]
    assert gate.sharding.spec == P(None, "expert", "fsdp", None) and gate.addressable_shards[0].data.shape == (
        2,
        2,
        16,
        32,
    )
    assert_trees_close((metrics["loss"], metrics["total_loss"]), (ref["loss"], ref["total_loss"]))
    assert_trees_close(new_state.params, ref_state.params)  # after 2 AdamW steps


def test_constrain_pins_logical_axes_on_auto_axes_only():
    mesh = parallel.make_mesh({"data": 2, "fsdp": 2, "expert": 2})
    x = jnp.zeros((8, 4, 6))
    with jax.set_mesh(mesh):
        y = jax.jit(lambda a: parallel.constrain(a, ("batch", None, "embed")))(x)
        w = jax.jit(lambda a: parallel.constrain(a, ("batch", None, None)))(jnp.zeros((3, 4)))  # 3 rows: not split
    want = jax.sharding.NamedSharding(mesh, P(("data", "fsdp", "expert"), None, None))  # fsdp taken by batch
    assert y.sharding.is_equivalent_to(want, 3)
    assert w.sharding.is_fully_replicated
    assert parallel.constrain(x, ("batch", None, None)) is x  # no mesh: unchanged

    def inside(a):  # inside shard_map over data, only fsdp and expert are left to constrain
        return parallel.constrain(a, ("batch", None, None))

    with jax.set_mesh(mesh):
        out = jax.jit(jax.shard_map(inside, mesh=mesh, in_specs=P("data"), out_specs=P("data"), axis_names={"data"}))(x)
    assert out.shape == x.shape
