"""Samplers: whole loops over the fused ops, for any PyTorch model."""

from . import diffusion
from .diffusion import sample
from .langevin import annealed_langevin, langevin, mala

__all__ = ["annealed_langevin", "diffusion", "langevin", "mala", "sample"]
