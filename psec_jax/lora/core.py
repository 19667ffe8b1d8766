"""Adapters over any parameter pytree: paths, ``init``, dense deltas, ``merge`` / ``unmerge``.

An *adapter tree* mirrors the base parameters' nesting, pruned to the adapted kernels, with a
``LoRAPair`` in place of each kernel: ``{"params": {"Dense_0": {"kernel": LoRAPair(a, b)}}}``.
Paths are the ``/``-joined keys of a leaf (``"params/Dense_0/kernel"`` for linen, ``"blocks/0/kernel"``
for ``nnx.State``, whose ``.value`` suffix is dropped).

One skill: ``a: [*in, r]``, ``b: [r, *out]``. A stack of K skills (a skill library): ``a: [K, *in, r]``,
``b: [K, r, *out]``. ``merge`` also accepts dense deltas (arrays shaped like the kernel) as leaves,
which is what the static composition methods ``exact``/``ties``/``dare`` return.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from psec_jax import prng
from psec_jax.lora.config import LoRAConfig


class LoRAPair(NamedTuple):
    """The two factors of one adapted kernel (shapes for a single skill; stacked adds a leading K)."""

    a: jax.Array  # [*in, r]  or [K, *in, r]
    b: jax.Array  # [r, *out] or [K, r, *out]


def _key_name(k: Any) -> str | None:
    if isinstance(k, jax.tree_util.DictKey):
        return str(k.key)
    if isinstance(k, jax.tree_util.SequenceKey):
        return str(k.idx)
    if isinstance(k, jax.tree_util.GetAttrKey):
        return k.name
    if isinstance(k, jax.tree_util.FlattenedIndexKey):
        return str(k.key)
    return str(k)


def path_str(path: tuple) -> str:
    """``"params/Dense_0/kernel"`` for a jax key path; a trailing nnx ``.value`` is dropped."""
    names = [_key_name(k) for k in path]
    if len(names) > 1 and isinstance(path[-1], jax.tree_util.GetAttrKey) and names[-1] == "value":
        names = names[:-1]
    return "/".join(names)


def flatten(tree: Any) -> dict[str, Any]:
    """``{path: leaf}`` of a parameter tree, or ``{path: LoRAPair}`` of an adapter tree."""
    leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: isinstance(x, LoRAPair))[0]
    return {path_str(p): leaf for p, leaf in leaves}


def tree_sha256(tree: Any) -> str:
    """Hex sha256 of a parameter tree's values: each leaf's path, dtype, shape and bytes, in sorted path
    order (so dict order, ``FrozenDict`` vs dict and host vs device arrays do not change it).

    What a skill library or composer records of the pi_0 it was built on: two seeds' pi_0 have the same
    paths and shapes, and only their values tell them apart."""
    leaves = {path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}
    h = hashlib.sha256()
    for path in sorted(leaves):
        x = np.ascontiguousarray(np.asarray(leaves[path]))
        h.update(f"{path}\0{x.dtype.name}\0{x.shape}\0".encode())
        h.update(x.tobytes())
    return h.hexdigest()


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Nested dicts from ``{"a/b/c": leaf}`` (inverse of ``flatten`` for dict trees)."""
    out: dict[str, Any] = {}
    for path, leaf in flat.items():
        node = out
        *parents, last = path.split("/")
        for name in parents:
            node = node.setdefault(name, {})
        node[last] = leaf
    return out


def target_paths(base_params: Any, config: LoRAConfig) -> dict[str, int]:
    """``{path: number of input axes}`` for every kernel ``config`` targets in ``base_params``.

    Raises ValueError when nothing matches, or a match has fewer than 2 dims or no output axes.
    """
    flat = flatten(base_params)
    out = {}
    for path, leaf in flat.items():
        if not config.matches(path):
            continue
        n_in = config.num_in_axes(path)
        if jnp.ndim(leaf) < 2 or n_in >= jnp.ndim(leaf):
            raise ValueError(
                f"LoRA target {path!r} has shape {jnp.shape(leaf)}: need >= 2 dims and more than "
                f"{n_in} input axis(es); refine LoRAConfig.targets or in_axes"
            )
        out[path] = n_in
    if not out:
        sample = ", ".join(list(flat)[:6])
        raise ValueError(f"no parameter path matches LoRA targets {config.targets}; paths look like: {sample}")
    return out


def _init_a(key: jax.Array, shape: tuple[int, ...], n_in: int, config: LoRAConfig, dtype: Any) -> jax.Array:
    if config.a_init == "zeros":
        return jnp.zeros(shape, dtype)
    if config.a_init == "normal":
        return config.init_std * jax.random.normal(key, shape, dtype)
    init = jax.nn.initializers.variance_scaling(
        1.0, "fan_in", "truncated_normal", in_axis=tuple(range(n_in)), out_axis=n_in
    )
    return init(key, shape, dtype)


def init(key: jax.Array, base_params: Any, config: LoRAConfig) -> dict[str, Any]:
    """A fresh adapter tree for every kernel of ``base_params`` that ``config`` targets.

    Each kernel ``[*in, *out]`` gets ``LoRAPair(a: [*in, r], b: [r, *out])``; with the default
    ``b_init="zeros"`` the adapter is an exact no-op. Keys are ``fold_in(key, hash(path))``, so adding a
    target never changes the initialisation of the others. Works on linen params and ``nnx.State``.
    """
    flat = flatten(base_params)
    adapters = {}
    for path, n_in in target_paths(base_params, config).items():
        kernel = flat[path]
        dtype = config.dtype or kernel.dtype
        in_shape, out_shape = kernel.shape[:n_in], kernel.shape[n_in:]
        k = prng.stream(key, path)
        ka, kb = jax.random.split(k)
        a = _init_a(ka, (*in_shape, config.rank), n_in, config, dtype)
        if config.b_init == "zeros":
            b = jnp.zeros((config.rank, *out_shape), dtype)
        else:
            b = config.init_std * jax.random.normal(kb, (config.rank, *out_shape), dtype)
        adapters[path] = LoRAPair(a, b)
    return unflatten(adapters)


