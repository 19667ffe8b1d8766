"""What the PSEC runner saves: pi_0 (with its observation normaliser), skill libraries, composers.

Each is a checksummed artifact directory (``psec_jax.artifacts``) holding everything needed to rebuild
it: ``load_base`` returns a ready actor, ``lora.SkillLibrary.load`` the skills, ``load_composer`` a
composer. What is built on pi_0 records the sha256 of its weights (``lora.tree_sha256``), and a composer
that of its skills too, and loading refuses other ones: the pi_0 of another seed has the same shapes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from psec_jax import artifacts, lora, runs
from psec_jax.data.normalize import Normalizer
from psec_jax.rl import policy
from psec_jax.rl.policy import Actor, Skills

POLICY_FORMAT = "psec_jax.diffusion_policy/1"
COMPOSER_FORMAT = "psec_jax.composer/2"  # 2: base_sha256 and skills_sha256


def take_seed(tree: Any, i: int) -> Any:
    """Seed i of a pytree with a leading seed axis, as host numpy arrays."""
    return jax.tree.map(lambda x: np.asarray(x[i]), tree)


def save_base(
    directory: str | os.PathLike,
    params: Any,
    net_config: ml_collections.ConfigDict,
    obs_dim: int,
    act_dim: int,
    normalizer: Normalizer | None = None,
    **meta: Any,
) -> Path:
    """The pretrained noise net, its observation normaliser and everything needed to rebuild its actor
    (``load_base``)."""
    normalizer = normalizer or Normalizer.identity(obs_dim)
    info = {
        "format": POLICY_FORMAT,
        "network": runs.to_jsonable(net_config),
        "obs_dim": obs_dim,
        "act_dim": act_dim,
        **meta,
    }
    tree = {"params": params, "obs_mean": np.asarray(normalizer.mean), "obs_std": np.asarray(normalizer.std)}
    return artifacts.save_tree(directory, tree, info)


def load_base(directory: str | os.PathLike, kind: str = "lora") -> tuple[Actor, Any, Normalizer, dict]:
    """(actor, params, normaliser, metadata) of a policy saved with ``save_base``."""
    tree, meta = artifacts.load_tree(directory)
    if meta.get("format") != POLICY_FORMAT:
        raise artifacts.ArtifactError(f"{directory}: not a psec_jax diffusion policy (format {meta.get('format')!r})")
    actor = policy.make_actor(ml_collections.ConfigDict(meta["network"]), meta["obs_dim"], meta["act_dim"], kind)
    return actor, tree["params"], Normalizer(jnp.asarray(tree["obs_mean"]), jnp.asarray(tree["obs_std"])), meta


def library_of(
    base: Any, skills: Skills, names: list[str], config: lora.LoRAConfig, train_configs: Mapping[str, Any] | None = None
) -> lora.SkillLibrary:
    """A SkillLibrary of the LoRA skills stacked in ``skills`` (one seed, no seed axis)."""
    if skills.num != len(names):
        raise ValueError(f"library_of: {skills.num} skills but {len(names)} names {names}")
    lib = None
    for i, name in enumerate(names):
        adapter = jax.tree.map(lambda x: x[i], skills.params)
        meta = {"train_config": runs.to_jsonable((train_configs or {}).get(name, {}))}
        lib = (
            lora.SkillLibrary.create(base, name, adapter, config, **meta)
            if lib is None
            else lib.add(name, adapter, config, **meta)
        )
    return lib


def _skills_tree(skills: Skills) -> dict[str, Any]:
    return {"params": skills.params, "scales": skills.scales}


def library_paths(first: str | os.PathLike, num_seeds: int) -> list[Path]:
    """Seed i's saved skill library for i < ``num_seeds``: ``first`` (a run's policies/library_seed0) and
    its siblings ``library_seed{i}``."""
    first = Path(first)
    return [first] + [first.with_name(f"library_seed{i}") for i in range(1, num_seeds)]


def load_library_skills(
    first: str | os.PathLike,
    bases: Any,
    names: list[str],
    lora_config: lora.LoRAConfig,
    train_configs: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Skills], dict[str, Any]]:
    """The LoRA skills ``names`` (those the libraries hold) of each seed's saved library (``library_paths``)
    as ``Skills`` with leaves [S, 1, ...], S the seed axis of ``bases`` (seed i's pi_0 params), and the
    training config each was recorded with (what a library that re-saves them records). ValueError
    (one line) when ``first`` is not a ``library_seed0``, a library is missing, was built on another pi_0
    than seed i's, holds none of ``names`` or not all seeds hold a skill, a skill's rank or scale is not
    ``lora_config``'s, or, where ``train_configs[name]`` is given, the skill was trained with another
    stage or critic config than it."""
    n = jax.tree.leaves(bases)[0].shape[0]
    where = f"config.library {first}"
    if Path(first).name != "library_seed0":
        raise ValueError(
            f"{where}: give seed 0's, a run's policies/library_seed0 (seed i's is its sibling library_seed{{i}})"
        )
    libs = []
    for i, path in enumerate(library_paths(first, n)):
        if not path.is_dir():
            raise ValueError(
                f"{where}: {path.name} is missing (the library of seed {i}; expected the policies/"
                f"library_seed0 of a run with at least {n} seeds)"
            )
        try:
            libs.append(lora.SkillLibrary.load(path, base_params=take_seed(bases, i)))
        except (lora.LibraryError, artifacts.ArtifactError) as e:
            raise ValueError(
                f"{where}: seed {i}: {runs.one_line(e, with_type=False)} (set config.pretrained to "
                f"the pi_0 of the run that saved it)"
            ) from None
    found = [name for name in names if name in libs[0].names]
    if not found:
        raise ValueError(f"{where}: it holds the skills {libs[0].names}, none of {names}")
    want = runs.to_jsonable(dict(train_configs or {}))
    out, recorded = {}, {}
    for name in found:
        missing = [i for i, lib in enumerate(libs) if name not in lib.names]
        if missing:
            raise ValueError(f"{where}: seed {missing[0]}'s library has no skill {name!r}")
        info = [lib.skills[lib.index(name)] for lib in libs]
        if {(s.rank, s.scale) for s in info} != {(lora_config.rank, lora_config.scale)}:
            raise ValueError(
                f"{where}: skill {name!r} has rank / scale {info[0].rank} / {info[0].scale}, this "
                f"config's LoRA is {lora_config.rank} / {lora_config.scale}"
            )
        if name in want and info[0].train_config and info[0].train_config != want[name]:
            differ = sorted(k for k in want[name] if info[0].train_config.get(k) != want[name][k])
            raise ValueError(
                f"{where}: skill {name!r} was trained with other {' and '.join(differ)} settings than "
                f"this config's (config.expand / config.critics)"
            )
        adapters = [lib.select([name]).adapters for lib in libs]  # [1, ...] each
        params = jax.tree.map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]), *adapters)
        out[name] = Skills(params, jnp.full((n, 1), lora_config.scale, jnp.float32))
        recorded[name] = info[0].train_config
    return out, recorded


def save_composer(
    directory: str | os.PathLike,
    params: Any,
    *,
    base: Any,
    skills: Skills,
    names: list[str],
    mode: str,
    kind: str,
    **meta: Any,
) -> Path:
    """A trained composer with how it composes (``mode``, composer ``kind``, skill ``names``) and the
    sha256 of the pi_0 weights ``base`` and the ``skills`` (one seed, no seed axis) it was fitted on."""
    info = {
        "format": COMPOSER_FORMAT,
        "mode": mode,
        "kind": kind,
        "skills": names,
        "base_sha256": lora.tree_sha256(base),
        "skills_sha256": lora.tree_sha256(_skills_tree(skills)),
        **meta,
    }
    return artifacts.save_tree(directory, {"params": params}, info)


def load_composer(directory: str | os.PathLike, base: Any, skills: Skills) -> tuple[Any, dict]:
    """(params, metadata) of a composer saved with ``save_composer``; ArtifactError unless ``base`` and
    ``skills`` are the weights it was fitted on (a composer's weights mean nothing on other skills)."""
    tree, meta = artifacts.load_tree(directory)
    if meta.get("format") != COMPOSER_FORMAT:
        raise artifacts.ArtifactError(
            f"{directory}: not a psec_jax composer of format {COMPOSER_FORMAT} "
            f"(format {meta.get('format')!r}); re-create it"
        )
    for what, fitted_on, key in (
        ("base weights", base, "base_sha256"),
        ("skills", _skills_tree(skills), "skills_sha256"),
    ):
        got, want = lora.tree_sha256(fitted_on), str(meta.get(key))
        if got != want:
            raise artifacts.ArtifactError(
                f"composer {directory} does not fit: the {what} differ from those it was "
                f"fitted on (sha256 {want[:12]}... expected, got {got[:12]}...)"
            )
    return tree["params"], meta
