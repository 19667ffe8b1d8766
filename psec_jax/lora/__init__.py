"""Pure-functional LoRA over any parameter pytree, and skill libraries of stacked adapters.

cfg = lora.LoRAConfig(rank=8, alpha=16, scaling="alpha")          # PSEC's setting
adapter = lora.init(key, params, cfg)                              # a fresh skill: exact no-op
lib = lora.SkillLibrary.create(params, "walk", adapter, cfg)       # adapters stacked [K, ...]
c = lib.coefficients(w)                                            # weights [K] / [B, K] / [B, T, K] x scales
y = model.apply({"params": params["params"], "lora": lib.adapters["params"]}, x, c)  # LoRADense layers
y = lora.lora_dense(x, W, b, lib.adapters["params"]["Dense_0"]["kernel"], c)     # one layer, functional
merged = lora.merge(params, lib.adapters, c)                       # or fold global weights in
"""

from psec_jax.lora.compose import METHODS, combine
from psec_jax.lora.config import LoRAConfig
from psec_jax.lora.core import (
    LoRAPair,
    concat_skills,
    flatten,
    init,
    map_pairs,
    merge,
    pad_rank,
    pair_delta,
    path_str,
    rank_of,
    target_paths,
    tree_sha256,
    unflatten,
    unmerge,
)
from psec_jax.lora.forward import LORA_COLLECTION, LoRADense, lora_dense
from psec_jax.lora.library import LibraryError, SkillInfo, SkillLibrary, fingerprint
from psec_jax.lora.training import count_params, param_counts, partition_optimizer, trainable_labels

__all__ = [
    "METHODS",
    "combine",
    "LoRAConfig",
    "LoRAPair",
    "concat_skills",
    "flatten",
    "init",
    "map_pairs",
    "merge",
    "pad_rank",
    "pair_delta",
    "path_str",
    "rank_of",
    "target_paths",
    "tree_sha256",
    "unflatten",
    "unmerge",
    "LORA_COLLECTION",
    "LoRADense",
    "lora_dense",
    "LibraryError",
    "SkillInfo",
    "SkillLibrary",
    "fingerprint",
    "count_params",
    "param_counts",
    "partition_optimizer",
    "trainable_labels",
]
