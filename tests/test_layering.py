"""Layering: the math modules never import a simulator, the SAC stack or the experiments package.

Each import runs in a fresh interpreter, so what an earlier test imported cannot hide a dependency."""

import json
import subprocess
import sys

import pytest

# top-level packages (or psec_jax modules) that must not be imported as a side effect
HEAVY = ("mujoco", "mujoco_playground", "brax", "experiments", "psec_jax.data.sac", "psec_jax.data.behavior",
         "psec_jax.data.collect", "psec_jax.envs.registry")

PROBE = """
import importlib, json, sys
importlib.import_module(sys.argv[1])
print(json.dumps(sorted(m for m in sys.modules)))
"""


def imported_by(module: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", PROBE, module], capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout.splitlines()[-1]))


def heavy(modules: set[str]) -> list[str]:
    return sorted(h for h in HEAVY if any(m == h or m.startswith(h + ".") for m in modules))


@pytest.mark.parametrize("module", ["psec_jax.lora", "psec_jax.moe", "psec_jax.rl.diffusion", "psec_jax.rl.critics",
                                    "psec_jax.rl.train", "psec_jax.rl.policy", "psec_jax.data", "psec_jax.envs", "psec_jax.kernels"])
def test_math_modules_import_no_simulator(module):
    assert heavy(imported_by(module)) == []


def test_the_probe_sees_heavy_imports():
    """The check above can fail: asking for the registry does import MuJoCo."""
    assert "mujoco" in heavy(imported_by("psec_jax.envs.registry"))


def test_parallel_imports_no_simulator_and_no_models():
    mods = imported_by("psec_jax.parallel")
    assert heavy(mods) == [] and not any(m.startswith(("psec_jax.models", "psec_jax.rl")) for m in mods)
