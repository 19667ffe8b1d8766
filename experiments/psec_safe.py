"""`psec-jax psec_safe`: safe multi-objective composition on a velocity-constrained body (halfcheetah).

Pretrains pi_0 on offline data with costs, expands a reward skill (IQL) and a cost skill (reachability
critic) as LoRAs, composes them (PSEC / NSEC / ASEC, composers trained on the episodes within the cost
limit), for several seeds at once; reports normalized reward and cost per method and writes
results.json / results.md / results.png, pi_0, the skill libraries and composers to the workdir.
See `psec_jax.rl.safe` and experiments/configs/psec_safe.py.
"""

from __future__ import annotations

import sys
from typing import Any

import ml_collections

from psec_jax.rl import safe

check_config = safe.check_config  # run by the CLI before anything is loaded or compiled


def main(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    return safe.run(config, workdir)


if __name__ == "__main__":
    from psec_jax.cli import main as cli_main

    sys.exit(cli_main(["psec_safe", *sys.argv[1:]]))
