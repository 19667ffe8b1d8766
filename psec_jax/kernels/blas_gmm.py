"""CPU grouped matmuls through Intel MKL's sgemm, as XLA FFI custom calls (float32).

    y = gmm(lhs [m, k], rhs [G, k, n], group_sizes [G])         # rows of group g times rhs[g]
    y = gmm(lhs [m, k], rhs [G, n, k], group_sizes, transpose_rhs=True)   # times rhs[g].T
    w = tgmm(lhs [m, k], rhs [m, n], group_sizes)               # [G, k, n]: lhs_g.T @ rhs_g

Why: XLA:CPU's own dot runs at ~0.8 of MKL's speed on the AVX-512 machines here, and it has no
grouped matmul (`lax.ragged_dot` is a dense masked matmul over every group). The handlers
(`blas_gmm.cc`) loop over groups and call sgemm on each group's rows only, split into column tiles
over XLA's intra-op thread pool (MKL itself runs sequential, so its threads never compete with
XLA's). gmm and tgmm are each other's derivatives, so both have VJPs of any order. Under `vmap`
the calls run one batch member at a time.

The handlers are compiled on first use with the system C++ compiler ($CXX, else g++) against the
FFI headers in jaxlib and MKL's sequential libraries from the `mkl` wheel (`pip install
'psec-jax[blas]'`), into `<compilation cache>/ffi/` (`psec_jax.compilation_cache`), keyed by a hash
of the source, the jaxlib version and the compile command. The library is loaded with
RTLD_LOCAL | RTLD_DEEPBIND so MKL's symbols never enter the process's global namespace: PyTorch
exports its own (static) MKL's symbols, and whichever copy is global first serves both (measured:
the wheel's MKL loaded before `import torch` halved a PyTorch MoE loop's speed, every torch matmul
then running on the wheel's single-threaded layer).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path

import jax
import jax.numpy as jnp
import jaxlib

from psec_jax import compilation_cache

SOURCE = Path(__file__).with_name("blas_gmm.cc")
MKL_LIBS = ("mkl_intel_lp64", "mkl_sequential", "mkl_core")  # LP64 interface, no threads, kernels


def find_mkl() -> dict[str, Path] | None:
    """MKL_LIBS' shared objects from the installed `mkl` wheel by name; None without the wheel."""
    try:
        files = metadata.distribution("mkl").files or []
    except metadata.PackageNotFoundError:
        return None
    found = {}
    for f in files:
        stem = f.name.split(".so")[0][3:]  # libmkl_core.so.3 -> mkl_core
        if stem in MKL_LIBS and ".so" in f.name:
            found[stem] = Path(f.locate()).resolve()
    return found if len(found) == len(MKL_LIBS) else None


def _compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")


def unavailable_reason() -> str | None:
    """Why the blas grouped matmul cannot run here (one line), or None when it can."""
    if find_mkl() is None:
        return "grouped matmul 'blas' needs Intel MKL: pip install 'psec-jax[blas]' (the mkl wheel)"
    if _compiler() is None:
        return "grouped matmul 'blas' needs a C++ compiler to build its XLA handler: install g++ (or set $CXX)"
    return None


def _build(cxx: str, mkl: dict[str, Path]) -> Path:
    """The compiled handler library, built once per source, jaxlib and command (atomic rename, so
    concurrent processes never load a half-written file)."""
    libs = [str(mkl[name]) for name in MKL_LIBS]
    rpath = f"-Wl,-rpath,{mkl[MKL_LIBS[0]].parent}"
    flags = ["-O2", "-std=c++20", "-shared", "-fPIC", f"-I{jax.ffi.include_dir()}"]
    command = [cxx, *flags, str(SOURCE), "-Wl,--no-as-needed", *libs, rpath]
    key = hashlib.sha256(SOURCE.read_bytes() + jaxlib.__version__.encode() + " ".join(command).encode())
    cache = (compilation_cache.current() or compilation_cache.default_cache_dir()) / "ffi"
    path = cache / f"blas_gmm-{key.hexdigest()[:16]}.so"
    if path.exists():
        return path
    try:
        cache.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=cache)
        os.close(fd)
    except OSError as e:
        msg = f"grouped matmul 'blas': cannot write its handler to {cache} ({e}); set $PSEC_JAX_CACHE_DIR"
        raise RuntimeError(msg) from e
    done = subprocess.run([*command, "-o", tmp], capture_output=True, text=True)
    if done.returncode:
        os.unlink(tmp)
        raise RuntimeError(f"grouped matmul 'blas': compiling {SOURCE.name} failed:\n{done.stderr[-4000:]}")
    os.replace(tmp, path)
    return path


