"""Test helpers shared by every psec_jax test: one tolerance table, tree comparison, recompile checks.

- ``TOLERANCES``: the single dtype-keyed table of ``(rtol, atol)`` that every numeric comparison uses.
- ``assert_trees_close``: compares two pytrees leaf by leaf; NaN/Inf fail first, then shape, then value,
  and the error names the leaf path, the worst element and the tolerance used.
- ``count_compilations`` / ``assert_no_recompile``: catch retracing and recompilation, the usual cause
  of a training loop that is slow after its first step.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# (rtol, atol) for comparing a computation against a reference in the given dtype. The comparison uses
# the entry of the less precise of the two dtypes. Integers and booleans compare exactly.
TOLERANCES: dict[np.dtype, tuple[float, float]] = {
    np.dtype(np.float64): (1e-9, 1e-10),
    np.dtype(np.float32): (1e-5, 1e-5),
    np.dtype(jnp.float16): (2e-3, 2e-3),
    np.dtype(jnp.bfloat16): (2e-2, 2e-2),
}


def tolerance(*dtypes: Any) -> tuple[float, float]:
    """``(rtol, atol)`` for comparing values of these dtypes: the loosest entry among them.

    Raises KeyError naming the dtype when a floating dtype has no entry in ``TOLERANCES``.
    """
    rtol, atol = 0.0, 0.0
    for dtype in dtypes:
        dtype = np.dtype(dtype)
        if not jnp.issubdtype(dtype, jnp.inexact):
            continue
        if jnp.issubdtype(dtype, jnp.complexfloating):
            dtype = np.dtype(np.float64 if dtype == np.complex128 else np.float32)
        if dtype not in TOLERANCES:
            raise KeyError(f"no tolerance for dtype {dtype}; add it to psec_jax.testing.TOLERANCES")
        r, a = TOLERANCES[dtype]
        rtol, atol = max(rtol, r), max(atol, a)
    return rtol, atol


def _as_numpy(x: Any) -> np.ndarray:
    x = np.asarray(x)
    # bf16/fp16/fp8 leaves are widened so the arithmetic below is exact enough to judge them.
    if jnp.issubdtype(x.dtype, jnp.floating) and x.dtype.itemsize < 4:
        x = x.astype(np.float32)
    return x


def assert_trees_close(
    actual: Any,
    expected: Any,
    *,
    rtol: float | None = None,
    atol: float | None = None,
    allow_nonfinite: bool = False,
    err_msg: str = "",
) -> None:
    """Asserts two pytrees have the same structure, shapes and (within tolerance) values.

    Checks, in order, for every leaf: NaN/Inf in either tree (unless ``allow_nonfinite``, which then
    requires them at the same positions), shape, then ``|actual - expected| <= atol + rtol*|expected|``.
    ``rtol``/``atol`` default to ``tolerance(actual.dtype, expected.dtype)`` per leaf.
    Integer and boolean leaves must match exactly.
    """
    prefix = f"{err_msg}: " if err_msg else ""
    a_leaves, a_def = jax.tree_util.tree_flatten_with_path(actual)
    e_leaves, e_def = jax.tree_util.tree_flatten_with_path(expected)
    if a_def != e_def:
        raise AssertionError(f"{prefix}tree structures differ:\n  actual:   {a_def}\n  expected: {e_def}")
    for (path, a_raw), (_, e_raw) in zip(a_leaves, e_leaves):
        name = jax.tree_util.keystr(path) or "<root>"
        a_dtype, e_dtype = np.asarray(a_raw).dtype, np.asarray(e_raw).dtype
        a, e = _as_numpy(a_raw), _as_numpy(e_raw)
        for label, x in (("actual", a), ("expected", e)):
            if jnp.issubdtype(x.dtype, jnp.inexact) and not allow_nonfinite and not np.all(np.isfinite(x)):
                bad = np.size(x) - int(np.isfinite(x).sum())
                raise AssertionError(
                    f"{prefix}{name}: {label} has {bad} NaN/Inf value(s) of {np.size(x)} "
                    f"(nan={int(np.isnan(x).sum())}, inf={int(np.isinf(x).sum())})"
                )
        if a.shape != e.shape:
            raise AssertionError(f"{prefix}{name}: shape {a.shape} != expected {e.shape}")
        if not jnp.issubdtype(a.dtype, jnp.inexact) and not jnp.issubdtype(e.dtype, jnp.inexact):
            if not np.array_equal(a, e):
                idx = np.argwhere(a != e)[0]
                raise AssertionError(
                    f"{prefix}{name}: {int((a != e).sum())} element(s) differ; first at index "
                    f"{tuple(idx)}: {a[tuple(idx)]} != {e[tuple(idx)]}"
                )
            continue
        leaf_rtol, leaf_atol = tolerance(a_dtype, e_dtype)
        leaf_rtol = leaf_rtol if rtol is None else rtol
        leaf_atol = leaf_atol if atol is None else atol
        a64, e64 = a.astype(np.float64), e.astype(np.float64)
        if allow_nonfinite:
            same_nonfinite = (np.isnan(a64) & np.isnan(e64)) | (np.isinf(a64) & (a64 == e64))
            if not np.array_equal(~np.isfinite(a64), ~np.isfinite(e64)) or not np.all(
                same_nonfinite | np.isfinite(a64)
            ):
                raise AssertionError(f"{prefix}{name}: NaN/Inf positions or signs differ")
            a64 = np.where(np.isfinite(a64), a64, 0.0)
            e64 = np.where(np.isfinite(e64), e64, 0.0)
        err = np.abs(a64 - e64)
        bound = leaf_atol + leaf_rtol * np.abs(e64)
        if np.any(err > bound):
            worst = np.unravel_index(np.argmax(err - bound), err.shape) if err.ndim else ()
            n_bad = int((err > bound).sum())
            raise AssertionError(
                f"{prefix}{name}: {n_bad} of {err.size} element(s) outside rtol={leaf_rtol:g}, "
                f"atol={leaf_atol:g} (dtypes {a_dtype}/{e_dtype}); worst at {tuple(int(i) for i in worst)}: "
                f"actual {a64[worst]:.8g}, expected {e64[worst]:.8g}, |diff| {err[worst]:.3g}; "
                f"max |diff| {err.max():.3g}"
            )


@dataclasses.dataclass
class CompileLog:
    """What ``count_compilations`` saw: one entry per traced function, in order."""

    traced: list[str] = dataclasses.field(default_factory=list)  # names of functions traced by jit

    @property
    def count(self) -> int:
        """Number of traces (each trace of a jitted function precedes a lowering and a compile)."""
        return len(self.traced)


_TRACE_EVENT = "/jax/core/compile/jaxpr_trace_duration"


@contextlib.contextmanager
def count_compilations() -> Iterator[CompileLog]:
    """Records every jit trace inside the ``with`` block (including eager ops, which jit too)."""
    log = CompileLog()

    def listener(event: str, duration: float, **kwargs: Any) -> None:
        del duration
        if event == _TRACE_EVENT:
            log.traced.append(str(kwargs.get("fun_name", "?")))

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield log
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def assert_no_recompile(
    fn: Callable[..., Any],
    *args: Any,
    next_args: Callable[[Any], tuple] | None = None,
    calls: int = 3,
    **kwargs: Any,
) -> Any:
    """Calls ``fn`` ``calls`` times and asserts that no call after the first traces or compiles.

    The first call is ``fn(*args, **kwargs)``. Each later call gets ``next_args(previous_output)``
    when given (e.g. ``lambda out: (out[0],)`` to feed a training state back in), else the same
    ``args``. Outputs are blocked on so asynchronous dispatch cannot hide work. Returns the last output.
    """
    if calls < 2:
        raise ValueError(f"calls must be >= 2 to observe a recompile, got {calls}")
    out = jax.block_until_ready(fn(*args, **kwargs))
    for i in range(1, calls):
        call_args = next_args(out) if next_args is not None else args
        with count_compilations() as log:
            out = jax.block_until_ready(fn(*call_args, **kwargs))
        if log.count:
            raise AssertionError(f"call {i + 1} of {getattr(fn, '__name__', fn)} recompiled: traced {log.traced}")
    return out
