"""`MoEConfig`: every routing and dispatch choice of an MoE layer, one frozen (hashable) object.

    config = MoEConfig(router="top_k", k=2, backend="capacity", capacity_factor=1.0)
    y, aux, stats = moe_apply(params, x, config)
    config = dataclasses.replace(config, dispatch="fused")          # a variant

Names are looked up in one table per kind of choice: routers in `psec_jax.routing.ROUTERS`, dispatch
back-ends in `psec_jax.moe.backends.BACKENDS`, expert functions in `psec_jax.moe.experts.EXPERTS`.
The checks here run when the object is made, so a bad option fails where it is written.
"""

from __future__ import annotations

import dataclasses
import math
import numbers

from psec_jax.kernels import gmm
from psec_jax.moe.backends import BACKENDS
from psec_jax.moe.expert_parallel import EXCHANGES
from psec_jax.moe.experts import EXPERTS
from psec_jax.moe.losses import LOAD_BALANCE_NORMS
from psec_jax.routing import ROUTERS

ROUTING_DISPATCHES = ("argsort", "fused")  # how a route is computed and grouped by expert


def _positive(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value) and value > 0


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


@dataclasses.dataclass(frozen=True)
class MoEConfig:
    """Routing and dispatch choices of one MoE layer (hashable: a jit static argument, a Flax field)."""

    # routing
    router: str = "top_p"  # a name in psec_jax.routing.ROUTERS
    k: int = 2  # experts per token, for routers that use k (top_k)
    p: float = 0.4  # threshold, for routers that use p (top_p); moe_apply's `p` overrides it (may be traced)
    max_k: int | None = None  # slots per token of top-p (None: all E, never truncated)
    renormalize: bool = False  # combine weights sum to 1 per token (else the raw probabilities)
    dispatch: str = "argsort"  # "argsort": jnp routers, back-ends argsort by expert; "fused": the Pallas kernel
    # dispatch back-end
    backend: str = "dropless"  # a name in psec_jax.moe.backends.BACKENDS
    activation: str = "swiglu"  # the expert function, a name in psec_jax.moe.experts.EXPERTS
    capacity_factor: float = 1.25  # capacity / expert_parallel buffers: C = ceil(factor * T * k / E)
    capacity_k: float | None = None  # the k sizing those buffers (None: the route's slot count)
    block_size: int | None = None  # dropless rows per full block (None: grouped.default_block_size(T))
    # dropless, ragged: rows per token whose activations the backward pass keeps (None: all; ragged: at least 1)
    saved_slots: float | None = 4.0
    grouped_matmul: str = "auto"  # ragged's grouped matmul, one of psec_jax.kernels.gmm.IMPLS
    exchange: str = "auto"  # expert_parallel's token exchange, one of psec_jax.moe.expert_parallel.EXCHANGES
    # aux losses: total = a * load_balance + b * dynamic + c * z (psec_jax.moe.losses)
    load_balance_weight: float = 1e-2  # a (the top-p paper's)
    dynamic_weight: float = 1e-4  # b, the top-p paper's routing-entropy ("dynamic") loss
    z_weight: float = 1e-3  # c, ST-MoE's router z-loss
    # control: each token uses the expert count of the token this many places earlier on the flattened
    # token axis (e.g. seq_len: the same position of the previous sequence), still its own most probable
    # experts; 0: its own count. Keeps a router's count distribution and detaches it from the token
    count_roll: int = 0
    # load balance's f: "assignments" (sum f = 1) or "tokens" (sum f = k: GShard, HF Mixtral, MaxText)
    load_balance_norm: str = "assignments"

    def __post_init__(self):
        if self.router not in ROUTERS:
            raise ValueError(f"unknown router {self.router!r}; choose from {tuple(ROUTERS)}")
        if not _count(self.k):
            raise ValueError(f"k must be a Python int >= 1 (it fixes output shapes), got {self.k!r}")
        if isinstance(self.p, bool) or not isinstance(self.p, numbers.Real) or not 0.0 < self.p <= 1.0:
            raise ValueError(f"top-p threshold p must be in (0, 1], got {self.p!r}")
        if self.max_k is not None and not _count(self.max_k):
            raise ValueError(f"max_k must be None or a Python int >= 1, got {self.max_k!r}")
        if self.dispatch not in ROUTING_DISPATCHES:
            raise ValueError(f"unknown routing dispatch {self.dispatch!r}; choose from {ROUTING_DISPATCHES}")
        if self.dispatch == "fused" and not ROUTERS[self.router].fused:
            raise ValueError(f"router {self.router!r} has no fused kernel; use dispatch='argsort'")
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown dispatch back-end {self.backend!r}; choose from {tuple(BACKENDS)}")
        if self.activation not in EXPERTS:
            raise ValueError(f"unknown expert activation {self.activation!r}; choose from {sorted(EXPERTS)}")
        if not _positive(self.capacity_factor):
            raise ValueError(f"capacity_factor must be a finite number > 0, got {self.capacity_factor!r}")
        if self.capacity_k is not None and not _positive(self.capacity_k):
            raise ValueError(f"capacity_k must be None or a finite number > 0, got {self.capacity_k!r}")
        if self.block_size is not None and not _count(self.block_size):
            raise ValueError(f"block_size must be None or an int >= 1, got {self.block_size!r}")
        if self.saved_slots is not None and not (isinstance(self.saved_slots, numbers.Real) and self.saved_slots >= 0):
            raise ValueError(f"saved_slots must be >= 0 or None, got {self.saved_slots!r}")
        if self.grouped_matmul not in gmm.IMPLS:
            raise ValueError(f"unknown grouped matmul {self.grouped_matmul!r}; choose from {gmm.IMPLS}")
        if self.exchange not in EXCHANGES:
            raise ValueError(f"unknown exchange {self.exchange!r}; choose from {EXCHANGES}")
        if isinstance(self.count_roll, bool) or not isinstance(self.count_roll, int) or self.count_roll < 0:
            raise ValueError(f"count_roll must be an int >= 0, got {self.count_roll!r}")
        if self.count_roll and self.dispatch == "fused":
            raise ValueError("count_roll changes the route after routing; use dispatch='argsort'")
        if self.load_balance_norm not in LOAD_BALANCE_NORMS:
            raise ValueError(f"unknown load_balance_norm {self.load_balance_norm!r}; choose from {LOAD_BALANCE_NORMS}")
        for name in ("load_balance_weight", "dynamic_weight", "z_weight"):
            w = getattr(self, name)
            if isinstance(w, bool) or not isinstance(w, numbers.Real) or not (math.isfinite(w) and w >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {w!r}")

    @property
    def aux_weights(self) -> dict[str, float]:
        """The aux-loss weights by loss name (`psec_jax.moe.losses.aux_losses`)."""
        return {"load_balance": self.load_balance_weight, "dynamic": self.dynamic_weight, "z": self.z_weight}
