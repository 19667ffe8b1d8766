"""psec_jax.envs: the reset/step API on every environment, costs, time limits, dynamics variants."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import mujoco
import numpy as np
import pytest
from brax.io import mjcf
from etils import epath

from psec_jax import envs
from psec_jax.envs import variants

EXPECTED_SIZES = {  # (obs, act)
    "walker-stand": (24, 6),
    "walker-walk": (24, 6),
    "walker-run": (24, 6),
    "halfcheetah": (17, 6),
    "hopper": (11, 3),
    "walker2d": (17, 6),
    "ant": (27, 8),
}


def rollout(env: envs.Env, actions: jax.Array, key: jax.Array) -> envs.EnvState:
    """States after each of T steps from a batch of resets: actions [T, B, act]."""

    @jax.jit
    def run(actions, key):
        state = jax.vmap(env.reset)(jax.random.split(key, actions.shape[1]))
        _, states = jax.lax.scan(lambda s, a: (jax.vmap(env.step)(s, a),) * 2, state, actions)
        return states

    return run(actions, key)


# One Playground task and one Brax body in the default suite (each costs 30-60 s of compilation on
# CI's 2 cores); the rest share their code paths and run with `make test-all`.
_DEFAULT_ENVS = ("walker-walk", "hopper")


@pytest.mark.parametrize(
    "name", [n if n in _DEFAULT_ENVS else pytest.param(n, marks=pytest.mark.slow) for n in envs.names()]
)
def test_every_env_resets_and_steps_under_jit_and_vmap(name):
    env = envs.make(name, episode_length=4)
    assert (env.observation_size, env.action_size) == EXPECTED_SIZES[name]
    actions = jax.random.uniform(jax.random.PRNGKey(1), (6, 3, env.action_size), minval=-1, maxval=1)
    states = rollout(env, actions, jax.random.PRNGKey(0))
    assert states.obs.shape == (6, 3, env.observation_size)
    for field in ("obs", "reward", "cost", "speed"):
        assert np.all(np.isfinite(getattr(states, field))), field
    # cost is exactly 1[speed > threshold] (0 for tasks without a constraint)
    expected = states.speed > env.cost_threshold if env.cost_threshold is not None else 0.0 * states.speed
    np.testing.assert_array_equal(states.cost, np.asarray(expected, np.float32))
    # time limit: step 4 truncates (unless the episode terminated), counting continues
    np.testing.assert_array_equal(states.steps[:, 0], np.arange(1, 7))
    not_terminal = states.terminal[3] == 0
    np.testing.assert_array_equal(states.truncation[3][not_terminal], 1.0)
    np.testing.assert_array_equal(states.truncation[:3], 0.0)
    if name == "ant":  # planar speed
        m = states.inner.metrics
        np.testing.assert_allclose(states.speed, np.hypot(m["x_velocity"], m["y_velocity"]), rtol=1e-6)
    elif name in envs.BRAX_BODIES:
        np.testing.assert_allclose(states.speed, states.inner.metrics["x_velocity"], rtol=1e-6)


def _fake_env(threshold: float | None, episode_length: int = 3) -> envs.Env:
    """An Env whose 'simulator' state is the next speed to report (obs = [step count])."""

    def reset(key):
        return jnp.zeros(()), jnp.zeros((1,))

    def step(speed, action):
        return speed, action[:1], action[0], jnp.asarray(action[1] > 0.5, jnp.float32), speed

    return envs.Env("fake", "nominal", 1, 2, episode_length, threshold, 0.1, reset, step)


@pytest.mark.parametrize("threshold", [0.7402, 2.3415, 3.2096, 2.6222])
def test_cost_fires_exactly_above_the_threshold(threshold):
    env = _fake_env(threshold)
    below = float(np.nextafter(np.float32(threshold), np.float32(0)))
    above = float(np.nextafter(np.float32(threshold), np.float32(10)))
    costs = []
    for speed in (below, threshold, above, -above):
        state = env.reset(jax.random.PRNGKey(0)).replace(inner=jnp.float32(speed))
        costs.append(float(env.step(state, jnp.zeros(2)).cost))
    assert costs == [0.0, 0.0, 1.0, 0.0]


def test_safety_gymnasium_thresholds():
    assert envs.VELOCITY_THRESHOLDS == {"halfcheetah": 3.2096, "hopper": 0.7402, "walker2d": 2.3415, "ant": 2.6222}


def test_step_autoreset_keeps_the_final_observation_and_flags():
    env = _fake_env(None, episode_length=2)
    state = env.reset(jax.random.PRNGKey(0))
    key = jax.random.PRNGKey(1)
    state, tr1 = envs.step_autoreset(env, state, jnp.array([0.3, 0.0]), key)
    assert int(state.steps) == 1 and not bool(tr1.timeouts) and not bool(tr1.terminals)
    state, tr2 = envs.step_autoreset(env, state, jnp.array([0.6, 0.0]), key)
    assert bool(tr2.timeouts) and not bool(tr2.terminals)
    np.testing.assert_allclose(tr2.next_observations, [0.6])  # final obs, not the reset one
    assert int(state.steps) == 0 and float(state.obs[0]) == 0.0  # continued from a fresh episode
    state, tr3 = envs.step_autoreset(env, state, jnp.array([0.1, 0.9]), key)
    assert bool(tr3.terminals) and not bool(tr3.timeouts) and int(state.steps) == 0


def test_names_and_variants_are_checked():
    assert envs.parse("ant:gravity_2") == ("ant", "gravity_2")
    with pytest.raises(ValueError, match="unknown environment 'cheetah'"):
        envs.make("cheetah")
    with pytest.raises(ValueError, match="unknown dynamics variant 'friction_3'"):
        envs.make("hopper", "friction_3")
    with pytest.raises(ValueError, match="variant given twice"):
        envs.parse("hopper:gravity_2", "thigh_2")


# ----- dynamics variants: the model change is the named one -------------------------------------


def _spec(body: str) -> mujoco.MjSpec:
    if body == "walker":
        from mujoco_playground._src.dm_control_suite import walker

        return mujoco.MjSpec.from_file(str(walker._XML_PATH))
    files = {"halfcheetah": "half_cheetah", "hopper": "hopper", "walker2d": "walker2d", "ant": "ant"}
    path = epath.resource_path("brax") / f"envs/assets/{files[body]}.xml"
    return mujoco.MjSpec.from_string(mjcf.fuse_bodies(path.read_text()))


@functools.cache
def _model(body: str, variant: str) -> mujoco.MjModel:
    return variants.apply_variant(_spec(body), body, variant)


BODIES = [*envs.BRAX_BODIES, "walker"]


@pytest.mark.parametrize("body", BODIES)
def test_friction_variants_scale_sliding_friction_only(body):
    base = _model(body, "nominal")
    for variant, factor in (("friction_0.25", 0.25), ("friction_0.5", 0.5)):
        m = _model(body, variant)
        np.testing.assert_allclose(m.geom_friction[:, 0], factor * base.geom_friction[:, 0], rtol=1e-12)
        np.testing.assert_array_equal(m.geom_friction[:, 1:], base.geom_friction[:, 1:])
        np.testing.assert_array_equal(m.body_mass, base.body_mass)
        np.testing.assert_array_equal(m.opt.gravity, base.opt.gravity)


@pytest.mark.parametrize("body", BODIES)
def test_gravity_variant_doubles_gravity_only(body):
    base, m = _model(body, "nominal"), _model(body, "gravity_2")
    np.testing.assert_allclose(m.opt.gravity, 2 * base.opt.gravity)
    np.testing.assert_array_equal(m.geom_friction, base.geom_friction)
    np.testing.assert_array_equal(m.body_mass, base.body_mass)


@pytest.mark.parametrize("body", BODIES)
def test_thigh_variant_doubles_thigh_geometry_and_raises_thigh_mass(body):
    base, m = _model(body, "nominal"), _model(body, "thigh_2")
    thighs = [mujoco.mj_name2id(base, mujoco.mjtObj.mjOBJ_GEOM, n) for n in variants.THIGH_GEOMS[body]]
    assert all(i >= 0 for i in thighs)
    others = [i for i in range(base.ngeom) if i not in thighs]
    np.testing.assert_array_equal(m.geom_size[others], base.geom_size[others])
    for i in thighs:
        np.testing.assert_allclose(m.geom_size[i, 0], 2 * base.geom_size[i, 0])  # radius
        body_id = base.geom_bodyid[i]
        share = lambda model: model.body_mass[body_id] / model.body_mass.sum()
        assert share(m) > 1.5 * share(base), "the thigh's share of the total mass must grow"
    np.testing.assert_array_equal(m.opt.gravity, base.opt.gravity)


VARIANT_ACTIONS = jax.random.uniform(jax.random.PRNGKey(3), (40, 2, 3), minval=-1, maxval=1)


@pytest.fixture(scope="module")
def nominal_hopper_states():
    return rollout(envs.make("hopper"), VARIANT_ACTIONS, jax.random.PRNGKey(0))


# two variants in the default suite (each compiles the hopper again, ~25 s on CI's 2 cores); the models'
# changes themselves are checked for every variant and body above and below
@pytest.mark.parametrize(
    "variant",
    [
        "friction_0.25",
        pytest.param("friction_0.5", marks=pytest.mark.slow),
        "gravity_2",
        pytest.param("thigh_2", marks=pytest.mark.slow),
    ],
)
def test_each_variant_changes_the_trajectory_of_the_same_actions(variant, nominal_hopper_states):
    """Same keys and actions through the jitted Env: the variant's states differ from nominal."""
    actions, nominal = VARIANT_ACTIONS, nominal_hopper_states
    shifted = rollout(envs.make("hopper", variant), actions, jax.random.PRNGKey(0))
    gap = np.abs(np.asarray(nominal.obs) - np.asarray(shifted.obs)).max(axis=(1, 2))
    assert gap[-1] > 1e-2, f"{variant}: trajectories barely differ ({gap[-1]:.2e})"
    assert np.all(np.isfinite(shifted.obs))


