"""psec_jax: skill libraries of LoRA modules (PSEC) and dynamic top-p MoE routing in JAX/Flax.

Importing the package is cheap and has no side effects; subpackages are imported explicitly
(`from psec_jax import testing`, `from psec_jax import checkpoint`, ...).
"""

__version__ = "0.1.0"
