"""PSEC training stages: what moves, seeds under vmap, resume, recompilation, and a tiny end-to-end run."""

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from rl_helpers import ACT, OBS, assert_table_complete, point_env, random_data

from psec_jax import loop, lora
from psec_jax.configs import psec_continual as continual_config
from psec_jax.lora.core import LoRAPair
from psec_jax.rl import config as rl_config
from psec_jax.rl import continual, critics, pipeline, policy, saving, train
from psec_jax.testing import assert_no_recompile, assert_trees_close


def stage_config(steps=4, log_every=2, kind="reward"):
    c = ml_collections.ConfigDict(
        dict(
            steps=steps,
            log_every=log_every,
            batch_size=16,
            learning_rate=1e-3,
            weight_decay=0.0,
            ema=0.5,
            cosine=True,
            network_dropout=False,
        )
    )
    c.critic = critics.default_config(kind)
    c.critic.hidden = (8,)
    return c


@pytest.fixture(scope="module")
def setup():
    actor = policy.make_actor(rl_config.network_config("tiny"), OBS, ACT, "lora")
    data = random_data(256)
    base = jax.jit(train.make_pretrain(actor, stage_config()).train)(jax.random.key(0), train.PretrainInputs(), data)[
        0
    ].ema
    return actor, data, base


def _leaves(tree):
    return jax.tree.leaves(tree)


def test_pretrain_learns_and_is_vmappable(setup):
    actor, data, _ = setup
    trainer = train.make_pretrain(actor, stage_config(steps=6))
    keys = jnp.stack([jax.random.key(1), jax.random.key(2)])
    batched, metrics = jax.jit(jax.vmap(trainer.train, in_axes=(0, None, None)))(keys, train.PretrainInputs(), data)
    assert metrics["bc_loss"].shape == (2, 3, 2)
    for i in range(2):
        single, m = jax.jit(trainer.train)(keys[i], train.PretrainInputs(), data)
        assert_trees_close(jax.tree.map(lambda x: x[i], batched.params), single.params)
        assert_trees_close(metrics["bc_loss"][i], m["bc_loss"])


@pytest.mark.parametrize("kind", ["reward", "cost"])
def test_expand_trains_only_the_new_skill(setup, kind):
    actor, data, base = setup
    c = stage_config(kind=kind)
    trainer = train.make_expand(actor, c, c.critic, "lora")
    state, metrics = jax.jit(trainer.train)(jax.random.key(3), train.ExpandInputs(base, None), data)
    # the trainable tree is exactly one LoRA pair per Dense kernel of the base network
    kernels = [p for p in lora.flatten(base) if p.endswith("kernel")]
    pairs = lora.flatten(state.params)
    assert sorted(pairs) == sorted(kernels)
    assert all(isinstance(p, LoRAPair) and p.a.shape[0] == 1 for p in pairs.values())
    assert any(float(jnp.abs(p.b).max()) > 0 for p in pairs.values())  # B left zero: the skill learned
    assert np.all(np.isfinite(np.asarray(metrics["actor_loss"])))
    assert float(metrics["weight_mean"].mean()) > 0


def test_scratch_and_mlp_adapter(setup):
    actor, data, base = setup
    c = stage_config()
    state, _ = jax.jit(train.make_expand(actor, c, c.critic, "full").train)(
        jax.random.key(4), train.ExpandInputs(None, None), data
    )
    assert jax.tree.structure(state.params) == jax.tree.structure(base)
    # the MLP adapter reuses that trained critic, frozen
    mlp_actor = policy.make_actor(rl_config.network_config("tiny"), OBS, ACT, "mlp")
    trainer = train.make_expand(mlp_actor, c, c.critic, "mlp")
    mlp_state, metrics = jax.jit(trainer.train)(jax.random.key(4), train.ExpandInputs(base, state.critic), data)
    assert mlp_actor.as_skills(mlp_state.params).scales.shape == (1,)
    assert "q_loss" not in metrics
    assert_trees_close(mlp_state.critic, state.critic)
    with pytest.raises(ValueError, match="does not match the actor's skill kind"):
        train.make_expand(actor, c, c.critic, "mlp")
    with pytest.raises(ValueError, match="multiple of log_every"):
        train.make_pretrain(actor, stage_config(steps=5))


