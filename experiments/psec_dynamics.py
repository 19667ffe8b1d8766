"""`psec-jax psec_dynamics`: dynamics shift (e.g. halfcheetah, half friction -> nominal).

Pretrains pi_0 on shifted-dynamics data, expands one LoRA skill on 5% of nominal-dynamics data, trains
the target-only baseline on the same 5%, for several seeds at once; evaluates on the nominal
environment and writes D4RL-style normalized scores to results.json / results.md / results.png, with
pi_0 and the skill libraries. See `psec_jax.rl.dynamics` and experiments/configs/psec_dynamics.py.
"""

from __future__ import annotations

import sys
from typing import Any

import ml_collections

from psec_jax.rl import dynamics

check_config = dynamics.check_config  # run by the CLI before anything is loaded or compiled


def main(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    return dynamics.run(config, workdir)


if __name__ == "__main__":
    from psec_jax.cli import main as cli_main

    sys.exit(cli_main(["psec_dynamics", *sys.argv[1:]]))
