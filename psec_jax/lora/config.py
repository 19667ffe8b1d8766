"""``LoRAConfig``: rank, scaling rule, target selection and initialisers of one LoRA skill."""

from __future__ import annotations

import dataclasses
import math
import numbers
import re
from typing import Any, Literal

import jax.numpy as jnp

Scaling = Literal["alpha_over_rank", "alpha", "rslora"]
_SCALINGS = ("alpha_over_rank", "alpha", "rslora")
_A_INITS = ("lecun_normal", "normal", "zeros")
_B_INITS = ("zeros", "normal")


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
    """How one LoRA skill is shaped, scaled and initialised.

    The adapted kernel is ``W0 + scale * A @ B`` with ``A: [*in, rank]`` and ``B: [rank, *out]``.

    scaling: ``"alpha_over_rank"`` (alpha / rank, the usual LoRA rule), ``"alpha"`` (plain alpha: what
      the official PSEC code does, alpha=16 with rank 8), or ``"rslora"`` (alpha / sqrt(rank)).
    targets: regular expressions searched in parameter paths such as ``"params/Dense_0/kernel"`` or
      ``"blocks/0/kernel"`` (nnx); every matching leaf gets an adapter. Matches must have >= 2 dims.
    in_axes: ``(regex, n)`` pairs: kernels whose path matches have their first ``n`` axes contracted
      with the input (DenseGeneral / einsum kernels, e.g. an attention output ``[heads, head_dim, d]``
      needs ``n = 2``). Kernels matching none have ``n = 1``. The first matching pair wins.
    a_init: ``"lecun_normal"`` (truncated normal, variance 1/fan_in; the PSEC choice), ``"normal"``
      (std ``init_std``) or ``"zeros"``. b_init: ``"zeros"`` (a fresh skill is an exact no-op) or
      ``"normal"``.
    dtype: adapter dtype; None uses each base kernel's dtype.

    Checked at construction (ValueError): rank an integer >= 1, alpha finite > 0, init_std finite >= 0;
    a bool or a string is not a number here.
    """

    rank: int = 8
    alpha: float = 16.0
    scaling: Scaling = "alpha_over_rank"
    targets: tuple[str, ...] = (r"(^|/)kernel$",)
    in_axes: tuple[tuple[str, int], ...] = ()
    a_init: str = "lecun_normal"
    b_init: str = "zeros"
    init_std: float = 0.02
    dtype: Any = None

    def __post_init__(self):
        # True passes for an int and float("nan") for a float, so each number's type and range is
        # checked; numpy numbers are accepted and stored as plain int / float (to_dict writes JSON)
        object.__setattr__(self, "rank", _int("rank", self.rank, 1))
        object.__setattr__(self, "alpha", _float("alpha", self.alpha, positive=True))
        object.__setattr__(self, "init_std", _float("init_std", self.init_std, positive=False))
        if self.scaling not in _SCALINGS:
            raise ValueError(f"LoRAConfig.scaling must be one of {_SCALINGS}, got {self.scaling!r}")
        if self.a_init not in _A_INITS:
            raise ValueError(f"LoRAConfig.a_init must be one of {_A_INITS}, got {self.a_init!r}")
        if self.b_init not in _B_INITS:
            raise ValueError(f"LoRAConfig.b_init must be one of {_B_INITS}, got {self.b_init!r}")
        if self.a_init == "zeros" and self.b_init == "zeros":
            raise ValueError("LoRAConfig: a_init and b_init cannot both be 'zeros' (gradients would stay zero)")
        if isinstance(self.targets, str):  # tuple("kernel") would be six one-letter patterns
            raise ValueError(
                f"LoRAConfig.targets must be a tuple of regular expressions, got the string "
                f"{self.targets!r} (write ({self.targets!r},))"
            )
        object.__setattr__(self, "targets", tuple(self.targets))
        if not all(isinstance(p, str) for p in self.targets):
            raise ValueError(f"LoRAConfig.targets must be regular expressions (strings), got {self.targets!r}")
        in_axes = []
        for item in self.in_axes:
            if not isinstance(item, (tuple, list)) or len(item) != 2 or not isinstance(item[0], str):
                raise ValueError(f"LoRAConfig.in_axes must be (regex, n) pairs, got {item!r}")
            in_axes.append((item[0], _int(f"in_axes n of {item[0]!r}", item[1], 1)))
        object.__setattr__(self, "in_axes", tuple(in_axes))
        for pattern in self.targets + tuple(p for p, _ in self.in_axes):
            try:
                re.compile(pattern)
            except re.error as e:
                raise ValueError(f"LoRAConfig: invalid regular expression {pattern!r}: {e}") from None
        if self.dtype is not None:
            try:
                jnp.dtype(self.dtype)
            except TypeError:
                raise ValueError(f"LoRAConfig.dtype must be None or a dtype, got {self.dtype!r}") from None

    @property
    def scale(self) -> float:
        """The factor s in ``W0 + s * A @ B`` given by ``scaling``."""
        if self.scaling == "alpha":
            return float(self.alpha)
        if self.scaling == "rslora":
            return float(self.alpha) / math.sqrt(self.rank)
        return float(self.alpha) / self.rank

    def matches(self, path: str) -> bool:
        """Whether the parameter at ``path`` gets an adapter."""
        return any(re.search(p, path) for p in self.targets)

    def num_in_axes(self, path: str) -> int:
        """How many leading kernel axes are contracted with the input for the kernel at ``path``."""
        for pattern, n in self.in_axes:
            if re.search(pattern, path):
                return n
        return 1

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``dtype`` as its name)."""
        d = dataclasses.asdict(self)
        d["dtype"] = None if self.dtype is None else jnp.dtype(self.dtype).name
        d["targets"] = list(self.targets)
        d["in_axes"] = [list(x) for x in self.in_axes]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LoRAConfig:
        """Inverse of ``to_dict``."""
        d = dict(d)
        d["targets"] = tuple(d.get("targets", cls.targets))
        d["in_axes"] = tuple(tuple(x) for x in d.get("in_axes", ()))
        return cls(**d)


def _int(field: str, value: Any, minimum: int) -> int:
    """``value`` as an int >= ``minimum``; ValueError for a bool, a float, a string or a smaller int."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"LoRAConfig.{field} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _float(field: str, value: Any, *, positive: bool) -> float:
    """``value`` as a finite float (> 0, or >= 0 unless ``positive``); ValueError for a bool or a string."""
    ok = not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value)
    if not ok or (value <= 0 if positive else value < 0):
        raise ValueError(f"LoRAConfig.{field} must be a finite number {'>' if positive else '>='} 0, got {value!r}")
    return float(value)