@functools.cache
def load() -> Path:
    """Build (once), load and register the handlers; returns the library's path.

    Raises ImportError without MKL, RuntimeError without a compiler or when the build fails.
    """
    reason = unavailable_reason()
    if reason is not None:
        raise (ImportError if "mkl" in reason.lower() else RuntimeError)(reason)
    path = _build(_compiler(), find_mkl())
    lib = ctypes.CDLL(str(path), mode=os.RTLD_LOCAL | os.RTLD_DEEPBIND)  # MKL stays private (docstring)
    for name in ("PsecBlasGmm", "PsecBlasTgmm"):
        jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, name)), platform="cpu")
    return path


def _check(name: str, lhs: jax.Array, rhs: jax.Array, group_sizes: jax.Array, shape_ok: bool) -> None:
    """TypeError for other dtypes than float32 operands and integer group sizes, ValueError for shapes."""
    if lhs.dtype != jnp.float32 or rhs.dtype != jnp.float32:
        raise TypeError(f"grouped matmul 'blas' is float32 only (MKL sgemm); got {lhs.dtype}, {rhs.dtype}")
    if not jnp.issubdtype(group_sizes.dtype, jnp.integer):
        raise TypeError(f"{name}: group_sizes must be integers, got {group_sizes.dtype}")
    if not shape_ok or lhs.ndim != 2 or group_sizes.ndim != 1:
        raise ValueError(f"{name}: bad shapes lhs {lhs.shape}, rhs {rhs.shape}, group_sizes {group_sizes.shape}")


def _call(target: str, shape: tuple[int, ...], *args: jax.Array, **attrs) -> jax.Array:
    load()
    out = jax.ShapeDtypeStruct(shape, jnp.float32)
    return jax.ffi.ffi_call(target, out, vmap_method="sequential")(*args, **attrs)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def gmm(lhs: jax.Array, rhs: jax.Array, group_sizes: jax.Array, transpose_rhs: bool = False) -> jax.Array:
    """[m, k] rows grouped in order x rhs [G, k, n] ([G, n, k] with transpose_rhs) -> [m, n].

    group_sizes: [G] int32; rows past sum(group_sizes) (clipped to m) come back as zeros.
    """
    ok = (
        rhs.ndim == 3 and rhs.shape[0] == group_sizes.shape[0] and lhs.shape[-1] == rhs.shape[2 if transpose_rhs else 1]
    )
    _check("gmm", lhs, rhs, group_sizes, ok)
    n = rhs.shape[1] if transpose_rhs else rhs.shape[2]
    sizes = group_sizes.astype(jnp.int32)
    return _call("PsecBlasGmm", (lhs.shape[0], n), lhs, rhs, sizes, transpose_rhs=transpose_rhs)


@jax.custom_vjp
def tgmm(lhs: jax.Array, rhs: jax.Array, group_sizes: jax.Array) -> jax.Array:
    """lhs [m, k], rhs [m, n], rows grouped in order -> [G, k, n]: group g's lhs rows transposed times
    its rhs rows (zeros for an empty group); rows past sum(group_sizes) are not read."""
    _check("tgmm", lhs, rhs, group_sizes, rhs.ndim == 2 and lhs.shape[:1] == rhs.shape[:1])
    shape = (group_sizes.shape[0], lhs.shape[1], rhs.shape[1])
    return _call("PsecBlasTgmm", shape, lhs, rhs, group_sizes.astype(jnp.int32))


def _gmm_fwd(lhs, rhs, group_sizes, transpose_rhs):
    return gmm(lhs, rhs, group_sizes, transpose_rhs), (lhs, rhs, group_sizes)


def _gmm_bwd(transpose_rhs, res, dy):
    lhs, rhs, group_sizes = res
    d_lhs = gmm(dy, rhs, group_sizes, not transpose_rhs)
    d_rhs = tgmm(dy, lhs, group_sizes) if transpose_rhs else tgmm(lhs, dy, group_sizes)
    return d_lhs, d_rhs, None


def _tgmm_fwd(lhs, rhs, group_sizes):
    return tgmm(lhs, rhs, group_sizes), (lhs, rhs, group_sizes)


def _tgmm_bwd(res, dw):  # w[g] = lhs_g.T @ rhs_g: d lhs_g = rhs_g @ dw[g].T, d rhs_g = lhs_g @ dw[g]
    lhs, rhs, group_sizes = res
    return gmm(rhs, dw, group_sizes, True), gmm(lhs, dw, group_sizes), None


gmm.defvjp(_gmm_fwd, _gmm_bwd)
tgmm.defvjp(_tgmm_fwd, _tgmm_bwd)
