"""Modules and losses for training networks: spectral normalization of a whole model in one grouped power
iteration (``spectral``), GAN losses and penalties (``gan``), VAE bounds (``vae``)."""

from . import gan, vae
from .spectral import SpectralNorm, spectral_norm

__all__ = ["SpectralNorm", "gan", "spectral_norm", "vae"]
