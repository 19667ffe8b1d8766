"""Grouped matmul over maintained kernels: megablox on TPU, tokamax on GPU, MKL on CPU, `lax.ragged_dot` else.

    y = grouped_matmul(lhs [m, k], rhs [G, k, n], group_sizes [G])  # rows of group g times rhs[g]

Rows are grouped in order (group 0 first); rows past `sum(group_sizes)` come back as zeros from
every implementation. Implementations ("auto" picks by the default backend: megablox on TPU, tokamax
on GPU when installed, blas on CPU for float32 when installed, else ragged_dot):

- "megablox": `jax.experimental.pallas.ops.tpu.megablox.gmm` (in the jax wheel; TPU, or interpret
  mode anywhere, which is how it is tested on CPU). m is padded to the row tile.
- "tokamax": `tokamax.ragged_dot` (optional extra `psec-jax[tokamax]`; Mosaic GPU kernels on
  Hopper/Blackwell, its own XLA fallback elsewhere; 0.0.12 tested here on CPU). tokamax reads its
  options from absl flags and parses `sys.argv` itself when nothing has parsed them, which fails on
  any non-absl argument; so when absl flags are still unparsed the first tokamax call marks them
  parsed, with their defaults (an absl application parses its flags before that and is unaffected).
- "blas": MKL's sgemm per group through an XLA FFI custom call (`psec_jax.kernels.blas_gmm`; CPU,
  float32; optional extra `psec-jax[blas]` and a C++ compiler). Each group's rows only, no padding;
  measured 1.2-1.3x XLA:CPU's own dot here, and ragged_dot is a dense masked matmul on CPU.
- "ragged_dot": `jax.lax.ragged_dot`. Fast on TPU; on CPU and on NVIDIA GPUs XLA lowers it to a
  dense masked matmul (G times the work), so it is only the fallback.
"""

from __future__ import annotations

import functools
import importlib.util

import jax
import jax.numpy as jnp

from psec_jax.kernels import blas_gmm

IMPLS = ("auto", "ragged_dot", "megablox", "tokamax", "blas")


@functools.cache
def tokamax_available() -> bool:
    """Whether the optional tokamax package is importable."""
    return importlib.util.find_spec("tokamax") is not None


@functools.cache
def blas_available() -> bool:
    """Whether MKL and a C++ compiler for the "blas" implementation are installed."""
    return blas_gmm.unavailable_reason() is None


def resolve_impl(impl: str, dtype: jnp.dtype | None = None) -> str:
    """The implementation "auto" stands for on the default backend (for operands of `dtype`, when
    given: "blas" takes float32 only); validates `impl`."""
    if impl not in IMPLS:
        raise ValueError(f"unknown grouped matmul {impl!r}; choose from {IMPLS}")
    if impl == "tokamax" and not tokamax_available():
        raise ImportError("grouped matmul 'tokamax' needs the tokamax package: pip install 'psec-jax[tokamax]'")
    if impl == "blas":
        blas_gmm.load()  # ImportError / RuntimeError naming what to install
    if impl != "auto":
        return impl
    backend = jax.default_backend()
    if backend == "tpu":
        return "megablox"
    if backend == "gpu" and tokamax_available():
        return "tokamax"
    if backend == "cpu" and blas_available() and (dtype is None or dtype == jnp.float32):
        return resolve_impl("blas")
    return "ragged_dot"


def _megablox(lhs: jax.Array, rhs: jax.Array, group_sizes: jax.Array, interpret: bool) -> jax.Array:
    from jax.experimental.pallas.ops.tpu.megablox import gmm

    m, k = lhs.shape
    n = rhs.shape[-1]
    tm = min(128, -(-m // 8) * 8)  # row tile: m is padded to a multiple of it
    padded = -(-m // tm) * tm
    x = jnp.pad(lhs, ((0, padded - m), (0, 0)))
    y = gmm(
        x,
        rhs,
        group_sizes,
        preferred_element_type=lhs.dtype,
        tiling=(tm, min(128, k), min(128, n)),
        interpret=interpret,
    )
    return y[:m]


def grouped_matmul(
    lhs: jax.Array, rhs: jax.Array, group_sizes: jax.Array, *, impl: str = "auto", interpret: bool | None = None
) -> jax.Array:
    """[m, k] rows grouped in order x [G, k, n] per-group weights -> [m, n] in lhs's dtype.

    group_sizes: [G] int32, sum <= m; rows past the sum are returned as zeros.
    interpret: megablox only; default: interpret unless on TPU.
    """
    if lhs.ndim != 2 or rhs.ndim != 3 or group_sizes.shape != rhs.shape[:1] or lhs.shape[1] != rhs.shape[1]:
        raise ValueError(
            f"grouped_matmul expects lhs [m, k], rhs [G, k, n], group_sizes [G]; got "
            f"{lhs.shape}, {rhs.shape}, {group_sizes.shape}"
        )
    impl = resolve_impl(impl, jnp.result_type(lhs, rhs))
    group_sizes = group_sizes.astype(jnp.int32)
    if impl == "ragged_dot":
        return jax.lax.ragged_dot(lhs, rhs, group_sizes)
    if impl == "blas":  # writes zeros past the groups itself (and their gradient)
        return blas_gmm.gmm(lhs, rhs, group_sizes)
    # Kernels leave rows past the groups unwritten, forwards (y) and backwards (lhs's gradient): the
    # two selects zero them, the first through its VJP.
    in_group = (jnp.arange(lhs.shape[0]) < jnp.sum(group_sizes))[:, None]
    lhs = jnp.where(in_group, lhs, jnp.zeros((), lhs.dtype))
    if impl == "tokamax":
        import tokamax
        from absl import flags

        if not flags.FLAGS.is_parsed():  # else tokamax parses sys.argv itself and fails on non-absl args
            flags.FLAGS.mark_as_parsed()
        y = tokamax.ragged_dot(lhs, rhs, group_sizes, preferred_element_type=lhs.dtype)
    else:
        y = _megablox(lhs, rhs, group_sizes, jax.default_backend() != "tpu" if interpret is None else interpret)
    return jnp.where(in_group, y, jnp.zeros((), y.dtype))
