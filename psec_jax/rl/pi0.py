"""pi_0 from an earlier run: where a config's saved pi_0s are (one shared, or one per seed), whether they fit
this config (network, sizes, data, observation normaliser), and loading them stacked over seeds; the
normaliser a freshly trained pi_0 uses.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from psec_jax import artifacts, runs
from psec_jax.data import behavior
from psec_jax.data.normalize import Normalizer
from psec_jax.rl import saving


def observation_normalizer(config: ml_collections.ConfigDict, observations: jax.Array, obs_dim: int) -> Normalizer:
    """What every stage and acting feed the networks: standardised by pi_0's data (``observations``
    [N, obs_dim]) when ``config.obs_norm``, else the raw observations (the official code's)."""
    return Normalizer.of(observations) if config.obs_norm else Normalizer.identity(obs_dim)


# the noise-net fields of config.network that fix pi_0 (the rest, LoRA rank / scale and adapter widths,
# are the skills')
PI0_FIELDS = ("hidden", "ff", "num_blocks", "time_features", "time_hidden", "dropout", "diffusion_steps")


def recorded_sizes(env_name: str) -> tuple[int, int] | None:
    """(observation size, action size) of environment ``env_name`` as its committed behaviour policies
    recorded them (a small JSON: the environment is not built); None where there are none."""
    try:
        meta = json.loads((behavior.policy_dir(env_name) / behavior.MANIFEST).read_text())
        return int(meta["observation_size"]), int(meta["action_size"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


SHIPPED_PI0 = Path(__file__).resolve().parent / "pretrained"  # pi_0s installed with the package (the demo's)


def pretrained_root(value: str) -> Path:
    """``config.pretrained`` as a directory: a path, or the name of a pi_0 shipped in ``SHIPPED_PI0``
    (``walker_stand_small_paper_pi0``) when no such path exists, so the demo runs from any directory."""
    path = Path(value)
    if not path.exists() and path.name == value and (SHIPPED_PI0 / value).is_dir():
        return SHIPPED_PI0 / value
    return path


def pretrained_paths(config: ml_collections.ConfigDict) -> list[Path]:
    """The saved pi_0 of each seed that ``config.pretrained`` (a run's policies/pi0) provides: that one
    for every seed when ``config.share_pretrain``, else seed i's own, ``pi0`` for seed 0 and its sibling
    ``pi0_seed{i}`` for the others (as a run with independent seeds saves them); [] when not given."""
    if not config.pretrained:
        return []
    first = pretrained_root(config.pretrained)
    if config.share_pretrain:
        return [first]
    return [first] + [first.with_name(f"pi0_seed{i}") for i in range(1, config.num_seeds)]


def check_pretrained(
    config: ml_collections.ConfigDict, data_name: str | None = None, sizes: tuple[int, int] | None = None
) -> None:
    """ValueError (one line naming config.pretrained and what differs) unless ``config.pretrained`` is ""
    or intact pi_0s saved by an earlier run (its workdir's policies/pi0, with ``pi0_seed{i}`` beside it for
    every further seed unless ``config.share_pretrain``) that this config can build on: the same noise
    network (``PI0_FIELDS`` of config.network), a standardising normaliser iff ``config.obs_norm``, and,
    where given, the data ``data_name`` and the (observation, action) ``sizes``. Reads the saved files;
    compiles nothing."""
    paths = pretrained_paths(config)
    if not paths:
        return
    if not paths[0].is_dir():
        raise ValueError(f"config.pretrained {config.pretrained}: no such directory (expected a run's policies/pi0)")
    _check_one(config, paths[0], data_name, sizes)
    if not config.share_pretrain and paths[0].name != "pi0":
        raise ValueError(
            f"config.pretrained {config.pretrained}: with independent seeds (share_pretrain False) give "
            f"seed 0's, a run's policies/pi0; seed i's is its sibling pi0_seed{{i}}"
        )
    missing = [p.name for p in paths if not p.is_dir()]
    if missing:
        raise ValueError(
            f"config.pretrained {config.pretrained}: config.share_pretrain is False, so each of the "
            f"{config.num_seeds} seeds builds on its own pi_0, but {', '.join(missing[:3])}"
            f"{' ...' if len(missing) > 3 else ''} is not beside it (made by a run with fewer "
            f"independent seeds, or with share_pretrain=True); set config.share_pretrain=True to "
            f"build every seed on this one"
        )
    for path in paths[1:]:
        _check_one(config, path, data_name, sizes)


def _check_one(
    config: ml_collections.ConfigDict, path: Path, data_name: str | None, sizes: tuple[int, int] | None
) -> None:
    where, hint = f"config.pretrained {path}", "(expected a run's policies/pi0)"
    try:
        meta = artifacts.read_manifest(path)
        if meta.get("format") != saving.POLICY_FORMAT:
            raise ValueError(f"{where}: not a saved pi_0 but format {meta.get('format')!r} {hint}")
        arrays = artifacts.load_arrays(path, meta)
        mean, std = np.asarray(arrays["obs_mean"]), np.asarray(arrays["obs_std"])
    except (artifacts.ArtifactError, KeyError, TypeError) as e:
        raise ValueError(f"{where}: not a usable saved pi_0: {runs.one_line(e, with_type=False)} {hint}") from None
    theirs, ours = (
        meta.get("network") if isinstance(meta.get("network"), dict) else {},
        runs.to_jsonable(config.network),
    )
    differ = sorted(f for f in PI0_FIELDS if theirs.get(f) != ours.get(f))  # skill fields may differ
    if differ:
        raise ValueError(
            f"{where}: its network differs from config.network in "
            + ", ".join(f"{f} ({theirs.get(f)} vs {ours.get(f)})" for f in differ)
        )
    if sizes is not None and (meta.get("obs_dim"), meta.get("act_dim")) != tuple(sizes):
        raise ValueError(
            f"{where}: made for observations {meta.get('obs_dim')} / actions {meta.get('act_dim')}, "
            f"the environment has {sizes[0]} / {sizes[1]}"
        )
    if data_name is not None and meta.get("data") != data_name:
        raise ValueError(f"{where}: pretrained on {meta.get('data')!r}, this config's pi_0 data is {data_name!r}")
    identity = bool(np.all(mean == 0) and np.all(std == 1))
    if identity == bool(config.obs_norm):
        raise ValueError(
            f"{where}: its observation normaliser is {'the identity' if identity else 'standardising'}"
            f", but config.obs_norm is {config.obs_norm}"
        )


def load_pretrained(
    config: ml_collections.ConfigDict, data_name: str, obs_dim: int, act_dim: int
) -> tuple[Any, Normalizer]:
    """(pi_0's params [S, ...], its observation normaliser) from ``config.pretrained``: S = 1 (one pi_0 for
    every seed) when ``config.share_pretrain``, else S = ``config.num_seeds``, seed i's own pi_0
    (``pretrained_paths``). ValueError naming what differs when a network, sizes, data or kind of
    normaliser (standardising iff ``config.obs_norm``) is not this config's (``check_pretrained``), or
    when the seeds' pi_0s were fitted with different normalisers: the skills would build on another
    policy."""
    check_pretrained(config, data_name, (obs_dim, act_dim))
    loaded = [saving.load_base(p) for p in pretrained_paths(config)]
    normalizer = loaded[0][2]
    for path, (_, _, other, _) in zip(pretrained_paths(config), loaded):
        if not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(other), jax.tree.leaves(normalizer))):
            raise ValueError(
                f"config.pretrained {path}: its observation normaliser is not that of "
                f"{config.pretrained}; every seed must see the same observations"
            )
    params = jax.tree.map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]), *[p for _, p, _, _ in loaded])
    return params, normalizer