def concat_skills(pair: LoRAPair, weights: jax.Array | None = None) -> LoRAPair:
    """A stack of K skills as one pair of rank ``K*r``: ``a: [*in, K*r]`` (skill k's block scaled by
    ``weights[k]`` when given), ``b: [K*r, *out]``. Then ``a @ b == sum_k w_k A_k B_k`` exactly.
    """
    k, r = pair.a.shape[0], pair.a.shape[-1]
    if pair.b.shape[0] != k or pair.b.shape[1] != r:
        raise ValueError(f"stacked adapter needs a [K, *in, r], b [K, r, *out]; got a {pair.a.shape}, b {pair.b.shape}")
    a = pair.a
    if weights is not None:
        weights = jnp.asarray(weights)
        if weights.shape != (k,):
            raise ValueError(f"stacked adapter with {k} skills needs weights of shape ({k},), got {weights.shape}")
        a = a * weights.astype(a.dtype).reshape((k,) + (1,) * (a.ndim - 1))
    a = jnp.moveaxis(a, 0, -2).reshape(*pair.a.shape[1:-1], k * r)
    return LoRAPair(a, pair.b.reshape(k * r, *pair.b.shape[2:]))


def pair_delta(pair: LoRAPair, weights: jax.Array | float) -> jax.Array:
    """The dense update of one kernel: ``w * A @ B`` (single skill, scalar ``w``) or
    ``sum_k w_k A_k @ B_k`` (stack, ``w: [K]``) as one matmul over the joined ``(K, r)`` axis.
    """
    weights = jnp.asarray(weights)
    if weights.ndim == 0:
        return weights.astype(pair.a.dtype) * jnp.tensordot(pair.a, pair.b, axes=1)
    joined = concat_skills(pair, weights)
    return jnp.tensordot(joined.a, joined.b, axes=1)


def _apply_deltas(base_params: Any, adapters: Any, weights: Any, sign: float) -> Any:
    deltas = flatten(adapters)
    found = set()

    def update(path: tuple, leaf: Any) -> Any:
        name = path_str(path)
        if name not in deltas:
            return leaf
        found.add(name)
        item = deltas[name]
        delta = pair_delta(item, weights) if isinstance(item, LoRAPair) else jnp.asarray(item) * weights
        if delta.shape != jnp.shape(leaf):
            raise ValueError(f"adapter for {name!r} gives a delta of shape {delta.shape}, kernel is {jnp.shape(leaf)}")
        return (leaf + sign * delta).astype(leaf.dtype)

    out = jax.tree_util.tree_map_with_path(update, base_params)
    missing = sorted(set(deltas) - found)
    if missing:
        raise ValueError(f"adapter paths not found in the base parameters: {missing}")
    return out


def merge(base_params: Any, adapters: Any, weights: Any = 1.0) -> Any:
    """Base parameters with the adapters folded in: ``W0 + w * A @ B`` per adapted kernel.

    ``adapters`` holds single-skill ``LoRAPair``s (``weights`` a scalar, e.g. the skill's scale), a
    stack (``weights: [K]``, e.g. ``library.coefficients(w)``), or dense deltas (scalar weight).
    Untouched leaves are returned as they are (no copy). Jit-able; the kernel dtype is kept.
    """
    return _apply_deltas(base_params, adapters, weights, 1.0)


def unmerge(merged_params: Any, adapters: Any, weights: Any = 1.0) -> Any:
    """Inverse of ``merge`` (exact up to floating-point rounding)."""
    return _apply_deltas(merged_params, adapters, weights, -1.0)


def pad_rank(adapters: Any, rank: int, axis_offset: int = 0) -> Any:
    """Zero-pads every ``LoRAPair`` to ``rank`` (exact: padded columns of A and rows of B are zero,
    and stay zero under gradient descent since their gradients are zero too).

    ``axis_offset=1`` for stacked trees (skill axis first).
    """

    def pad(pair: LoRAPair) -> LoRAPair:
        r = pair.a.shape[-1]
        if r > rank:
            raise ValueError(f"cannot pad rank {r} down to {rank}")
        a = jnp.pad(pair.a, [(0, 0)] * (pair.a.ndim - 1) + [(0, rank - r)])
        b_pad = [(0, 0)] * pair.b.ndim
        b_pad[axis_offset] = (0, rank - r)
        return LoRAPair(a, jnp.pad(pair.b, b_pad))

    return jax.tree.map(pad, adapters, is_leaf=lambda x: isinstance(x, LoRAPair))


def map_pairs(fn: Callable[[LoRAPair], Any], adapters: Any) -> Any:
    """Applies ``fn`` to every ``LoRAPair`` of an adapter tree."""
    return jax.tree.map(fn, adapters, is_leaf=lambda x: isinstance(x, LoRAPair))


def rank_of(adapters: Any) -> int:
    """The rank r of a single-skill or stacked adapter tree (all pairs share it)."""
    ranks = {p.a.shape[-1] for p in flatten(adapters).values()}
    if len(ranks) != 1:
        raise ValueError(f"adapter tree mixes ranks {sorted(ranks)}")
    return ranks.pop()
