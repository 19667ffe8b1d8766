"""Acting: the three choice rules, one state at a time and through ``select`` on a batch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from rl_helpers import OBS

from psec_jax.rl import acting

REWARD = jnp.array([[5.0, 1.0, 3.0], [5.0, 1.0, 3.0], [0.0, 9.0, 1.0]])
SAFETY = jnp.array([[-1.0, 0.5, 0.0], [-1.0, -0.5, -3.0], [2.0, 1.0, 3.0]])  # -Qc: feasible where >= 0


@pytest.mark.parametrize(
    "rule, want",
    [
        ("argmax_q", [0, 0, 1]),
        ("argmin_qc", [1, 1, 2]),
        # row 0: candidate 0 is infeasible (best reward) -> 2 (feasible, reward 3; 0.0 counts as feasible)
        # row 1: none feasible -> the safest (1); row 2: all feasible -> the best reward (1)
        ("feasible_then_reward", [2, 1, 1]),
    ],
)
def test_choice_rules(rule, want):
    got = jax.vmap(lambda r, s: acting.choose(rule, {"reward": r, "cost": s}))(REWARD, SAFETY)
    np.testing.assert_array_equal(got, want)


def test_select_shapes_and_choice():
    b, n = 3, 4
    obs = jnp.arange(b * OBS, dtype=jnp.float32).reshape(b, OBS)
    # candidate j of every state is the action (j, j); reward = a0, feasible iff a0 <= 2 (and none for state 2)
    sample = lambda s, k: jnp.tile(jnp.repeat(jnp.arange(n, dtype=jnp.float32), 2).reshape(n, 2), (s.shape[0] // n, 1))
    scores = {
        "reward": lambda s, a: a[:, 0],
        "cost": lambda s, a: jnp.where(s[:, 0] == 2 * OBS, -1.0 - a[:, 0], 2.0 - a[:, 0]),
    }
    key = jax.random.key(0)
    out = acting.select(sample, scores, "feasible_then_reward", obs, key, n)
    assert out.shape == (b, 2)
    np.testing.assert_array_equal(out[:, 0], [2.0, 2.0, 0.0])
    np.testing.assert_array_equal(acting.select(sample, scores, "argmax_q", obs, key, n)[:, 0], [3.0, 3.0, 3.0])
    np.testing.assert_array_equal(acting.select(sample, scores, "argmin_qc", obs, key, n)[:, 0], [0.0, 0.0, 0.0])
    one = acting.select(lambda s, k: jnp.zeros((s.shape[0], 2)), scores, "argmax_q", obs, key, 1)
    assert one.shape == (b, 2)
    with pytest.raises(ValueError, match="needs the \\['cost'\\] critic"):
        acting.select(sample, {"reward": scores["reward"]}, "argmin_qc", obs, key, n)
    with pytest.raises(ValueError, match="unknown acting rule"):
        acting.select(sample, scores, "best", obs, key, n)
    with pytest.raises(ValueError, match=r"\[B, obs_dim\]"):
        acting.select(sample, scores, "argmax_q", obs[0], key, n)
