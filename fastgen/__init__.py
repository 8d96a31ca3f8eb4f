"""fastgen: fused kernels for the hot loops of generative models.

Quick start::

    import fastgen
    gmm = fastgen.targets.eight_gaussians()
    x = fastgen.langevin(torch.randn(100_000, 2), energy=gmm, n_steps=500, step_size=1e-3, seed=0)
    print(fastgen.metrics.mode_weights(x, gmm))

The families live in subpackages (``core``, ``ops``, ``reference``, ``mcmc``, ``diffusion``, ``flows``, ``nn``,
``integrations``, ``cli``); the names used most are re-exported here, and the modules' earlier paths
(``fastgen.sde``, ``fastgen.k_sampling``, ...) stay importable: see ``OLD_PATHS``.
"""

import importlib
import types

__version__ = "0.1.0"

from .core import extensions as _ext  # noqa: E402, I001  (loads fastgen._C and the Triton kernels first)
from .core import aliases as _aliases  # noqa: E402
from . import core  # noqa: E402
# diffusion before ops: fastgen.ops.diffusion's coefficient rules read diffusion.processes, a leaf module, which is
# then already loaded when the samplers (imported by fastgen.diffusion) import the ops.
from . import diffusion  # noqa: E402
from . import ops, reference  # noqa: E402
from . import mcmc, flows, nn, integrations, targets, metrics, cli  # noqa: E402
from .core import RNGState, backends, rng, use_backend  # noqa: E402
from .mcmc import annealed_langevin, langevin, mala  # noqa: E402
from .diffusion import VESDE, VPSDE, DDPMSchedule, SubVPSDE, likelihood, make_sampler, sample  # noqa: E402
from .flows import divergence  # noqa: E402
from .cli import generate  # noqa: E402

OLD_PATHS = {  # the module paths of the flat layout -> their homes (imports of the old path get the new module)
    "fastgen._backend": "fastgen.core.backend",
    "fastgen._ext": "fastgen.core.extensions",
    "fastgen.constants": "fastgen.core.constants",
    "fastgen.rng": "fastgen.core.rng",
    "fastgen.ebm": "fastgen.mcmc.ebm",
    "fastgen.samplers.langevin": "fastgen.mcmc.langevin",
    "fastgen.samplers.diffusion": "fastgen.diffusion.samplers",
    "fastgen.sde": "fastgen.diffusion.processes",
    "fastgen.training": "fastgen.diffusion.training",
    "fastgen.likelihood": "fastgen.diffusion.likelihood",
    "fastgen.cnf": "fastgen.flows.continuous",
    "fastgen.ode": "fastgen.flows.ode",
    "fastgen.divergence": "fastgen.flows.divergence",
    "fastgen.gan": "fastgen.nn.gan",
    "fastgen.vae": "fastgen.nn.vae",
    "fastgen.diffusers": "fastgen.integrations.diffusers",
    "fastgen.k_sampling": "fastgen.integrations.k_diffusion",
    "fastgen.generation": "fastgen.cli.generation",
    "fastgen.demo": "fastgen.cli.demo",
    "fastgen.toy_ebm": "fastgen.cli.toy_ebm",
}


def _samplers():
    """fastgen.samplers was a package: its two modules, and the samplers it re-exported."""
    module = types.ModuleType("fastgen.samplers", "Earlier home of the samplers: fastgen.mcmc, fastgen.diffusion.")
    module.__path__ = []  # a package: fastgen.samplers.diffusion and .langevin resolve through OLD_PATHS
    module.diffusion = importlib.import_module("fastgen.diffusion.samplers")
    module.sample, module.make_sampler = sample, make_sampler
    module.langevin, module.mala, module.annealed_langevin = langevin, mala, annealed_langevin
    return module


OLD_PATHS["fastgen.samplers"] = _samplers
__getattr__ = _aliases.install(__name__, OLD_PATHS)


def build_info() -> dict:
    """Compiler, flags, SIMD, OpenMP, CUDA of fastgen._C (empty when it is not built)."""
    return dict(_ext.C.build_info()) if _ext.C is not None else {}


__all__ = [
    "DDPMSchedule", "RNGState", "SubVPSDE", "VESDE", "VPSDE", "annealed_langevin", "backends", "build_info", "cli",
    "core", "diffusion", "divergence", "flows", "generate", "integrations", "langevin", "likelihood", "make_sampler",
    "mala", "mcmc", "metrics", "nn", "ops", "reference", "rng", "sample", "targets", "use_backend",
]
