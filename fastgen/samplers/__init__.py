"""Samplers: whole loops over the fused ops, for any PyTorch model."""

from . import diffusion
from .diffusion import make_sampler, sample
from .langevin import annealed_langevin, langevin, mala

__all__ = ["annealed_langevin", "diffusion", "langevin", "make_sampler", "mala", "sample"]
