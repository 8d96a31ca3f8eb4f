"""Functional ops over the fused kernels (one module per hot loop)."""

from .langevin import gmm_langevin_, mala_accept_, mala_propose, ula_step_
from .rng import normal, philox_fill_, uniform

__all__ = ["gmm_langevin_", "mala_accept_", "mala_propose", "normal", "philox_fill_", "ula_step_", "uniform"]
