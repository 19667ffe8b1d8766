"""Tiny fixtures for the PSEC tests: a point-mass environment that compiles in a blink, and random
offline data of matching shapes."""

import jax
import jax.numpy as jnp

from psec_jax.data.offline import OfflineData
from psec_jax.envs.base import Env

OBS, ACT = 4, 2


def point_env(episode_length: int = 8) -> Env:
    """2-D point mass: obs [pos, vel], action = force, reward = -|pos - (1, 1)|, cost = speed > 0.5."""

    def reset(key):
        pos = jax.random.uniform(key, (2,), minval=-1, maxval=1)
        inner = jnp.concatenate([pos, jnp.zeros(2)])
        return inner, inner

    def step(inner, action):
        vel = 0.9 * inner[2:] + 0.1 * action
        pos = inner[:2] + vel
        nxt = jnp.concatenate([pos, vel])
        reward = -jnp.linalg.norm(pos - 1.0)
        return nxt, nxt, reward, jnp.zeros(()), jnp.linalg.norm(vel)

    return Env("point", "nominal", OBS, ACT, episode_length, 0.5, 0.1, reset, step)


def random_data(n: int = 512, seed: int = 0) -> OfflineData:
    return OfflineData.synthetic(n, OBS, ACT, seed)


def assert_table_complete(workdir, methods, num_seeds: int, fields=("return",)) -> None:
    """results.md of a PSEC run has one row per method, in order, each with the mean and IQM of every
    field with their 95% intervals and ``num_seeds`` per-seed values, and results.json the same numbers."""
    import json
    from pathlib import Path

    lines = (Path(workdir) / "results.md").read_text().split("\n\n")[1].splitlines()  # the method table
    rows = [line for line in lines if line.startswith("| ") and not line.startswith("| method")]
    assert [r.split("|")[1].strip() for r in rows] == list(methods)
    saved = json.loads((Path(workdir) / "results.json").read_text())["methods"]
    for row, method in zip(rows, methods):
        cells = [c.strip() for c in row.split("|")[2:-1]]
        assert len(cells) == 3 * len(fields)
        for i, field in enumerate(fields):
            per_seed = saved[method][f"{field}_per_seed"]
            assert len(per_seed) == num_seeds
            assert cells[3 * i + 2] == ", ".join(f"{x:.3g}" for x in per_seed)
            lo, hi = saved[method][f"{field}_ci"]
            assert lo <= saved[method][field] <= hi and "[" in cells[3 * i] and "[" in cells[3 * i + 1]