@pytest.mark.parametrize("mode", ["param", "noise", "action"])
def test_compose_trains_only_the_composer(setup, mode):
    actor, data, base = setup
    skills = policy.Skills.stack([actor.init_skill(jax.random.key(i), base) for i in (5, 6)])
    # nonzero B, as after expansion (fresh skills are no-ops and give the composer no gradient)
    skills = skills.replace(params=jax.tree.map(lambda x: x + 0.1, skills.params))
    composer = policy.make_composer("context", OBS, policy.num_outputs(mode, 2), (8,))
    actions = None
    if mode == "action":
        actions = policy.component_actions(actor, base, skills, data.observations, jax.random.key(8), 100)
        assert actions.shape == (data.size, 3, ACT)
    frozen = train.ComposeInputs(base, skills, actions)
    trainer = train.make_compose(actor, composer, mode, stage_config())
    init = jax.jit(trainer.init)(jax.random.key(7), frozen)
    state, metrics = jax.jit(trainer.train)(jax.random.key(7), frozen, data)
    assert jax.tree.structure(state.params) == jax.tree.structure(composer.init(jax.random.key(0)))
    assert not all(np.allclose(a, b) for a, b in zip(_leaves(init.params), _leaves(state.params)))
    assert np.all(np.isfinite(np.asarray(metrics["compose_loss"])))


def test_no_recompilation_inside_training(setup):
    actor, data, base = setup
    c = stage_config()
    trainer = train.make_expand(actor, c, c.critic, "lora")
    chunk = jax.jit(trainer.chunk)
    inputs = train.ExpandInputs(base, None)
    state = jax.jit(trainer.init)(jax.random.key(0), inputs)
    assert_no_recompile(chunk, state, inputs, data, next_args=lambda out: (out[0], inputs, data))


def test_resume_continues_identically(setup, tmp_path):
    actor, data, base = setup
    c = stage_config(steps=6)
    trainer = train.make_expand(actor, c, c.critic, "lora")
    keys = pipeline.seed_keys(0, 2, "expand")
    frozen = train.ExpandInputs(jax.tree.map(lambda x: jnp.stack([x, x]), base), None)
    config = ml_collections.ConfigDict({"stage": "expand"})
    full, _ = pipeline.run_stage(trainer, keys, frozen, data, workdir=tmp_path / "full", config=config, desc="t")

    chunk = jax.jit(jax.vmap(trainer.chunk, in_axes=(0, 0, None)))
    calls = []

    def interrupted(state):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return chunk(state, frozen, data)

    init = jax.jit(jax.vmap(trainer.init))(keys, frozen)
    with pytest.raises(KeyboardInterrupt):
        loop.run_chunks(interrupted, init, num_chunks=3, steps_per_chunk=2, workdir=tmp_path / "cut", config=config)
    resumed, records = pipeline.run_stage(
        trainer, keys, frozen, data, workdir=tmp_path / "cut", config=config, desc="t"
    )
    assert [r["step"] for r in records] == [2, 4, 6]  # the whole run, the interrupted part included
    assert_trees_close(resumed.params, full.params)
    assert_trees_close(resumed.critic, full.critic)


