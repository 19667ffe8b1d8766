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


class _SpeedCritic:
    """A hand-made cost critic: predicted cost Qc = |a| (its score, higher is safer, is -Qc)."""

    def score(self, state, obs, actions):
        return -jnp.linalg.norm(actions, axis=-1) + 0.0 * state


def test_methods_differ_in_cost_when_each_keeps_one_of_its_own_candidates():
    """The safe evaluation: argmin Qc among a method's *own* candidates. A method whose candidates all
    push hard (speed above the point env's cost threshold) pays cost; one whose candidates are gentle
    does not, although both act by the same rule and critic."""
    from rl_helpers import point_env

    from psec_jax.rl import evaluate

    def sampler(shift, obs, key):  # candidates uniform in [shift - 0.1, shift + 0.1] per action dim
        return shift + jax.random.uniform(key, (obs.shape[0], 2), minval=-0.1, maxval=0.1)

    critics = {"cost": _SpeedCritic()}
    act = acting.make_act(sampler, critics, "argmin_qc", 8)
    params = {
        name: {"policy": jnp.array([shift]), "critics": {"cost": jnp.zeros(1)}}
        for name, shift in (("fast", 0.9), ("gentle", 0.0))
    }
    out = evaluate.make_evaluate(point_env(30), {"fast": act, "gentle": act}, 1, 4)(params, jax.random.key(0))
    fast, gentle = (np.asarray(out[m]["cost"]) for m in ("fast", "gentle"))
    assert gentle.max() == 0.0 and fast.min() > 5.0, (fast, gentle)
