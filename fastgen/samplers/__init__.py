"""Samplers: whole loops over the fused ops, for any PyTorch model."""

from .langevin import annealed_langevin, langevin, mala

__all__ = ["annealed_langevin", "langevin", "mala"]
