"""One process of the 2-process test (tests/test_multihost.py): joins the run from the JAX_* environment
variables, trains the tiny LM with `psec_jax.models.runner` and prints its summary as one JSON line."""

import json
import sys

from psec_jax.parallel import distributed

assert distributed.initialize(), "JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID must be set"

import jax  # noqa: E402

from psec_jax.configs import lm_moe as lm_config  # noqa: E402
from psec_jax.models import runner as lm_moe  # noqa: E402

config = lm_config.get_config("tiny")
config.train.update({"routers": ("top_p",), "seeds": 2, "sweep_p": ()})
summary = lm_moe.run(config, sys.argv[1])
print(
    "SUMMARY "
    + json.dumps(
        {
            "process": jax.process_index(),
            "processes": jax.process_count(),
            "devices": jax.device_count(),
            "summary": summary,
        },
        sort_keys=True,
    ),
    flush=True,
)
