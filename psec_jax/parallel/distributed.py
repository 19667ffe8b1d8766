"""Multi-process (multi-host) runs on JAX's own runtime: `jax.distributed.initialize`.

    psec-jax lm_moe ... --coordinator_address=host0:1234 --num_processes=2 --process_id=0   # on host 0
    psec-jax lm_moe ... --coordinator_address=host0:1234 --num_processes=2 --process_id=1   # on host 1

or the environment variables JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID. Every process
runs the same program on the global arrays (its devices hold their shards); checkpoints are written by
every process through Orbax (each its shards, the primary the metadata); logs, metrics, progress and
results files come from process 0 only (`is_main`). On CPU the collectives between processes use gloo.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

ENV = {
    "coordinator_address": "JAX_COORDINATOR_ADDRESS",
    "num_processes": "JAX_NUM_PROCESSES",
    "process_id": "JAX_PROCESS_ID",
}


def settings(
    coordinator_address: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> dict[str, Any] | None:
    """The multi-process settings from the arguments, else the environment (ENV); None when neither asks
    for more than one process. ValueError names a missing or inconsistent setting."""
    given = {"coordinator_address": coordinator_address, "num_processes": num_processes, "process_id": process_id}
    for name, var in ENV.items():
        if given[name] in (None, "") and os.environ.get(var, "") != "":
            given[name] = os.environ[var]
    if all(v in (None, "") for v in given.values()):
        return None
    missing = [f"--{k} (or ${ENV[k]})" for k, v in given.items() if v in (None, "")]
    if missing:
        raise ValueError(f"a multi-process run needs {', '.join(missing)} as well")
    try:
        n, i = int(given["num_processes"]), int(given["process_id"])
    except ValueError:
        raise ValueError(
            f"num_processes and process_id must be integers, got {given['num_processes']!r} and {given['process_id']!r}"
        ) from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"need num_processes >= 1 and 0 <= process_id < num_processes, got {n} and {i}")
    if ":" not in str(given["coordinator_address"]):
        raise ValueError(f"coordinator_address must be host:port, got {given['coordinator_address']!r}")
    return {"coordinator_address": str(given["coordinator_address"]), "num_processes": n, "process_id": i}


def initialize(
    coordinator_address: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> bool:
    """Join a multi-process run (`settings`) before anything else touches the backend; returns whether
    it did (False: a single-process run, nothing to do)."""
    s = settings(coordinator_address, num_processes, process_id)
    if s is None:
        return False
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU devices' collectives across processes
    jax.distributed.initialize(**s)
    return True


def is_main() -> bool:
    """Whether this is process 0, the one that logs and writes results."""
    return jax.process_index() == 0


def to_host(tree: Any) -> Any:
    """Every array of tree as a NumPy array of its global value, on every process (`jax.device_get`
    for arrays this process holds whole, an all-gather across processes for the others)."""

    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return jax.device_get(x)

    return jax.tree.map(one, tree)


def global_array(x: Any, sharding: jax.sharding.Sharding) -> jax.Array:
    """A global array with `sharding` from a value every process holds whole (e.g. the same host
    batch or PRNG keys on every process): each process places its own shards."""
    if isinstance(x, jax.Array) and x.sharding == sharding:
        return x
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return jax.device_put(x, sharding)
    if jax.process_count() == 1:
        return jax.device_put(x, sharding)
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        raw = np.asarray(jax.random.key_data(x))  # [..., impl words]: shard the key axes only
        data = global_array(raw, _trailing(sharding, x.ndim, raw.ndim - x.ndim))
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
    value = np.asarray(x)
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def _trailing(sharding: jax.sharding.NamedSharding, ndim: int, extra: int) -> jax.sharding.NamedSharding:
    spec = tuple(sharding.spec) + (None,) * (ndim - len(sharding.spec))
    return jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(*spec, *(None,) * extra))
