"""The PyTorch twin of the LM (benchmarks/torch_lm.py) computes what psec_jax's does, so that the
throughput benchmark compares the same computation: same loss at initialisation from the same weights,
the same gradients, and the same loss after one optimizer step."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from psec_jax.configs import lm_moe
from psec_jax.models import train as lm_train
from psec_jax.models import transformer as tf
from psec_jax.models.pipeline import Batch

torch = pytest.importorskip("torch", reason="the PyTorch twin needs torch (pip install 'psec-jax[bench]')")

_spec = importlib.util.spec_from_file_location(
    "torch_lm", Path(__file__).resolve().parent.parent / "benchmarks" / "torch_lm.py"
)
torch_lm = importlib.util.module_from_spec(_spec)
sys.modules["torch_lm"] = torch_lm
_spec.loader.exec_module(torch_lm)


def _setup(stage: str):
    config = lm_moe.get_config("tiny")
    with config.unlocked():
        config.model.backend = "dropless"
        config.model.num_experts = 8
        config.data.seq_len = 32
        config.router.z_weight = 1e-3  # every aux term weighs
    trainer = lm_train.make_train(config, stage)
    state = trainer.init(jax.random.key(3))
    v, b, t = config.data.vocab_size, config.data.batch_size, config.data.seq_len
    tokens = np.asarray(jax.random.randint(jax.random.key(4), (b, t + 1), 0, v))
    weights = np.ones((b, t), np.float32)
    weights[0, -5:] = 0.0  # padding is weighted out of the LM loss
    return config, trainer, state, tokens, weights


@pytest.mark.parametrize("stage", ["top1", "top2", "top_p"])
def test_same_loss_gradients_and_step(stage):
    config, trainer, state, tokens, weights = _setup(stage)
    spec = trainer.spec
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    objective = lambda q: tf.loss(q, jnp.asarray(inputs), jnp.asarray(targets), jnp.asarray(weights), spec)
    jax_total, (_, jax_lm) = objective(state.params)
    jax_grads = jax.grad(lambda q: objective(q)[0])(state.params)

    model = torch_lm.TorchLM.from_jax(jax.device_get(state.params), spec)
    ti, tt, tw = (torch.from_numpy(np.asarray(a)) for a in (inputs.astype(np.int64), targets.astype(np.int64), weights))
    total, lm = model.loss(ti, tt, tw)
    np.testing.assert_allclose(lm.item(), float(jax_lm), rtol=2e-5)
    np.testing.assert_allclose(total.item(), float(jax_total), rtol=2e-5)
    assert (total - lm).item() > 0  # the aux losses are in both objectives
    total.backward()
    g = jax_grads["groups"]["moe"]
    pairs = [
        (model.embed.grad, jax_grads["embed"]),
        (model.unembed.grad, jax_grads["unembed"]),
        (model.layers[0]["wq"].grad, g["attn"]["wq"][0]),
        (model.layers[1]["router"].grad, g["moe"]["router"][1]),
        (model.layers[0].experts[2]["down"].grad, g["moe"]["experts"]["down"][0, 2]),
    ]
    for got, want in pairs:
        np.testing.assert_allclose(got.numpy(), np.asarray(want), rtol=2e-3, atol=2e-6)

    # two optimizer steps on each side (the first has learning rate 0: warmup from 0), then the loss again
    opt, schedule = torch_lm.adamw_like_optax(model, config)
    for _ in range(2):
        torch_lm.train_step(model, opt, schedule, config.optim.clip_norm, ti, tt, tw)
    batch = jax.tree.map(lambda a: jnp.stack([jnp.asarray(a)] * 2), (inputs, targets, weights))
    batches = Batch(*batch, jnp.full((2,) + inputs.shape, -1, jnp.int8))
    state, _ = trainer.chunk(state, batches, jnp.float32(config.router.p))
    after_jax = objective(state.params)[1][1]
    with torch.no_grad():
        after_torch = model.loss(ti, tt, tw)[1]
    assert float(after_jax) < float(jax_lm)  # the step moved the loss
    np.testing.assert_allclose(float(after_torch), float(after_jax), rtol=1e-4)
