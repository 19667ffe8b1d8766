"""PSEC: diffusion policy, critics, the three training stages, composition and evaluation."""
