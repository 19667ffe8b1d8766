"""The experiments ``psec-jax <name>`` runs: one table, every entry inside the library.

An experiment is an object with ``run(config, workdir) -> dict`` (its summary) and
``check_config(config)`` (ValueError for values that cannot run, before anything is compiled), and
optionally ``RESUME_MAY_CHANGE`` (config fields a rerun in the same workdir may change) and
``check_devices(config)`` (ValueError for a config the started backend's devices cannot run, e.g. a mesh;
the CLI calls it before the workdir is touched). A module can be
one (``psec_jax.smoke``, ``psec_jax.models.runner``); so is each PSEC ``runner.Setting``. Its config is a
shipped config (``psec_jax.configs``) by name: ``default_config`` is the example the help text shows and
the reference whose fields every config of the experiment must have.

    experiment = registry.load("lm_moe")                  # psec_jax.models.runner
    summary = experiment.run(config, "runs/lm")
"""

from __future__ import annotations

import importlib
from typing import Any, NamedTuple


class Experiment(NamedTuple):
    target: str  # "package.module" or "package.module:ATTRIBUTE": the object with run / check_config
    help: str  # one line for `psec-jax --help`
    default_config: str  # shipped config name and preset, e.g. "lm_moe:small"


EXPERIMENTS: dict[str, Experiment] = {
    "smoke": Experiment(
        "psec_jax.smoke",
        "tiny regression run: checks install, configs, jit(scan) training, metrics, checkpoints, resume",
        "smoke",
    ),
    "behavior": Experiment(
        "psec_jax.data.behavior",
        "train SAC behaviour policies (random/medium/expert snapshots) for one task",
        "behavior",
    ),
    "psec_continual": Experiment(
        "psec_jax.rl.continual:SETTING",
        "PSEC continual policy shift on walker (stand -> walk/run): all stages, baselines, results table",
        "psec_continual:small",
    ),
    "psec_safe": Experiment(
        "psec_jax.rl.safe:SETTING",
        "PSEC safe composition (reward + cost skills) on a velocity task: normalized reward and cost",
        "psec_safe:small",
    ),
    "lm_moe": Experiment(
        "psec_jax.models.runner",
        "MoE language model on stdlib text + task mixture: top-1 vs top-2 vs top-p routing, p sweep, plots",
        "lm_moe:small",
    ),
    "psec_dynamics": Experiment(
        "psec_jax.rl.dynamics:SETTING",
        "PSEC dynamics shift (shifted-dynamics pi_0 + LoRA on 5% nominal data): normalized scores",
        "psec_dynamics:small",
    ),
}


def load(name: str) -> Any:
    """The experiment object of ``EXPERIMENTS[name]`` (imports its module); KeyError for an unknown name."""
    module, _, attribute = EXPERIMENTS[name].target.partition(":")
    obj = importlib.import_module(module)
    return getattr(obj, attribute) if attribute else obj


def reference_config(name: str) -> Any:
    """The experiment's own default config (``default_config``), to compare a given config's fields with."""
    config_name, _, preset = EXPERIMENTS[name].default_config.partition(":")
    module = importlib.import_module(f"psec_jax.configs.{config_name}")
    return module.get_config(*([preset] if preset else []))
