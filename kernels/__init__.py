"""Triton twins of the CUDA kernels, registered as torch.library custom ops in
the ``fastgen_triton`` namespace. Importing this package needs triton."""

from . import langevin, rng

__all__ = ["langevin", "rng"]
