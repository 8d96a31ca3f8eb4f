"""Functional ops over the fused kernels (one module per hot loop), and the op registry.

Each op is declared once in its loop's module (see ``fastgen/ops/_registry.py`` and
``docs/adding-an-op.md``); ``REGISTRY[name]`` is its keyword call. The public functions
below check user input once and call it.
"""

from ._registry import REGISTRY
from .coupling import affine_coupling, spline_coupling
from .ema import ema_update_
from .glow import actnorm, invconv1x1, squeeze2d
from .hutchinson import hutchinson_dot, probe
from .langevin import gmm_langevin_, mala_accept_, mala_propose, ula_step_
from .rng import normal, philox_fill_, uniform
from .spectral_norm import spectral_norm_power
from .vae import gaussian_rsample
from . import diffusion  # noqa: E402  (declares its ops; functions under fastgen.ops.diffusion)

__all__ = ["REGISTRY", "actnorm", "affine_coupling", "diffusion", "ema_update_", "gaussian_rsample", "gmm_langevin_",
           "hutchinson_dot", "invconv1x1", "mala_accept_", "mala_propose", "normal", "philox_fill_", "probe",
           "spectral_norm_power", "spline_coupling", "squeeze2d", "ula_step_", "uniform"]