def test_independent_pi0s_then_skills_trained_again_or_loaded_give_the_same_returns(tmp_path):
    c = continual_config.get_config("tiny")
    c.num_seeds, c.share_pretrain, c.methods = 2, False, ("psec_fixed",)
    c.eval.episode_length, c.eval.candidates = 6, 1  # loaded skills come without critics: one candidate
    data = {"base": random_data(256, 1), "walk": random_data(256, 2)}
    first = continual.SETTING.run(c, tmp_path / "first", data=data, env=point_env(6))
    pi0 = [saving.load_base(tmp_path / "first" / "policies" / d) for d in ("pi0", "pi0_seed1")]
    assert pi0[0][3]["data"] == pi0[1][3]["data"]  # the same data, each seed its own pi_0
    assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(pi0[0][1]), jax.tree.leaves(pi0[1][1])))
    again = c.copy_and_resolve_references()
    again.pretrained = str(tmp_path / "first" / "policies" / "pi0")  # seed by seed: pi0, pi0_seed1
    trained = continual.SETTING.run(again, tmp_path / "trained", data=data, env=point_env(6))
    again.library = str(tmp_path / "first" / "policies" / "library_seed0")
    loaded = continual.SETTING.run(again, tmp_path / "loaded", data=data, env=point_env(6))
    assert not (tmp_path / "loaded" / "stages" / "expand_lora_walk").exists()
    assert (
        first["raw"]["psec_fixed"]["return_per_seed"]
        == trained["raw"]["psec_fixed"]["return_per_seed"]
        == loaded["raw"]["psec_fixed"]["return_per_seed"]
    )
    # the re-saved library records how its loaded skill was trained, not this run's config
    lib = lambda d: lora.SkillLibrary.load(tmp_path / d / "policies" / "library_seed1").skills[0].train_config
    assert lib("loaded") == lib("first")
    changed = again.copy_and_resolve_references()
    changed.expand.steps = 100  # another skill than the one this config would train: refused
    with pytest.raises(ValueError, match="skill 'walk' was trained with other expand settings"):
        continual.SETTING.run(changed, tmp_path / "changed", data=data, env=point_env(6))
    changed.library = str(tmp_path / "first" / "policies" / "library_seed1")
    with pytest.raises(ValueError, match="give seed 0's"):
        continual.SETTING.run(changed, tmp_path / "changed", data=data, env=point_env(6))
    again.num_seeds = 3  # a third seed has no library nor pi_0 of its own there: refused, naming what is missing
    with pytest.raises(ValueError, match="library_seed2 is missing"):
        continual.SETTING.run(again, tmp_path / "three", data=data, env=point_env(6))
    again.library = ""
    with pytest.raises(ValueError, match="pi0_seed2"):
        continual.SETTING.run(again, tmp_path / "three", data=data, env=point_env(6))


def test_continual_end_to_end_tiny(tmp_path):
    c = continual_config.get_config("tiny")
    c.num_seeds = 2
    c.eval.episode_length = 6
    c.methods = (*continual.METHODS, "psec_routed")  # every method of the table
    data = {"base": random_data(256, 1), "walk": random_data(256, 2)}
    out = continual.SETTING.run(c, tmp_path, data=data, env=point_env(6))
    assert list(out["methods"]) == list(continual.TABLE)
    for row in out["methods"].values():
        assert len(row["return_per_seed"]) == 2 and np.all(np.isfinite(row["return_per_seed"]))
    saved = json.loads((tmp_path / "results.json").read_text())
    assert set(saved["methods"]) == set(continual.TABLE)
    counts = saved["routed_skills_per_state"]["psec_routed"]  # one skill in the library: one per state
    assert counts["mean_per_seed"] == [1.0, 1.0] and counts["states"] == 256
    assert_table_complete(tmp_path, tuple(continual.TABLE), 2)
    assert (tmp_path / "results.png").stat().st_size > 0 and "psec" in (tmp_path / "results.md").read_text()
    actor, base, normalizer, meta = saving.load_base(tmp_path / "policies" / "pi0")
    assert normalizer.mean.shape == (OBS,) and np.all(np.asarray(normalizer.std) > 0)
    lib = lora.SkillLibrary.load(tmp_path / "policies" / "library_seed1", base)
    assert lib.names == ["walk"] and meta["obs_dim"] == OBS
    # rerun building on the saved pi_0 (``config.pretrained``): the same seeds give bit-identical returns
    again = c.copy_and_resolve_references()
    again.methods, again.pretrained = ("scratch", "psec"), str(tmp_path / "policies" / "pi0")
    out2 = continual.SETTING.run(again, tmp_path / "again", data=data, env=point_env(6))
    for m in again.methods:
        assert out2["raw"][m]["return_per_seed"] == out["raw"][m]["return_per_seed"]
        assert out2["methods"][m]["return_ci"] == out["methods"][m]["return_ci"]
    assert json.loads((tmp_path / "again" / "results.json").read_text())["pretrained_sha256"]
    again.obs_norm = False  # pi_0 was trained on standardised observations: refused, naming why
    with pytest.raises(ValueError, match="normaliser"):
        continual.SETTING.run(again, tmp_path / "raw", data=data, env=point_env(6))
    with pytest.raises(ValueError, match="unknown method"):
        c.methods = ("psec", "magic")
        continual.SETTING.run(c, tmp_path / "bad", data=data, env=point_env(6))
