"""The compose stage of the PSEC runner: a method's composer (fixed weights, the context network or the
routed one) trained on the frozen pi_0 and skills of every seed and saved per seed; the routed
composer's routing config and how many skills it selects per state.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from psec_jax import moe, routed
from psec_jax.data.offline import OfflineData
from psec_jax.rl import pipeline, policy, saving, train
from psec_jax.rl.methods import Method


def route_counts(composer: policy.Composer, params: Any, observations: jax.Array) -> dict[str, Any]:
    """How many skills a routed composer (params with a leading seed axis) selects per state of
    ``observations`` [N, obs_dim] (normalised, as the composer sees them): per seed the mean and the
    share of states at each count 1..K."""
    counts = jax.device_get(
        jax.lax.map(lambda p: composer.apply(p, observations).route.experts_per_token, params)
    )  # [seeds, N]
    k = int(np.max(counts)) if counts.size else 0
    return {
        "states": int(counts.shape[1]),
        "mean_per_seed": counts.mean(1).tolist(),
        "share_per_count_per_seed": [[float(np.mean(c == j)) for j in range(1, k + 1)] for c in counts],
    }


def routing_config(config: ml_collections.ConfigDict, num_skills: int | None = None) -> moe.MoEConfig:
    """The routed composer's routing (``config.compose.routing``) as a ``psec_jax.moe.MoEConfig``: router,
    k / p / max_k, renormalisation, dispatch back-end and the aux-loss weights. ValueError naming a bad
    field, a back-end a route cannot use (``routed.BACKENDS``), or k / max_k above ``num_skills``."""
    r = config.compose.routing
    out = moe.MoEConfig(
        router=r.router,
        k=r.k,
        p=r.p,
        max_k=r.max_k if r.max_k else None,
        renormalize=r.renormalize,
        backend=r.backend,
        load_balance_weight=r.load_balance_weight,
        dynamic_weight=r.dynamic_weight,
        z_weight=r.z_weight,
    )
    routed.check_routing(out, num_skills)
    return out


def compose_method(
    name: str,
    m: Method,
    config: ml_collections.ConfigDict,
    actor: policy.Actor,
    base: Any,
    skills: policy.Skills,
    data: OfflineData,
    names: list[str],
    stage: Callable,
    workdir: Path,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(policy params, sampler arguments) of a composed method; trains and saves its composer."""
    k, n = len(names), config.num_seeds
    if m.composer == "fixed":
        composer = policy.make_composer("fixed", actor.obs_dim, k, fixed=(config.compose.fixed_weight,) * k)
        cparams = jnp.broadcast_to(composer.init(None), (n, k))
    else:
        routing = routing_config(config, k) if m.composer == "routed" else None
        composer = policy.make_composer(
            m.composer, actor.obs_dim, policy.num_outputs(m.mode, k), tuple(config.compose.hidden), routing=routing
        )
        actions = None
        if m.mode == "action":
            keys = pipeline.seed_keys(config.seed, n, f"components/{name}")
            sample = lambda b, sk, key: policy.component_actions(actor, b, sk, data.observations, key)
            actions = jax.jit(jax.vmap(sample))(base, skills, keys)
        cparams = stage(
            train.make_compose(actor, composer, m.mode, config.compose),
            f"compose/{name}",
            train.ComposeInputs(base, skills, actions),
            data,
            f"compose_{name}",
            members="map" if routing is not None else "vmap",
        ).params
        for i in range(n):
            saving.save_composer(
                workdir / "policies" / f"composer_{name}_seed{i}",
                saving.take_seed(cparams, i),
                base=saving.take_seed(base, i),
                skills=saving.take_seed(skills, i),
                names=names,
                mode=m.mode,
                kind=m.composer,
                skill_kind=m.skill_kind,
                **({"routing": dataclasses.asdict(routing)} if routing is not None else {}),
            )
    return {"base": base, "skills": skills, "composer": cparams}, {"mode": m.mode, "composer": composer}
