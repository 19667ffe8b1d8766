"""Evaluation: a method's episodes depend on its own name, params and key, not on the rest of the table."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from psec_jax import envs
from psec_jax.rl import evaluate

# big enough that a batch of 50 vs 100 episodes rounds differently in XLA's CPU kernels: with one rollout
# for the whole table (the old design) "a" moved by ~1.9 in return between the two tables below
SEEDS, EPISODES, STEPS, HIDDEN = 5, 10, 40, 256


def _mlp(params, obs, key):
    """A noisy tanh MLP; obs [E, obs_dim] -> actions [E, act_dim]."""
    h = jnp.tanh(jnp.tanh(obs @ params[0]) @ params[1])
    return jnp.tanh(h @ params[2] + 0.1 * jax.random.normal(key, (obs.shape[0], params[2].shape[1])))


def _params(env, seed):
    k0, k1, k2 = jax.random.split(jax.random.key(seed), 3)
    return [
        0.3 * jax.random.normal(k0, (SEEDS, env.observation_size, HIDDEN)),
        0.1 * jax.random.normal(k1, (SEEDS, HIDDEN, HIDDEN)),
        0.1 * jax.random.normal(k2, (SEEDS, HIDDEN, env.action_size)),
    ]


@pytest.mark.slow  # three walker rollouts compiled (~60-80 s on 2 cores); `make test-all`
def test_method_results_do_not_depend_on_the_table():
    env = envs.make("walker-walk", episode_length=STEPS)
    key, a, b = jax.random.key(7), _params(env, 1), _params(env, 2)
    alone = evaluate.make_evaluate(env, {"a": _mlp}, SEEDS, EPISODES)({"a": a}, key)
    table = evaluate.make_evaluate(env, {"b": _mlp, "a": _mlp}, SEEDS, EPISODES)({"a": a, "b": b}, key)
    for field in ("return", "cost", "length"):
        assert table["a"][field].shape == (SEEDS, EPISODES)
        np.testing.assert_array_equal(alone["a"][field], table["a"][field])
    assert np.isfinite(np.asarray(table["b"]["return"])).all()
    assert not np.array_equal(table["a"]["return"], table["b"]["return"])
    assert len(np.unique(np.asarray(alone["a"]["return"]))) == SEEDS * EPISODES  # every episode differs
    with pytest.raises(KeyError, match=r"no params for method\(s\) \['a'\]"):
        evaluate.make_evaluate(env, {"a": _mlp}, SEEDS, EPISODES)({}, key)
    with pytest.raises(ValueError, match=r"leading \[num_seeds=5\] axis"):
        evaluate.make_evaluate(env, {"a": _mlp}, SEEDS, EPISODES)({"a": [x[:2] for x in a]}, key)
    with pytest.raises(ValueError, match="num_seeds >= 1"):
        evaluate.make_evaluate(env, {"a": _mlp}, 0, EPISODES)
    with pytest.raises(ValueError, match="acts is empty"):
        evaluate.make_evaluate(env, {}, SEEDS, EPISODES)


def test_methods_acting_in_turn_get_the_same_results():
    """``in_turn`` (lax.map over seeds, for acting that branches on data) changes how, not what."""
    from rl_helpers import point_env

    env, key = point_env(12), jax.random.key(3)
    a = _params(env, 0)
    vmapped = evaluate.make_evaluate(env, {"a": _mlp}, SEEDS, EPISODES)({"a": a}, key)
    in_turn = evaluate.make_evaluate(env, {"a": _mlp}, SEEDS, EPISODES, in_turn=("a",))({"a": a}, key)
    for field in vmapped["a"]:
        np.testing.assert_allclose(in_turn["a"][field], vmapped["a"][field], rtol=1e-5, atol=1e-5)