@pytest.mark.parametrize("name", ["hopper", "walker-walk"])
def test_variants_are_installed_in_the_simulators(name):
    """The model the jitted step uses (Brax System / MJX model) carries the change."""
    env = envs.make(name, "gravity_2")
    nominal = envs.make(name)
    if name == "walker-walk":
        np.testing.assert_allclose(
            env.backend.mjx_model.opt.gravity, 2 * np.asarray(nominal.backend.mjx_model.opt.gravity)
        )
        assert env.backend.mj_model.opt.timestep == nominal.backend.mj_model.opt.timestep
    else:
        np.testing.assert_allclose(env.backend.sys.opt.gravity, 2 * np.asarray(nominal.backend.sys.opt.gravity))
    thick = envs.make(name, "thigh_2").backend
    mass = lambda b: np.asarray(b.mj_model.body_mass if name == "walker-walk" else b.sys.body_mass)
    assert mass(thick).sum() > mass(nominal.backend).sum()


def test_walker_speed_tasks_are_walker_walk_at_their_speed():
    """The intermediate-speed walker tasks (skill libraries of more than three skills): WalkerWalk's reward
    with the move speed set, nothing else changed (built, not stepped: stepping compiles the walker)."""
    for name, speed in envs.WALKER_SPEEDS.items():
        env = envs.make(name, episode_length=10)
        assert env.backend._move_speed == speed and env.observation_size == 24 and env.action_size == 6
    assert envs.make("walker-walk", episode_length=10).backend._move_speed == 1.0
