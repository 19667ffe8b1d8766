"""Compiled per-device memory from abstract inputs on 8 emulated devices; the paper-size models lower
and compile there (~35 s, slow; benchmarks/paper_memory.py records their numbers)."""

import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from psec_jax import parallel
from psec_jax.configs import lm_moe as lm_config
from psec_jax.models import pipeline, sharding
from psec_jax.models import train as lm_train
from psec_jax.parallel import memory

ROOT = Path(__file__).parents[2]


def test_memory_of_a_sharded_lm_step_holds_each_device_s_shards():
    config = lm_config.get_config("tiny")
    config.model.backend = "expert_parallel"
    trainer = lm_train.make_train(config, "top_p")
    mesh = parallel.make_mesh({"data": 2, "fsdp": 2, "expert": 2})
    state_sh = sharding.state_shardings(trainer, mesh)
    state = memory.abstract(jax.eval_shape(trainer.init, jax.random.key(0)), state_sh)
    batch_sh = sharding.batch_sharding(mesh, ndim=3, batch_dim=1)
    batch = memory.abstract(
        pipeline.Batch(*(jax.ShapeDtypeStruct((1, 8, 16), t) for t in (jnp.int32, jnp.int32, jnp.float32, jnp.int8))),
        batch_sh,
    )
    with jax.set_mesh(mesh):
        step = jax.jit(trainer.chunk, in_shardings=(state_sh, batch_sh, None), out_shardings=(state_sh, None))
        report = memory.compiled_memory(step, state, batch, jax.ShapeDtypeStruct((), jnp.float32))
    per_device = memory.per_device_bytes(state)
    assert memory.tree_bytes(state) / 8 <= per_device < memory.tree_bytes(state)  # sharded, not replicated
    assert report["arguments"] >= per_device and report["temporaries"] > 0
    assert report["peak"] == report["arguments"] + report["outputs"] + report["temporaries"] - report["aliased"]


@pytest.mark.slow  # ~35 s; benchmarks/paper_memory.py compiles the same programs
def test_paper_configs_lower_and_compile_on_eight_devices():
    spec = importlib.util.spec_from_file_location("paper_memory", ROOT / "benchmarks" / "paper_memory.py")
    paper = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(paper)
    lm = paper.lm_row({"data": "2", "fsdp": "2", "expert": "2"}, "expert_parallel", batch_rows=64, microbatches=2)
    # params + two AdamW moments; experts (most of them) split 4 ways (expert x fsdp), the rest 2 (fsdp)
    assert lm["params_total"] > 3.4e9 * 4 and lm["state_per_device"] < 0.3 * 3 * lm["params_total"]
    for stage in ("pretrain", "expand"):
        row = paper.psec_row(stage, seeds=8, transitions=1_000_000)
        assert row["arguments"] > 0 and row["mesh"].startswith("data=8")
