"""On 8 emulated devices: PSEC's `config.mesh.data` splits every stage's seeds over that many devices,
with the results of the default split."""

import sys
from pathlib import Path

import jax
import ml_collections
import pytest

from psec_jax import parallel
from psec_jax.rl import config as rl_config
from psec_jax.rl import pipeline, policy, train
from psec_jax.testing import assert_trees_close


def test_psec_stage_seeds_split_over_config_mesh_data(tmp_path):
    sys.path.insert(0, str(Path(__file__).parents[1]))  # the suite's helpers
    from rl_helpers import ACT, OBS, random_data
    from test_rl_train import stage_config

    actor = policy.make_actor(rl_config.network_config("tiny"), OBS, ACT, "lora")
    trainer = train.make_pretrain(actor, stage_config(steps=4))
    keys, data = jax.random.split(jax.random.key(3), 8), random_data(256)
    inputs = jax.tree.map(lambda x: x, train.PretrainInputs())
    outs = {}
    for n in (-1, 2):
        config = ml_collections.ConfigDict({"seeds": 8})
        state, _ = pipeline.run_stage(
            trainer, keys, inputs, data, workdir=tmp_path / str(n), config=config, devices=n, desc=f"mesh{n}"
        )
        outs[n] = state
        devices = {s.device for s in jax.tree.leaves(state.params)[0].addressable_shards}
        assert len(devices) == (8 if n == -1 else 2)
    assert_trees_close(outs[2].params, outs[-1].params)
    # a stage of one seed (a shared pi_0) with mesh.data=2 runs on one device
    one, _ = pipeline.run_stage(
        trainer, keys[:1], inputs, data, workdir=tmp_path / "one", config=config, desc="one", devices=2
    )
    assert_trees_close(jax.tree.map(lambda x: x[0], one.params), jax.tree.map(lambda x: x[0], outs[-1].params))
    with pytest.raises(ValueError, match="config.mesh.data=16: only 8 devices"):
        parallel.members_mesh(16, 8)
