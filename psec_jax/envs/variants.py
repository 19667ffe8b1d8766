"""Dynamics-shift variants: physical changes applied to the MuJoCo model itself.

A variant edits the model specification (`mujoco.MjSpec`) and recompiles it, so derived quantities
(masses and inertias computed from geometry, total-mass normalisation) follow the edit exactly as
MuJoCo computes them. The variants are the ones of the dynamics-shift experiments in PSEC
(after H2O / DARA-style shifted sources):

| name | change |
|---|---|
| nominal | none |
| friction_0.25, friction_0.5 | sliding friction of every geom (floor included) times 0.25 / 0.5; MuJoCo takes the max of a contact pair, so every contact's friction scales by the same factor |
| gravity_2 | gravity vector times 2 |
| thigh_2 | every size parameter (radius, and half-length where the geom has one) of the body's thigh geoms times 2, the geom centre moved so the hip end stays at the joint; mass and inertia are recomputed from the new geometry (total-mass normalisation, where the model has one, still applies) |

Geoms defined by `fromto` (ant's upper legs) are lengthened along the segment from their start.
What `thigh_2` changes is the thigh's mass, inertia and collision shape: the knee joint and the
child bodies stay where they were (the longer thigh overlaps the shin, which MuJoCo does not
collide with its parent), so the kinematic chain and the initial pose are unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import mujoco
import numpy as np

# Thigh geoms per body (MuJoCo geom names in the model files).
THIGH_GEOMS: dict[str, tuple[str, ...]] = {
    "halfcheetah": ("bthigh", "fthigh"),
    "hopper": ("thigh_geom",),
    "walker2d": ("thigh_geom", "thigh_left_geom"),
    "ant": ("left_leg_geom", "right_leg_geom", "back_leg_geom", "rightback_leg_geom"),
    "walker": ("right_thigh", "left_thigh"),
}


def _scale_friction(factor: float) -> Callable[[mujoco.MjSpec, str], None]:
    def edit(spec: mujoco.MjSpec, body: str) -> None:
        del body
        for geom in spec.geoms:
            friction = np.array(geom.friction, dtype=np.float64)
            friction[0] *= factor
            geom.friction = friction

    return edit


def _scale_gravity(factor: float) -> Callable[[mujoco.MjSpec, str], None]:
    def edit(spec: mujoco.MjSpec, body: str) -> None:
        del body
        spec.option.gravity = np.asarray(spec.option.gravity, np.float64) * factor

    return edit


def _scale_thighs(factor: float) -> Callable[[mujoco.MjSpec, str], None]:
    def edit(spec: mujoco.MjSpec, body: str) -> None:
        names = THIGH_GEOMS.get(body)
        if names is None:
            raise ValueError(f"variant thigh_{factor:g}: no thigh geoms known for body {body!r}")
        found = {g.name: g for g in spec.geoms if g.name in names}
        missing = sorted(set(names) - set(found))
        if missing:
            raise ValueError(f"variant thigh_{factor:g}: geoms {missing} not in the {body} model")
        for geom in found.values():
            fromto = np.asarray(geom.fromto, np.float64)
            if np.all(np.isfinite(fromto)) and np.any(fromto != 0):
                start, end = fromto[:3], fromto[3:]
                geom.fromto = np.concatenate([start, start + factor * (end - start)])
                size = np.asarray(geom.size, np.float64)
                size[0] *= factor  # radius; the length comes from fromto
                geom.size = size
            else:
                geom.size = np.asarray(geom.size, np.float64) * factor
                geom.pos = np.asarray(geom.pos, np.float64) * factor

    return edit


VARIANTS: dict[str, Callable[[mujoco.MjSpec, str], None] | None] = {
    "nominal": None,
    "friction_0.25": _scale_friction(0.25),
    "friction_0.5": _scale_friction(0.5),
    "gravity_2": _scale_gravity(2.0),
    "thigh_2": _scale_thighs(2.0),
}


def check_variant(variant: str) -> None:
    """Raise ValueError naming the known variants when `variant` is not one of them."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown dynamics variant {variant!r}; known: {sorted(VARIANTS)}")


def apply_variant(spec: mujoco.MjSpec, body: str, variant: str) -> mujoco.MjModel:
    """Edit `spec` in place for `variant` (a VARIANTS key) of `body` and compile it."""
    check_variant(variant)
    edit = VARIANTS[variant]
    if edit is not None:
        edit(spec, body)
    return spec.compile()
