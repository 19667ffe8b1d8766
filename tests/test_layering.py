"""Layering: the math modules never import a simulator, the SAC stack or the experiments package.

Each import runs in a fresh interpreter, so what an earlier test imported cannot hide a dependency."""

import json
import subprocess
import sys

import pytest

# top-level packages (or psec_jax modules) that must not be imported as a side effect
HEAVY = (
    "mujoco",
    "mujoco_playground",
    "brax",
    "experiments",
    "psec_jax.data.sac",
    "psec_jax.data.behavior",
    "psec_jax.data.collect",
    "psec_jax.envs.registry",
)

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


@pytest.mark.parametrize(
    "module",
    [
        "psec_jax.lora",
        "psec_jax.moe",
        "psec_jax.routed",
        "psec_jax.rl.diffusion",
        "psec_jax.rl.critics",
        "psec_jax.rl.train",
        "psec_jax.rl.policy",
        "psec_jax.data",
        "psec_jax.envs",
        "psec_jax.kernels",
    ],
)
def test_math_modules_import_no_simulator(module):
    assert heavy(imported_by(module)) == []


def test_the_probe_sees_heavy_imports():
    """The check above can fail: asking for the registry does import MuJoCo."""
    assert "mujoco" in heavy(imported_by("psec_jax.envs.registry"))


def test_parallel_imports_no_simulator_and_no_models():
    mods = imported_by("psec_jax.parallel")
    assert heavy(mods) == [] and not any(m.startswith(("psec_jax.models", "psec_jax.rl")) for m in mods)


# --- the library names nothing above it -----------------------------------------------------------------

import ast  # noqa: E402
import re  # noqa: E402
from pathlib import Path  # noqa: E402

PACKAGE = Path(__file__).resolve().parents[1] / "psec_jax"
ABOVE = re.compile(r"^(experiments|benchmarks|tests)(\.|:|$)")  # importable names outside the library
# a string that names a module above ("experiments.smoke", "benchmarks:main"); a bare word may be a directory name
ABOVE_STRING = re.compile(r"^(experiments|benchmarks|tests)[./:]\w")
# package -> subpackages of psec_jax it must not import (the layering is one-way)
BELOW = {
    "lora": ("routed", "moe", "rl", "models"),  # a route reaches lora_dense as an object, not an import
    "moe": ("routed", "lora", "rl", "models"),
    "routed": ("rl", "models"),  # joins lora and moe
    "kernels": ("moe", "rl", "models"),
    "routing": ("kernels", "moe", "rl", "models"),
    "envs": ("rl", "models"),
    "data": ("rl", "models"),
    "parallel": ("rl", "models"),
    # peers, neither above the other: what both need lives below them (psec_jax.stats)
    "models": ("rl",),
    "rl": ("models",),
}


def imports_and_names(path: Path) -> tuple[set[str], set[str]]:
    """The modules a source file imports (at any depth, late imports included) and every string constant in it
    that could name a module (importlib strings, "module:attribute" targets)."""
    tree = ast.parse(path.read_text(), str(path))
    modules, names = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            modules |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and re.fullmatch(r"[\w.:/-]+", node.value):
            names.add(node.value)
    return modules, names


def test_the_library_names_nothing_above_it():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        modules, names = imports_and_names(path)
        offenders += [f"{path.relative_to(PACKAGE.parent)}: {m}" for m in sorted(modules) if ABOVE.match(m)]
        offenders += [f"{path.relative_to(PACKAGE.parent)}: {n!r}" for n in sorted(names) if ABOVE_STRING.match(n)]
    assert offenders == []


def test_the_scan_sees_a_late_import_and_an_importlib_string(tmp_path):
    """The check above can fail: a late import and a string naming a module above are both found."""
    source = tmp_path / "bad.py"
    source.write_text(
        "def f():\n    import experiments.smoke\n    return importlib.import_module('benchmarks.x')\n"
        "PATH = 'experiments/pretrained/pi0'\n"
    )
    modules, names = imports_and_names(source)
    assert any(ABOVE.match(m) for m in modules)
    assert {n for n in names if ABOVE_STRING.match(n)} == {"benchmarks.x", "experiments/pretrained/pi0"}


@pytest.mark.parametrize("package", sorted(BELOW))
def test_lower_packages_never_import_the_layers_above(package):
    bad = []
    for path in sorted((PACKAGE / package).rglob("*.py")):
        modules, _ = imports_and_names(path)
        bad += [
            f"{path.name}: {m}"
            for m in sorted(modules)
            if any(m == f"psec_jax.{up}" or m.startswith(f"psec_jax.{up}.") for up in BELOW[package])
        ]
    assert bad == []


def test_every_registered_experiment_lives_in_the_library():
    from psec_jax import registry

    mods = imported_by("psec_jax.registry")
    assert not any(ABOVE.match(m) for m in mods)
    for name, experiment in registry.EXPERIMENTS.items():
        assert experiment.target.startswith("psec_jax."), name
        obj = registry.load(name)
        assert callable(obj.run) and callable(obj.check_config), name
        registry.reference_config(name)  # its shipped default config loads
