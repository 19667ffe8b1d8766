"""`psec-jax psec_continual`: continual policy shift on walker (stand -> walk / run, stand+walk -> run).

Pretrains pi_0 on stand data, expands LoRA (and MLP-adapter) skills on 10 target trajectories, composes
them (PSEC, NSEC, ASEC, fixed weights) and trains the scratch baseline, for several seeds at once;
writes results.json / results.md / results.png, the policies and skill libraries to the workdir.
See `psec_jax.rl.continual` and experiments/configs/psec_continual.py.
"""

from __future__ import annotations

import sys
from typing import Any

import ml_collections

from psec_jax.rl import continual

check_config = continual.check_config  # run by the CLI before anything is loaded or compiled


def main(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    return continual.run(config, workdir)


if __name__ == "__main__":
    from psec_jax.cli import main as cli_main

    sys.exit(cli_main(["psec_continual", *sys.argv[1:]]))
