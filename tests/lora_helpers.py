"""Small models and numpy references shared by the LoRA tests."""

import flax.linen as nn
import jax
import numpy as np

from psec_jax import lora


class TwoLayer(nn.Module):
    """Two LoRADense layers; parameter names match a model built from nn.Dense."""

    hidden: int = 12
    out: int = 5

    @nn.compact
    def __call__(self, x, skill_weights=None):
        x = nn.tanh(lora.LoRADense(self.hidden)(x, skill_weights))
        return lora.LoRADense(self.out)(x, skill_weights)


def random_library(base_params, ranks, seed=0):
    """A SkillLibrary with one random (non-zero B) skill per rank, named s0, s1, ..."""
    lib = None
    for i, r in enumerate(ranks):
        cfg = lora.LoRAConfig(rank=r, alpha=2.0 * r + i, b_init="normal", init_std=0.3)
        adapter = lora.init(jax.random.key(seed * 100 + i), base_params, cfg)
        lib = (
            lora.SkillLibrary.create(base_params, f"s{i}", adapter, cfg)
            if lib is None
            else lib.add(f"s{i}", adapter, cfg)
        )
    return lib


def np_dense_delta(pair, coeffs):
    """sum_k c_k A_k B_k in float64 numpy for a stacked pair (2-D kernels or N-D via reshape)."""
    a, b = np.asarray(pair.a, np.float64), np.asarray(pair.b, np.float64)
    return sum(c * np.tensordot(a[k], b[k], axes=1) for k, c in enumerate(np.asarray(coeffs, np.float64)))
