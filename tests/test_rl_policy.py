"""Diffusion policy, critics and composition: schedule values, sampler range, no-op skills, modes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from rl_helpers import ACT, OBS, random_data

from psec_jax.rl import config as rl_config
from psec_jax.rl import critics, diffusion, policy
from psec_jax.testing import assert_trees_close


@pytest.fixture(scope="module")
def actors():
    c = rl_config.network_config("tiny")
    return {k: policy.make_actor(c, OBS, ACT, k) for k in ("lora", "mlp")}


def test_vp_schedule_matches_paper():
    betas = np.asarray(diffusion.vp_betas(5))
    np.testing.assert_allclose(betas, [0.196, 0.459, 0.636, 0.755, 0.835], atol=1e-3)
    s = diffusion.make_schedule(5)
    np.testing.assert_allclose(np.asarray(s.alpha_hats), np.cumprod(1 - betas), rtol=1e-6)
    with pytest.raises(ValueError, match="diffusion steps"):
        diffusion.vp_betas(0)


def test_paper_network_size():
    actor = policy.make_actor(rl_config.network_config("paper"), 24, 6)
    base = actor.init_base(jax.random.key(0))
    n = sum(x.size for x in jax.tree.leaves(base))
    assert 1.5e6 < n < 1.8e6  # PAPERS.md / FACTS.md: the official noise net has 1.65M parameters
    skill = actor.init_skill(jax.random.key(1), base)
    n_lora = sum(x.size for x in jax.tree.leaves(skill.params))
    assert 60e3 < n_lora < 80e3  # ~70k LoRA parameters at rank 8
    assert float(skill.scales[0]) == 16.0


def test_sampler_stays_in_bounds(actors):
    actor = actors["lora"]
    base = actor.init_base(jax.random.key(0))
    base = jax.tree.map(lambda x: 50.0 * x, base)  # a wild network: unclipped samples would leave [-1, 1]
    a = actor.sample(base, None, None, jnp.ones((64, OBS)), jax.random.key(1))
    assert a.shape == (64, ACT)
    assert np.all(np.isfinite(a)) and np.all(np.abs(a) <= 1.0)


@pytest.mark.parametrize("kind", ["lora", "mlp"])
def test_fresh_skill_is_a_noop(actors, kind):
    actor = actors[kind]
    base = actor.init_base(jax.random.key(0))
    skills = policy.Skills.stack([actor.init_skill(jax.random.key(i), base) for i in (1, 2)])
    s, a = jnp.ones((8, OBS)), jnp.zeros((8, ACT))
    t = jnp.arange(8) % 5
    plain = actor.eps(base, None, None, s, a, t)
    for w in (None, jnp.array([0.3, -2.0]), jax.random.normal(jax.random.key(3), (8, 2))):
        assert_trees_close(actor.eps(base, skills, w, s, a, t), plain)


def _trained_skills(actor, base):
    """Two skills with nonzero B (as after training)."""
    skills = policy.Skills.stack([actor.init_skill(jax.random.key(i), base) for i in (1, 2)])
    params = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.key(7), x.shape), skills.params)
    return skills.replace(params=params)


def test_param_composition_is_weighted_lora(actors):
    actor = actors["lora"]
    base = actor.init_base(jax.random.key(0))
    skills = _trained_skills(actor, base)
    s, a, t = jnp.ones((4, OBS)), 0.1 * jnp.ones((4, ACT)), jnp.array([0, 1, 2, 4])
    w = jnp.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [0.0, 0.0]])
    got = policy.composed_eps(actor, base, skills, "param", w, s, a, t)
    only0 = actor.eps(base, jax.tree.map(lambda x: x[:1], skills), None, s, a, t)
    only1 = actor.eps(base, jax.tree.map(lambda x: x[1:], skills), None, s, a, t)
    assert_trees_close(got[0], only0[0])
    assert_trees_close(got[1], only1[1])
    assert_trees_close(got[3], actor.eps(base, None, None, s, a, t)[3])
    assert not np.allclose(got[0], got[3])  # the skill changes the policy


def test_noise_composition_mixes_component_predictions(actors):
    actor = actors["lora"]
    base = actor.init_base(jax.random.key(0))
    skills = _trained_skills(actor, base)
    s, a, t = jnp.ones((3, OBS)), jnp.zeros((3, ACT)), jnp.array([0, 2, 4])
    u = jnp.array([[0.2, 0.3, 0.5]] * 3)
    comps = [actor.eps(base, skills, cw, s, a, t) for cw in policy.component_weights(2)]
    want = sum(u[0, j] * comps[j] for j in range(3))
    assert_trees_close(policy.composed_eps(actor, base, skills, "noise", u, s, a, t), want)


def test_action_composition_and_validation(actors):
    actor = actors["lora"]
    base = actor.init_base(jax.random.key(0))
    skills = _trained_skills(actor, base)
    s = jnp.ones((5, OBS))
    w = jnp.tile(jnp.array([[1.0, 0.0, 0.0]]), (5, 1))  # all weight on the base component
    got = policy.composed_sample(actor, base, skills, "action", w, s, jax.random.key(2))
    keys = jax.random.split(jax.random.key(2), 3)
    want = actor.sample(base, skills, jnp.zeros(2), s, keys[0])
    assert_trees_close(got, want)
    with pytest.raises(ValueError, match="composition mode"):
        policy.num_outputs("weights", 2)
    with pytest.raises(ValueError, match="fixed composition weights need 2"):
        policy.make_composer("fixed", OBS, 2, fixed=(1.0,))


@pytest.mark.parametrize("kind", ["reward", "cost"])
def test_critic_update_and_weights(kind):
    c = critics.default_config(kind)
    c.hidden = (16, 16)
    critic = critics.make_critic(OBS, ACT, c)
    state = critic.init(jax.random.key(0))
    batch = random_data(64).sample(jax.random.key(1), 64)
    upd = jax.jit(critic.update)
    for _ in range(5):
        state, m = upd(state, batch)
    assert all(np.all(np.isfinite(np.asarray(v))) for v in m.values())
    assert m["actor_weights"].shape == (64,)
    w = critic.actor_weights(state, batch)
    assert w.shape == (64,) and np.all(np.asarray(w) >= 0) and np.all(np.asarray(w) <= c.max_weight)
    if kind == "cost":  # weights vanish where the action is no safer than the state's value
        q = np.asarray(-critic.score(state, batch.observations, batch.actions))
        assert np.all(np.asarray(w)[q >= np.asarray(critic_v(critic, state, batch))] == 0)
    with pytest.raises(ValueError, match="critic kind"):
        critics.make_critic(OBS, ACT, critics.default_config("profit"))


def critic_v(critic, state, batch):
    from psec_jax.rl.networks import ValueNet

    return ValueNet((16, 16)).apply({"params": state.v}, batch.observations)


def test_expectile_loss():
    d = jnp.array([1.0, -1.0])
    assert float(critics.expectile_loss(d, 0.7)) == pytest.approx((0.7 + 0.3) / 2)
    assert float(critics.expectile_loss(jnp.array([2.0]), 0.9)) == pytest.approx(0.9 * 4)


@pytest.mark.parametrize("mode", ["param", "noise", "action"])
def test_composed_policy_with_one_hot_weights_is_that_skill_alone(actors, mode):
    """Through the sampler the runner acts with: a composer whose weights are one-hot on skill j acts
    like pi_0 plus skill j alone; all-zero weights (param mode) or one-hot on the base component
    (noise / action mode) act like pi_0 alone."""
    actor = actors["lora"]
    base = actor.init_base(jax.random.key(0))
    skills = _trained_skills(actor, base)
    obs, key = jax.random.normal(jax.random.key(4), (6, OBS)), jax.random.key(5)
    k = skills.num
    alone = lambda sk: policy.make_sampler(actor)({"base": base, "skills": sk}, obs, key)
    if mode == "action":
        key = jax.random.split(key, k + 1)  # composed_sample gives component j the key split(key, K+1)[j]
        alone = lambda sk, j: policy.make_sampler(actor)({"base": base, "skills": sk}, obs, key[j])

    def composed(weights):
        composer = policy.make_composer("fixed", OBS, policy.num_outputs(mode, k), fixed=tuple(weights))
        params = {"base": base, "skills": skills, "composer": composer.init(None)}
        return policy.make_sampler(actor, mode, composer)(params, obs, jax.random.key(5))

    pi0 = alone(None, 0) if mode == "action" else alone(None)
    for j in range(k):
        one = jax.tree.map(lambda x: x[j : j + 1], skills)
        want = alone(one, j + 1) if mode == "action" else alone(one)
        hot = [float(i == j) for i in range(k)] if mode == "param" else [float(i == j + 1) for i in range(k + 1)]
        assert_trees_close(composed(hot), want)
        assert not np.allclose(want, pi0, atol=1e-3)  # the skill does change the policy
    zero = [0.0] * k if mode == "param" else [1.0] + [0.0] * k
    assert_trees_close(composed(zero), pi0)


def test_routed_composer_selects_skills_per_state_and_trains_its_router(actors):
    """A routed composer returns a route over the skills; the policy's noise prediction with it equals the
    dense composition with the route's weights, and fitting it moves the router (aux losses reported)."""
    import ml_collections

    from psec_jax import moe, prng, routed
    from psec_jax.rl import train

    actor = actors["lora"]
    base = actor.init_base(jax.random.key(0))
    k = 4
    skills = policy.Skills.stack([actor.init_skill(jax.random.key(i), base) for i in range(1, k + 1)])
    skills = skills.replace(params=jax.tree.map(lambda x: x + 0.05, skills.params))  # non-trivial skills
    routing = moe.MoEConfig(router="top_p", p=0.5, backend="dropless")
    composer = policy.make_composer("routed", OBS, k, (8,), routing=routing)
    params = composer.init(jax.random.key(5))
    obs = random_data(16).observations
    r = composer.apply(params, obs)
    assert isinstance(r, routed.SkillRoute) and r.num_states == 16 and r.num_skills == k
    a_t, t = jax.random.normal(jax.random.key(6), (16, ACT)), jnp.full((16,), 2)
    got = policy.composed_eps(actor, base, skills, "param", r, obs, a_t, t)
    want = policy.composed_eps(actor, base, skills, "param", r.dense_weights(), obs, a_t, t)
    assert_trees_close(got, want)
    c = ml_collections.ConfigDict(
        dict(steps=20, log_every=20, batch_size=16, learning_rate=1e-2, network_dropout=False)
    )
    state, metrics = jax.jit(train.make_compose(actor, composer, "param", c).train)(
        jax.random.key(2), train.ComposeInputs(base, skills, None), random_data(64)
    )
    start = composer.init(prng.stream(jax.random.key(2), "composer"))  # what the stage starts from
    moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), state.params, start)
    assert max(jax.tree.leaves(moved)) > 0
    assert {"aux_loss", "skills_per_state", "noise_loss"} <= set(metrics)
    assert 1.0 <= float(np.asarray(metrics["skills_per_state"]).mean()) <= k
    with pytest.raises(ValueError, match="routing"):
        policy.make_composer("routed", OBS, k)
