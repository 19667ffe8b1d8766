"""Frozen means frozen: what PSEC's stages train, and what they save, reproduce the evaluated policy."""

import jax
import numpy as np
import pytest
from rl_helpers import OBS
from test_rl_train import setup, stage_config  # noqa: F401 (setup is a fixture)

from psec_jax import lora
from psec_jax.rl import policy, saving, train


def test_reloaded_library_acts_like_the_trained_policy(setup, tmp_path):  # noqa: F811 (the fixture)
    actor, data, base = setup
    c = stage_config(steps=20, log_every=10)
    state, _ = jax.jit(train.make_expand(actor, c, c.critic, "lora").train)(
        jax.random.key(3), train.ExpandInputs(base, None), data
    )
    assert lora.flatten(state.params)  # the optimised tree is the adapter alone: no scale in it
    trained = actor.as_skills(state.ema)
    assert float(trained.scales[0]) == actor.lora_config.scale == 16.0
    saving.library_of(base, trained, ["skill"], actor.lora_config).save(tmp_path / "lib")
    lib = lora.SkillLibrary.load(tmp_path / "lib", base)
    reloaded = policy.Skills(lib.adapters, lib.scales)
    obs, key = data.observations[:16], jax.random.key(9)
    np.testing.assert_array_equal(
        np.asarray(actor.sample(base, reloaded, None, obs, key)),
        np.asarray(actor.sample(base, trained, None, obs, key)),
    )


@pytest.mark.parametrize("mode", ["param", "noise"])
def test_composer_is_fitted_on_the_deterministic_network(setup, mode):  # noqa: F811 (the fixture)
    """The frozen noise network acts without dropout, so the composer is fitted without it: the same
    composer results whatever the network's (training-only) dropout rate."""
    actor, data, base = setup
    skills = policy.Skills.stack([actor.init_skill(jax.random.key(i), base) for i in (5, 6)])
    skills = skills.replace(params=jax.tree.map(lambda x: x + 0.1, skills.params))
    composer = policy.make_composer("context", OBS, policy.num_outputs(mode, 2), (8,))
    frozen = train.ComposeInputs(base, skills, None)
    fitted = []
    for dropout in (actor.net.dropout, 0.0):
        a = actor._replace(net=actor.net.clone(dropout=dropout))
        state, _ = jax.jit(train.make_compose(a, composer, mode, stage_config()).train)(jax.random.key(7), frozen, data)
        fitted.append(state.params)
    assert actor.net.dropout > 0
    for x, y in zip(jax.tree.leaves(fitted[0]), jax.tree.leaves(fitted[1])):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
