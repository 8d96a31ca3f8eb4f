"""Triton twins of the CUDA kernels, registered as torch.library custom ops in
the ``fastgen_triton`` namespace. Importing this package needs triton."""

from . import diffusion, langevin, rng

__all__ = ["diffusion", "langevin", "rng"]
