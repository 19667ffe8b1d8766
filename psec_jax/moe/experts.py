"""The layer's experts: one function written for a single expert, and their stacked parameters.

    params = init_moe(key, d_model=64, d_ff=256, num_experts=8)        # router [d, E], experts [E, ...]
    y = EXPERTS["swiglu"](expert_params(params["experts"], 0), x)       # x [n, d] -> [n, d], one expert

`init_moe(..., boxed=True)` returns every parameter as a `flax.linen.LogicallyPartitioned` box: its
value and the logical names of its axes (`psec_jax.parallel.RULES` maps them to mesh axes), declared
here where the parameter is created.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from psec_jax.moe.grouped import SplitExpert


def _swiglu_in(p: Any, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    return x @ p["gate"].astype(x.dtype), x @ p["up"].astype(x.dtype)


def _swiglu_out(p: Any, z: tuple[jax.Array, jax.Array]) -> jax.Array:
    gate, up = z
    return (jax.nn.silu(gate) * up) @ p["down"].astype(gate.dtype)


def _gelu_in(p: Any, x: jax.Array) -> jax.Array:
    return x @ p["up"].astype(x.dtype)


def _gelu_out(p: Any, h: jax.Array) -> jax.Array:
    return jax.nn.gelu(h) @ p["down"].astype(h.dtype)


# x [n, d] -> [n, d] for one expert's weights; split so that `dropless` can keep the activations.
swiglu_expert = SplitExpert(_swiglu_in, _swiglu_out)  # (silu(x W_gate) * (x W_up)) W_down
gelu_expert = SplitExpert(_gelu_in, _gelu_out)  # gelu(x W_up) W_down
EXPERTS = {"swiglu": swiglu_expert, "gelu": gelu_expert}  # the expert activations, by name


def is_boxed(x: Any) -> bool:
    """Whether x is a parameter box (a value with its logical axis names, `nn.Partitioned`)."""
    return isinstance(x, nn.Partitioned)


def unbox(tree: Any) -> Any:
    """The values of a tree of boxed parameters (plain leaves pass through; no sharding constraint)."""
    return jax.tree.map(lambda b: b.value if is_boxed(b) else b, tree, is_leaf=is_boxed)


def init_moe(
    key: jax.Array,
    d_model: int,
    d_ff: int,
    num_experts: int,
    *,
    activation: str = "swiglu",
    dtype: Any = jnp.float32,
    boxed: bool = False,
) -> dict[str, Any]:
    """Parameters: router [d, E] and experts stacked [E, ...] (lecun-normal fan-in scaling).

    boxed: every leaf a `nn.LogicallyPartitioned` carrying its logical axis names (router
    ("embed", None): replicated over the expert axis, every device routes its tokens; experts
    ("expert", "embed", "mlp") and down ("expert", "mlp", "embed")).
    """
    if activation not in EXPERTS:
        raise ValueError(f"unknown expert activation {activation!r}; choose from {sorted(EXPERTS)}")
    ks = jax.random.split(key, 4)

    def weight(k, shape, fan_in, names):
        value = (jax.random.normal(k, shape, jnp.float32) / jnp.sqrt(fan_in)).astype(dtype)
        return nn.LogicallyPartitioned(value, names)

    experts = {
        "up": weight(ks[1], (num_experts, d_model, d_ff), d_model, ("expert", "embed", "mlp")),
        "down": weight(ks[2], (num_experts, d_ff, d_model), d_ff, ("expert", "mlp", "embed")),
    }
    if activation == "swiglu":
        experts["gate"] = weight(ks[3], (num_experts, d_model, d_ff), d_model, ("expert", "embed", "mlp"))
    params = {"router": weight(ks[0], (d_model, num_experts), d_model, ("embed", None)), "experts": experts}
    return params if boxed else unbox(params)
