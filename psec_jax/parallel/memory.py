"""Per-device memory of a compiled program, from abstract inputs (nothing of full size is allocated).

    state = abstract(jax.eval_shape(init, key), state_shardings)     # ShapeDtypeStructs with shardings
    report = compiled_memory(jax.jit(step), state, batch)             # bytes per device

XLA compiles one SPMD program per device, so its memory analysis is per device: arguments (the
parameters, optimizer state and batch shards a device holds), outputs, temporaries (activations,
gradients, buffers of collectives) and the argument bytes that outputs reuse (donation).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import jax


def abstract(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs of `tree` (arrays or ShapeDtypeStructs) carrying `shardings` (a matching tree
    of Shardings, or one for every leaf)."""
    if isinstance(shardings, jax.sharding.Sharding):
        return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=shardings), tree)
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, shardings)


def tree_bytes(tree: Any) -> int:
    """Bytes of every array (or ShapeDtypeStruct) in tree, all devices together."""
    return sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(tree))


def per_device_bytes(tree: Any) -> int:
    """Largest per-device bytes of a tree of sharded ShapeDtypeStructs (or arrays): each leaf's shard shape."""

    def shard(a):
        shape = a.sharding.shard_shape(a.shape) if a.sharding is not None else a.shape
        return math.prod(shape) * a.dtype.itemsize

    return sum(shard(a) for a in jax.tree.leaves(tree))


def compiled_memory(fn: Callable[..., Any] | Any, *args: Any) -> dict[str, float]:
    """Lower and compile a jitted `fn` for `args` (ShapeDtypeStructs, e.g. from `abstract`) and return
    its per-device memory in bytes: arguments, outputs, temporaries, aliased (outputs that reuse
    donated arguments), peak (= arguments + outputs + temporaries - aliased) and the seconds spent
    lowering and compiling. A `.lower`-able object (a jitted function or `parallel.sweep`) is accepted.
    """
    t0 = time.perf_counter()
    lowered = fn.lower(*args)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    m = compiled.memory_analysis()
    if m is None:
        raise RuntimeError(f"the {jax.default_backend()} backend reports no memory analysis for this program")
    out = {
        "arguments": m.argument_size_in_bytes,
        "outputs": m.output_size_in_bytes,
        "temporaries": m.temp_size_in_bytes,
        "aliased": m.alias_size_in_bytes,
        "lower_seconds": t1 - t0,
        "compile_seconds": t2 - t1,
    }
    out["peak"] = out["arguments"] + out["outputs"] + out["temporaries"] - out["aliased"]
    return out
