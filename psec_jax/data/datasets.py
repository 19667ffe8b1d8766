"""Named offline datasets, generated from the committed behaviour policies and cached on disk.

A dataset name is `{env}[:{variant}]-{kind}[-{N}traj]`, for example

    walker-stand-medium-expert-1000traj   a walker-stand base set of the paper's size (1000 episodes)
    walker-walk-expert-10traj             a 10-trajectory target set
    halfcheetah-medium                    1000 episodes of the medium policy, safe-velocity costs
    halfcheetah:friction_0.5-medium       the same policy rolled out with half the friction

| kind | episodes from |
|---|---|
| random | the SAC actor at initialisation |
| medium | the snapshot at ~1/3 of the expert return |
| expert | the best snapshot |
| medium-expert | half medium, half expert (D4RL concatenates the two) |
| medium-replay | equal shares of the snapshots from random up to medium (D4RL's is the replay buffer up to medium) |
| mixed-cost | medium and expert of the task's own SAC run and of each cost-penalised run, equal shares |
| imitation | the safe expert (`safe_expert`); default 10 episodes |

mixed-cost is DSRL-shaped: rewards and costs over a range (the safe setting's data). imitation is the
composers' small set: the penalised level with the highest return among those whose evaluated cost is
within `SAFE_COST_LIMIT` (else the lowest-cost level).

N defaults to 1000 episodes (at most `MAX_EPISODES`). Actions are the policy's own stochastic samples
plus optional Gaussian `noise`. Variants reuse the nominal env's policies (the dynamics change, the
behaviour does not). Files are written to `cache_dir()`, named by the request exactly (a noisy
dataset's name ends in a hash of the request: `-noise0.5-1a2b3c4d.hdf5`, as `0.5` and `0.5000001`
print alike), with a `.sha256` sidecar holding the file's checksum and the checksum of the policy
manifest it was generated from; `get` regenerates a file whose checksum does
not match or whose policies changed. Rollout keys derive from the full dataset name, so different
datasets of one env never share episodes (a 10-trajectory target set is not a slice of a
1000-trajectory base set). Generation is deterministic for a given name, seed and noise; on x86-64 it
runs in a child process pinned to one instruction set (``psec_jax.data.pinned``), so every such machine
writes the same bytes, and a file whose sha256 differs from the one recorded in
``psec_jax.data.references`` is reported in one warning line.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import numbers
import os
import re
import shutil
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

import psec_jax
from psec_jax import artifacts, prng, progress, runs, workdir
from psec_jax import envs as envs_lib
from psec_jax.data import behavior, collect, formats, pinned, references

KINDS = ("random", "medium", "expert", "medium-expert", "medium-replay", "mixed-cost", "imitation")
DEFAULT_EPISODES = 1000
IMITATION_EPISODES = 10  # default size of an imitation set
SAFE_COST_LIMIT = 10.0  # episode cost the imitation set's policy keeps within (PSEC's and DSRL's velocity limit)
MAX_EPISODES = 100_000  # 100x D4RL's largest; 10**8 transitions of 1000-step episodes
_NAME = re.compile(
    r"^(?P<env>[a-z0-9-]+?)(?::(?P<variant>[\w.]+))?-(?P<kind>random|medium-replay|"
    r"medium-expert|medium|expert|mixed-cost|imitation)(?:-(?P<n>\d+)traj)?$"
)


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Everything that determines a generated dataset."""

    env: str  # registry name of the environment
    variant: str  # dynamics variant ("nominal", "friction_0.5", ...)
    kind: str  # one of KINDS
    num_episodes: int  # complete episodes in the file
    seed: int = 0  # root PRNG seed of the rollouts
    noise: float = 0.0  # std of Gaussian action noise added to the policy's samples

    @property
    def name(self) -> str:
        env = self.env if self.variant == "nominal" else f"{self.env}:{self.variant}"
        return f"{env}-{self.kind}-{self.num_episodes}traj"

    @property
    def key(self) -> str:
        """Short hex hash of the whole request (the noise as its exact ``repr``)."""
        request = [self.env, self.variant, self.kind, self.num_episodes, self.seed, repr(self.noise)]
        return hashlib.sha256(json.dumps(request).encode()).hexdigest()[:8]

    @property
    def filename(self) -> str:
        """The cache file: the name, seed and noise, and the request's hash where the readable noise
        (``:g``) is not exact. Files without noise keep the names of earlier versions."""
        seed = f"-seed{self.seed}" if self.seed else ""
        noise = f"-noise{self.noise:g}-{self.key}" if self.noise else ""
        return f"{self.name.replace(':', '@')}{seed}{noise}.hdf5"

    def segments(self, levels: Mapping[str, Mapping[str, Any]] | list[str]) -> list[tuple[str, int]]:
        """(policy level, episodes) pairs making up the dataset. levels: the policy directory's levels
        (its manifest's ``levels``: return and cost of each; a list of names will do for the kinds
        that need neither)."""
        n = self.num_episodes
        if self.kind in ("random", "medium", "expert"):
            return [(self.kind, n)]
        if self.kind == "medium-expert":
            return [(lvl, k) for lvl, k in (("medium", n // 2), ("expert", n - n // 2)) if k]
        if self.kind == "imitation":
            try:
                return [(safe_expert(levels), n)]
            except formats.DatasetError:
                raise formats.DatasetError(f"{self.name}: {_NO_PENALISED.format(env=self.env)}") from None
        if self.kind == "mixed-cost":
            penalised = sorted((l for l in levels if l.startswith("penalty")), key=_penalty_order)
            if not penalised:
                raise formats.DatasetError(f"{self.name}: {_NO_PENALISED.format(env=self.env)}")
            chain = ["medium", "expert", *penalised]
        else:
            replay = sorted((l for l in levels if l.startswith("replay_")), key=lambda l: int(l.split("_")[1]))
            chain = ["random", *replay, "medium"]
        shares = np.diff(np.linspace(0, n, len(chain) + 1).round().astype(int))
        return [(lvl, int(k)) for lvl, k in zip(chain, shares) if k]


_NO_PENALISED = (
    "the behaviour policies of {env} have no cost-penalised levels with costs (the mixed-cost and imitation "
    "kinds need them); train them with `psec-jax behavior --config=behavior:{env} --workdir=DIR` and copy "
    "DIR/policy to psec_jax/data/policies/{env}/"
)


def _penalty_order(level: str) -> tuple[int, str]:
    run, _, name = level.removeprefix("penalty").partition("_")
    return int(run), name


def safe_expert(levels: Mapping[str, Mapping[str, Any]]) -> str:
    """The level an imitation set is rolled out from: of the cost-penalised levels, the one with the
    highest evaluated return among those whose evaluated cost <= ``SAFE_COST_LIMIT``, else the one with
    the lowest cost. DatasetError when there are no penalised levels (or no costs recorded)."""
    penalised = {k: v for k, v in levels.items() if k.startswith("penalty")} if isinstance(levels, Mapping) else {}
    if not penalised or any("cost" not in v for v in penalised.values()):
        raise formats.DatasetError(_NO_PENALISED.format(env="the body"))
    safe = {k: v for k, v in penalised.items() if v["cost"] <= SAFE_COST_LIMIT}
    if safe:
        return max(sorted(safe), key=lambda k: safe[k]["return"])
    return min(sorted(penalised), key=lambda k: penalised[k]["cost"])


def parse(name: str, *, seed: int = 0, noise: float = 0.0) -> Recipe:
    """Recipe of a dataset name (see the module docstring); ValueError names what is wrong."""
    m = _NAME.match(name)
    if not m:
        raise ValueError(
            f"bad dataset name {name!r}: expected {{env}}[:{{variant}}]-{{kind}}[-{{N}}traj] "
            f"with kind in {KINDS}, e.g. walker-walk-expert-10traj"
        )
    env, variant = envs_lib.parse(m["env"], m["variant"])
    n = int(m["n"]) if m["n"] else IMITATION_EPISODES if m["kind"] == "imitation" else DEFAULT_EPISODES
    if n < 1:
        raise ValueError(f"dataset {name!r}: the number of trajectories must be >= 1")
    if n > MAX_EPISODES:
        raise ValueError(f"dataset {name!r}: {n} trajectories; at most {MAX_EPISODES} can be generated")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ValueError(f"dataset {name!r}: seed must be an integer, got {seed!r}")
    if not 0 <= seed < 2**32:  # PRNGKey keeps the low 32 bits: 2**32 would be seed 0 again
        raise ValueError(f"dataset {name!r}: seed must be in [0, 2**32), got {seed}")
    if isinstance(noise, bool) or not isinstance(noise, numbers.Real) or not math.isfinite(noise):
        raise ValueError(f"dataset {name!r}: noise must be a finite number, got {noise!r}")
    if noise < 0:
        raise ValueError(f"dataset {name!r}: noise must be >= 0, got {noise}")
    return Recipe(env, variant, m["kind"], n, int(seed), float(noise) + 0.0)  # + 0.0: -0.0 is 0.0


def cache_dir() -> Path:
    """$PSEC_JAX_DATA_DIR, else ~/.cache/psec_jax/datasets."""
    return Path(os.environ.get("PSEC_JAX_DATA_DIR", Path.home() / ".cache" / "psec_jax" / "datasets"))


def command(recipe: Recipe) -> str:
    """The shell command that regenerates this dataset."""
    flags = (f" --seed={recipe.seed}" if recipe.seed else "") + (f" --noise={recipe.noise!r}" if recipe.noise else "")
    return f"psec-jax dataset {recipe.name}{flags}"


def generate(
    recipe: Recipe, path: str | os.PathLike, *, policy_dir: str | os.PathLike | None = None, num_envs: int = 64
) -> dict[str, Any]:
    """Roll out the recipe and write it to `path` (D4RL HDF5). Returns the metadata written."""
    actor, policies, info = behavior.load(policy_dir or recipe.env)
    env = envs_lib.make(recipe.env, recipe.variant)
    segments = recipe.segments(info["levels"])
    key = jax.random.PRNGKey(recipe.seed)
    num_envs = min(num_envs, max(n for _, n in segments))
    round_fn = collect.make_round(env, collect.policy_act_fn(actor, "sample", recipe.noise), num_envs)
    key = prng.stream(key, recipe.name)
    parts = [
        collect.collect(round_fn, policies[level], prng.stream(key, level), episodes, desc=f"{recipe.name} [{level}]")
        for level, episodes in segments
    ]
    data = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    if recipe.kind == "imitation" and (cost := formats.trajectory_returns(data, "costs").mean()) > SAFE_COST_LIMIT:
        progress.say(
            f"warning: {recipe.name}: its episodes cost {cost:.1f} on average, over {SAFE_COST_LIMIT:g} (the safe "
            f"expert's sampled actions cost more than its evaluation did)"
        )
    returns = formats.trajectory_returns(data)
    costs = formats.trajectory_returns(data, "costs")
    meta = {
        "name": recipe.name,
        "env": recipe.env,
        "variant": recipe.variant,
        "kind": recipe.kind,
        "num_episodes": recipe.num_episodes,
        "num_transitions": int(len(data["rewards"])),
        "seed": recipe.seed,
        "noise": recipe.noise,
        "cost_threshold": env.cost_threshold,
        "segments": [
            _segment_meta(recipe, lvl, n, info["levels"][lvl], part) for (lvl, n), part in zip(segments, parts)
        ],
        "return_mean": float(returns.mean()),
        "return_std": float(returns.std()),
        "cost_mean": float(costs.mean()),
        "command": command(recipe),
        "psec_jax_version": psec_jax.__version__,
    }
    formats.save_d4rl(path, data, meta)
    return meta


def _segment_meta(recipe: Recipe, level: str, episodes: int, policy: Mapping[str, Any], part: dict) -> dict[str, Any]:
    """What a dataset's metadata says of one of its segments; the cost kinds add the policy's evaluated
    cost and the segment's own mean return and cost (the other kinds' files keep their bytes)."""
    meta = {
        "level": level,
        "episodes": episodes,
        "policy_return": policy["return"],
        "policy_env_steps": policy["env_steps"],
    }
    if recipe.kind in ("mixed-cost", "imitation"):
        meta["policy_cost"] = policy["cost"]
        meta["cost_penalty"] = policy["cost_penalty"]
        meta["return_mean"] = float(formats.trajectory_returns(part).mean())
        meta["cost_mean"] = float(formats.trajectory_returns(part, "costs").mean())
    return meta


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def policy_checksum(env_name: str) -> str:
    """sha256 of the committed policy manifest of `env_name` (which holds every file's sha256)."""
    manifest = behavior.policy_dir(env_name) / behavior.MANIFEST
    if not manifest.is_file():
        raise behavior.PolicyError(
            f"no committed behaviour policies for {env_name!r} (missing {manifest}); train them with "
            f"`psec-jax behavior --config=behavior:{env_name} "
            f"--workdir=DIR` and copy DIR/policy to {manifest.parent}"
        )
    return artifacts.sha256(manifest)


def policy_levels(env_name: str) -> dict[str, dict[str, Any]]:
    """The levels (return, cost, ...) the committed behaviour policies of ``env_name`` record in their
    manifest (read as JSON: nothing is loaded)."""
    return json.loads((behavior.policy_dir(env_name) / behavior.MANIFEST).read_text())["levels"]


def _check_writable(directory: Path) -> None:
    """DatasetError naming ``directory`` and the system's reason unless a file can be created in it:
    found before minutes of rollouts, not after."""
    try:
        workdir.check_writable(directory)
    except OSError as e:
        raise formats.DatasetError(
            f"cannot write the dataset cache {directory}: {e.strerror or e}; choose "
            f"another with $PSEC_JAX_DATA_DIR or --dir"
        ) from None


def get(
    name: str,
    *,
    seed: int = 0,
    noise: float = 0.0,
    regenerate: bool = False,
    directory: str | os.PathLike | None = None,
) -> Path:
    """Path of the named dataset in the cache, generating it first when absent, corrupt or made
    from other policies than the committed ones. DatasetError before generating when the cache
    directory cannot be written."""
    recipe = parse(name, seed=seed, noise=noise)
    policies = policy_checksum(recipe.env)
    recipe.segments(policy_levels(recipe.env))  # a kind the policies cannot make fails here, not after rollouts
    path = Path(directory or cache_dir()) / recipe.filename
    side = _sidecar(path)
    if path.is_file() and side.is_file() and not regenerate:
        recorded = side.read_text().split()
        if recorded[:1] == [artifacts.sha256(path)] and recorded[2:3] == [policies]:
            return path
        warnings.warn(f"{path}: checksum or policies do not match {side.name}; regenerating", stacklevel=2)
    _check_writable(path.parent)
    pin = pinned.applies() and not pinned.in_pinned_process()
    with progress.phase(
        f"dataset {recipe.name}: generating {recipe.num_episodes} trajectories into {path}"
        + (f" (XLA pinned to {pinned.ISA} in a child process)" if pin else ""),
        disable=jax.process_index() != 0,
    ):
        if pin:
            runs.replace_atomic(path, lambda tmp: pinned.generate_in_child(recipe.name, recipe.seed, recipe.noise, tmp))
        else:
            runs.replace_atomic(path, lambda tmp: generate(recipe, tmp))
    sha = artifacts.sha256(path)
    side.write_text(f"{sha}  {path.name} {policies}\n")
    references.check(path.name, sha, command(recipe))
    return path


def _copy_atomic(source: Path, dest: Path) -> None:
    """``source``'s bytes at ``dest``, never half a file there (``runs.replace_atomic``)."""
    runs.replace_atomic(dest, lambda tmp: shutil.copyfile(source, tmp))


def export(
    name: str,
    destination: str | os.PathLike,
    *,
    seed: int = 0,
    noise: float = 0.0,
    directory: str | os.PathLike | None = None,
) -> Path:
    """Copies the named dataset (from the cache, generated first if absent) into the directory
    ``destination`` with its ``.sha256`` record (the file's sha256, its name, the behaviour policies'
    checksum): the exact bytes, for ``import_`` on a machine whose XLA would generate other ones.
    Returns the copy's path."""
    path = get(name, seed=seed, noise=noise, directory=directory)
    dest = Path(destination)
    try:
        dest.mkdir(parents=True, exist_ok=True)
        _copy_atomic(path, dest / path.name)
        _copy_atomic(_sidecar(path), _sidecar(dest / path.name))
    except OSError as e:
        raise formats.DatasetError(f"cannot export {name} to {dest}: {e.strerror or e}") from None
    return dest / path.name


def import_(
    file: str | os.PathLike, name: str, *, seed: int = 0, noise: float = 0.0, directory: str | os.PathLike | None = None
) -> Path:
    """Installs ``file``, a dataset written by ``export`` (its ``.sha256`` record beside it), into the
    cache as the named dataset, so ``get`` returns these bytes instead of generating its own. DatasetError
    (one line) unless the file matches its recorded sha256, holds the dataset ``name`` / ``seed`` /
    ``noise`` asks for, and was generated from the behaviour policies this checkout has. Returns the
    cached path."""
    recipe = parse(name, seed=seed, noise=noise)
    file, side = Path(file), _sidecar(Path(file))
    if not file.is_file() or not side.is_file():
        raise formats.DatasetError(
            f"cannot import {file}: it needs the file and its {side.name} beside it "
            f"(as `psec-jax dataset NAME --export DIR` writes them)"
        )
    recorded = side.read_text().split()
    if len(recorded) != 3:
        raise formats.DatasetError(f"cannot import {file}: {side} is not a dataset record (sha256, name, policies)")
    sha = artifacts.sha256(file)
    if sha != recorded[0]:
        raise formats.DatasetError(
            f"cannot import {file}: its sha256 {sha[:12]}... is not "
            f"the {recorded[0][:12]}... recorded in {side.name} (damaged in transfer?)"
        )
    _, meta = formats.load_d4rl(file)
    theirs = (meta.get("name"), int(meta.get("seed", -1)), float(meta.get("noise", math.nan)))
    if theirs != (recipe.name, recipe.seed, recipe.noise):
        raise formats.DatasetError(
            f"cannot import {file}: it holds {theirs[0]} (seed {theirs[1]}, noise "
            f"{theirs[2]!r}), not {recipe.name} (seed {recipe.seed}, noise {recipe.noise!r})"
        )
    policies = policy_checksum(recipe.env)
    if recorded[2] != policies:
        raise formats.DatasetError(
            f"cannot import {file}: it was generated from other behaviour policies "
            f"({recorded[2][:12]}...) than this checkout's ({policies[:12]}...)"
        )
    dest = Path(directory or cache_dir()) / recipe.filename
    _check_writable(dest.parent)
    _copy_atomic(file, dest)
    dest_side = _sidecar(dest)
    dest_side.write_text(f"{recorded[0]}  {dest.name} {policies}\n")
    return dest


def load(name_or_path: str | os.PathLike, **kwargs: Any) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Load a dataset by name (generating it if needed) or by HDF5 path. Returns (data, metadata)."""
    path = Path(name_or_path)
    if not path.suffix == ".hdf5":
        path = get(str(name_or_path), **kwargs)
    return formats.load_d4rl(path)
