"""``SkillLibrary``: K LoRA skills stacked on a leading axis, with metadata, saved with Orbax.

Skills of different ranks coexist by zero-padding to the largest rank ``r_max``: padded columns of A and
rows of B are zero, so every forward pass, merge and gradient is exactly that of the unpadded skill
(the padding also receives zero gradient). Each skill keeps its own rank and scale in its metadata;
``skill(name)`` returns it unpadded. All skills adapt the same kernels (same paths).

On disk (a directory)::

    library.json          format, skills' metadata, base-model fingerprint (paths, shapes, dtypes) and
                          sha256 of its weights, adapted paths, sha256 of every array file
    library.json.sha256   sha256 of library.json, so an edited scale or rank is caught at load
    arrays/               the stacked adapter tree (Orbax standard checkpoint)

``save`` writes to a temporary sibling directory and renames it into place, so a failed save never
leaves a half-written library where a good one was; it replaces only a library it wrote, never other
files. ``load`` checks every checksum and the metadata's types before building anything, and with a
base model that it is the one the skills were trained on: its paths, shapes and dtypes, and then its
weights (``tree_sha256``), since the pi_0 of another seed has the same shapes and would take the
skills without complaint.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from psec_jax import artifacts
from psec_jax.lora import core
from psec_jax.lora.config import LoRAConfig
from psec_jax.lora.core import LoRAPair

FORMAT = "psec_jax.skill_library/3"  # 2: manifest written by psec_jax.artifacts; 3: base_sha256
META_FILE = "library.json"


class LibraryError(ValueError):
    """A skill library does not fit its base model, or its files are missing or corrupt."""


@dataclasses.dataclass(frozen=True)
class SkillInfo:
    """Metadata of one skill. ``scale`` is the LoRA factor s of ``W0 + s A B`` for this skill."""

    name: str
    rank: int
    scale: float
    lora: dict  # LoRAConfig.to_dict() of the skill
    train_config: dict = dataclasses.field(default_factory=dict)  # how it was trained (JSON)
    metrics: dict = dataclasses.field(default_factory=dict)  # what it reached (JSON)


def fingerprint(base_params: Any) -> list[tuple[str, tuple[int, ...], str]]:
    """``[(path, shape, dtype)]`` of every leaf of a parameter tree: what a library is tied to."""
    return [
        (p, tuple(int(s) for s in np.shape(x)), str(jnp.result_type(x))) for p, x in core.flatten(base_params).items()
    ]


def _fingerprint_mismatch(saved: Sequence, current: Sequence) -> str | None:
    saved = {p: (tuple(s), d) for p, s, d in saved}
    current = {p: (tuple(s), d) for p, s, d in current}
    for path in sorted(set(saved) | set(current)):
        if path not in current:
            return f"parameter {path!r} of the library's base model is missing from this model"
        if path not in saved:
            return f"this model has parameter {path!r}, which the library's base model did not"
        if saved[path] != current[path]:
            (s0, d0), (s1, d1) = saved[path], current[path]
            return f"parameter {path!r} is {s1} {d1} here but was {s0} {d0} in the library's base model"
    return None


def _base_mismatch(saved_sha256: str, base_params: Any) -> str | None:
    got = core.tree_sha256(base_params)
    if got == saved_sha256:
        return None
    return (
        f"the base weights differ (sha256 {saved_sha256[:12]}... expected, got {got[:12]}...): same "
        f"shapes, other values, e.g. another seed's pi_0"
    )


def _is_sha256(x: Any) -> bool:
    return isinstance(x, str) and len(x) == 64 and all(c in "0123456789abcdef" for c in x)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_metadata(meta: Any, where: Path) -> None:
    """LibraryError naming the first field of ``library.json`` that is missing or of the wrong type."""

    def fail(field: str, want: str, got: Any = None) -> None:
        raise LibraryError(f"{where}: malformed metadata: {field} must be {want}, got {got!r}")

    for key, kind in (("skills", list), ("base_fingerprint", list), ("paths", dict), ("array_shapes", dict)):
        if not isinstance(meta.get(key), kind):
            fail(key, f"a {kind.__name__}", meta.get(key, "nothing"))
    if not meta["skills"]:
        fail("skills", "a non-empty list", [])
    if not _is_sha256(meta.get("base_sha256")):
        fail("base_sha256", "the hex sha256 of the base weights", meta.get("base_sha256", "nothing"))
    fields = {f.name for f in dataclasses.fields(SkillInfo)}
    for i, skill in enumerate(meta["skills"]):
        if not isinstance(skill, dict) or set(skill) != fields:
            fail(
                f"skills[{i}]",
                f"an object with fields {sorted(fields)}",
                sorted(skill) if isinstance(skill, dict) else skill,
            )
        if not isinstance(skill["name"], str):
            fail(f"skills[{i}].name", "a string", skill["name"])
        if not _is_int(skill["rank"]) or skill["rank"] < 1:
            fail(f"skills[{i}].rank", "a positive integer", skill["rank"])
        scale = skill["scale"]
        if not (_is_int(scale) or isinstance(scale, float)) or not math.isfinite(scale):
            fail(f"skills[{i}].scale", "a finite number", scale)
        for key in ("lora", "train_config", "metrics"):
            if not isinstance(skill[key], dict):
                fail(f"skills[{i}].{key}", "an object", skill[key])
    names = [s["name"] for s in meta["skills"]]
    if len(set(names)) != len(names):
        fail("skills[].name", "unique", names)
    for i, entry in enumerate(meta["base_fingerprint"]):
        ok = (
            isinstance(entry, list)
            and len(entry) == 3
            and isinstance(entry[0], str)
            and isinstance(entry[1], list)
            and all(_is_int(d) for d in entry[1])
            and isinstance(entry[2], str)
        )
        if not ok:
            fail(f"base_fingerprint[{i}]", "[path, [dims], dtype]", entry)
    for path, n_in in meta["paths"].items():
        if not _is_int(n_in) or n_in < 1:
            fail(f"paths[{path!r}]", "a positive integer (input axes)", n_in)


def _to_plain(tree: Any) -> Any:
    return core.map_pairs(lambda p: {"a": p.a, "b": p.b}, tree)


def _from_plain(tree: Any) -> Any:
    def is_pair(x: Any) -> bool:
        return isinstance(x, dict) and set(x) == {"a", "b"}

    return jax.tree.map(lambda d: LoRAPair(d["a"], d["b"]), tree, is_leaf=is_pair)


class SkillLibrary:
    """K skills over one base model: ``adapters`` is an adapter tree with ``[K, ...]`` leaves.

    Immutable: ``add``/``remove``/``select`` return new libraries. Pass ``library.adapters`` and
    ``library.coefficients(weights)`` into jitted code, not the library object.
    """

    def __init__(
        self,
        adapters: Any,
        skills: Sequence[SkillInfo],
        base_fingerprint: Sequence,
        paths: Mapping[str, int],
        base_sha256: str,
    ):
        self.adapters = adapters  # adapter tree, LoRAPair(a [K, *in, r_max], b [K, r_max, *out]) leaves
        self.skills = tuple(skills)
        self.base_fingerprint = [tuple(x) for x in base_fingerprint]  # [(path, shape, dtype)] of the base
        self.paths = dict(paths)  # adapted kernel path -> number of input axes
        self.base_sha256 = base_sha256  # core.tree_sha256 of the base weights the skills were trained on
        self.directory: Path | None = None  # where ``load`` read it from, for messages

    # ----- construction -------------------------------------------------------------------------
    @classmethod
    def create(cls, base_params: Any, name: str, adapter: Any, config: LoRAConfig, **meta: Any) -> SkillLibrary:
        """A library holding one skill (``adapter`` from ``lora.init`` / training, unstacked)."""
        paths = core.target_paths(base_params, config)
        lib = cls(None, (), fingerprint(base_params), paths, core.tree_sha256(base_params))
        return lib.add(name, adapter, config, **meta)

    def _check_adapter(self, adapter: Any) -> None:
        flat = core.flatten(adapter)
        if set(flat) != set(self.paths):
            raise LibraryError(
                f"skill adapts {sorted(flat)} but the library adapts {sorted(self.paths)}: all skills must "
                f"adapt the same kernels"
            )
        shapes = {p: s for p, s, _ in self.base_fingerprint}
        for path, pair in flat.items():
            n_in = self.paths[path]
            want = tuple(shapes[path])
            got = tuple(pair.a.shape[:-1]) + tuple(pair.b.shape[1:])
            if got != want or pair.a.shape[-1] != pair.b.shape[0] or pair.a.ndim - 1 != n_in:
                raise LibraryError(
                    f"skill adapter for {path!r} (a {pair.a.shape}, b {pair.b.shape}) does not fit the kernel {want}"
                )

    def add(
        self,
        name: str,
        adapter: Any,
        config: LoRAConfig,
        *,
        train_config: Mapping | None = None,
        metrics: Mapping | None = None,
    ) -> SkillLibrary:
        """A new library with the skill ``name`` appended (its adapter unstacked, rank ``config.rank``)."""
        if name in self.names:
            raise LibraryError(f"skill {name!r} is already in the library")
        self._check_adapter(adapter)
        rank = core.rank_of(adapter)
        info = SkillInfo(name, rank, config.scale, config.to_dict(), dict(train_config or {}), dict(metrics or {}))
        r_max = max(rank, self.max_rank)
        new = core.map_pairs(lambda p: LoRAPair(p.a[None], p.b[None]), core.pad_rank(adapter, r_max))
        if self.adapters is None:
            stacked = new
        else:
            old = core.pad_rank(self.adapters, r_max, axis_offset=1)
            stacked = jax.tree.map(lambda o, n: jnp.concatenate([o, n.astype(o.dtype)]), old, new)
        return SkillLibrary(stacked, self.skills + (info,), self.base_fingerprint, self.paths, self.base_sha256)

    def _take(self, indices: list[int]) -> SkillLibrary:
        skills = tuple(self.skills[i] for i in indices)
        if not indices:
            return SkillLibrary(None, (), self.base_fingerprint, self.paths, self.base_sha256)
        idx = jnp.asarray(indices)
        r_max = max(s.rank for s in skills)
        adapters = core.map_pairs(lambda p: LoRAPair(p.a[idx][..., :r_max], p.b[idx][:, :r_max]), self.adapters)
        return SkillLibrary(adapters, skills, self.base_fingerprint, self.paths, self.base_sha256)

    def remove(self, name: str) -> SkillLibrary:
        """A new library without the skill ``name``."""
        self.index(name)
        return self._take([i for i, s in enumerate(self.skills) if s.name != name])

    def select(self, names: Iterable[str]) -> SkillLibrary:
        """A new library holding ``names`` in that order (the skill axis follows ``names``)."""
        names = list(names)
        if len(set(names)) != len(names):
            raise LibraryError(f"select: duplicate skill names in {names}")
        return self._take([self.index(n) for n in names])

    # ----- queries ------------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return [s.name for s in self.skills]

    def __len__(self) -> int:
        return len(self.skills)

    def __repr__(self) -> str:
        skills = ", ".join(f"{s.name}(r={s.rank}, s={s.scale:g})" for s in self.skills)
        return f"SkillLibrary(K={len(self)}, r_max={self.max_rank}, kernels={len(self.paths)}, skills=[{skills}])"

    @property
    def max_rank(self) -> int:
        return max((s.rank for s in self.skills), default=0)

    def index(self, name: str) -> int:
        for i, s in enumerate(self.skills):
            if s.name == name:
                return i
        raise LibraryError(f"no skill named {name!r} (have {self.names})")

    @property
    def scales(self) -> jax.Array:
        """``[K]`` float32: each skill's LoRA scale."""
        return jnp.asarray([s.scale for s in self.skills], jnp.float32)

    def as_weights(self, weights: Mapping[str, float], default: float = 0.0) -> jax.Array:
        """``[K]`` weights from ``{name: weight}``; unnamed skills get ``default``."""
        unknown = sorted(set(weights) - set(self.names))
        if unknown:
            raise LibraryError(f"as_weights: unknown skill(s) {unknown} (have {self.names})")
        return jnp.asarray([float(weights.get(n, default)) for n in self.names], jnp.float32)

    def coefficients(self, weights: jax.Array) -> jax.Array:
        """Skill weights ``[..., K]`` times each skill's scale: what ``lora_dense`` and ``merge`` take."""
        weights = jnp.asarray(weights)
        if weights.shape[-1:] != (len(self),):
            raise LibraryError(f"weights must end in the skill axis K={len(self)}, got shape {weights.shape}")
        return weights * self.scales

    def skill(self, name: str) -> Any:
        """The single-skill adapter tree of ``name``, at its own rank (padding removed)."""
        i = self.index(name)
        r = self.skills[i].rank
        return core.map_pairs(lambda p: LoRAPair(p.a[i][..., :r], p.b[i][:r]), self.adapters)

    def merge_into(self, base_params: Any, weights: Mapping[str, float] | jax.Array) -> Any:
        """Base parameters with ``sum_k w_k s_k A_k B_k`` folded in (``weights`` dict or ``[K]``)."""
        w = self.as_weights(weights) if isinstance(weights, Mapping) else jnp.asarray(weights)
        return core.merge(base_params, self.adapters, self.coefficients(w))

    def check_base(self, base_params: Any) -> None:
        """Raises LibraryError naming the first difference between ``base_params`` and the library's base:
        a parameter's path, shape or dtype, else its weights."""
        problem = _fingerprint_mismatch(self.base_fingerprint, fingerprint(base_params)) or _base_mismatch(
            self.base_sha256, base_params
        )
        if problem:
            where = f" {self.directory}" if self.directory else ""
            raise LibraryError(f"skill library{where} does not fit this base model: {problem}")

    # ----- persistence --------------------------------------------------------------------------
    def _metadata(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "skills": [dataclasses.asdict(s) for s in self.skills],
            "base_fingerprint": [[p, list(s), d] for p, s, d in self.base_fingerprint],
            "base_sha256": self.base_sha256,
            "paths": self.paths,
        }

    def save(self, directory: str | os.PathLike) -> Path:
        """Writes the library to ``directory`` atomically, replacing a library saved there before;
        LibraryError, touching nothing, if ``directory`` is a file or holds anything else."""
        if not self.skills:
            raise LibraryError("cannot save an empty skill library")
        return artifacts.save_tree(
            directory, _to_plain(self.adapters), self._metadata(), manifest=META_FILE, error=LibraryError
        )

    @classmethod
    def load(cls, directory: str | os.PathLike, base_params: Any = None) -> SkillLibrary:
        """Reads a library saved by ``save``; verifies every file's checksum, and with ``base_params``
        that the library was built on that model: the same parameter paths, shapes, dtypes and weights.
        """
        meta = artifacts.read_manifest(directory, manifest=META_FILE, error=LibraryError)
        if meta.get("format") == "psec_jax.skill_library/2":
            raise LibraryError(
                f"{Path(directory) / META_FILE}: saved by an older psec_jax that did not record "
                f"the base weights' sha256, so it cannot be checked against a base; re-create it"
            )
        if meta.get("format") != FORMAT:
            raise LibraryError(
                f"{Path(directory) / META_FILE}: unknown format {meta.get('format')!r} (expected {FORMAT})"
            )
        _check_metadata(meta, Path(directory) / META_FILE)
        if base_params is not None:
            problem = _fingerprint_mismatch(meta["base_fingerprint"], fingerprint(base_params)) or _base_mismatch(
                meta["base_sha256"], base_params
            )
            if problem:
                raise LibraryError(f"skill library {directory} does not fit this base model: {problem}")
        arrays = artifacts.load_arrays(directory, meta, error=LibraryError)
        skills = [SkillInfo(**s) for s in meta["skills"]]
        lib = cls(_from_plain(arrays), skills, meta["base_fingerprint"], meta["paths"], meta["base_sha256"])
        pairs = core.flatten(lib.adapters)
        if set(pairs) != set(lib.paths):
            raise LibraryError(
                f"{Path(directory) / META_FILE}: malformed metadata: the arrays adapt "
                f"{sorted(pairs)} but paths lists {sorted(lib.paths)}"
            )
        for path, pair in pairs.items():
            if pair.a.shape[0] != len(skills) or pair.a.shape[-1] < lib.max_rank:
                raise LibraryError(
                    f"{Path(directory) / META_FILE}: malformed metadata: {len(skills)} skills "
                    f"of rank <= {lib.max_rank}, but {path!r} has A of shape {pair.a.shape}"
                )
        lib.directory = Path(directory)
        return lib
