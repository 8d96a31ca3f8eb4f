"""fastgen: fused kernels for the hot loops of generative models.

Quick start::

    import fastgen
    gmm = fastgen.targets.eight_gaussians()
    x = fastgen.langevin(torch.randn(100_000, 2), energy=gmm, n_steps=500, step_size=1e-3, seed=0)
    print(fastgen.metrics.mode_weights(x, gmm))
"""

__version__ = "0.1.0"

from . import (  # noqa: E402
    _ext,  # noqa: F401, E402  (loads fastgen._C and the Triton kernels, warns once if missing)
    cnf,
    ebm,
    flows,
    gan,
    k_sampling,
    metrics,
    nn,
    ode,
    ops,
    reference,
    rng,
    samplers,
    sde,
    targets,
    training,
    vae,
)
from ._backend import backends, use_backend
from .divergence import divergence  # noqa: E402
from .generation import generate  # noqa: E402
from .likelihood import likelihood  # noqa: E402
from .rng import RNGState
from .samplers import annealed_langevin, langevin, make_sampler, mala, sample
from .sde import VESDE, VPSDE, DDPMSchedule, SubVPSDE


def build_info() -> dict:
    """Compiler, flags, SIMD, OpenMP, CUDA of fastgen._C (empty when it is not built)."""
    return dict(_ext.C.build_info()) if _ext.C is not None else {}


__all__ = [
    "DDPMSchedule", "RNGState", "SubVPSDE", "VESDE", "VPSDE", "annealed_langevin", "backends", "build_info", "cnf",
    "divergence", "ebm", "flows", "gan", "generate", "k_sampling", "langevin", "likelihood", "make_sampler", "mala",
    "metrics", "nn", "ode", "ops", "reference", "rng", "sample", "samplers", "sde", "targets", "training",
    "use_backend", "vae",
]
