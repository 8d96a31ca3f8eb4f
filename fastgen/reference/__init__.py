"""Plain-PyTorch specifications of every fused op: readable, and the backend of last resort."""

from . import langevin, rng

__all__ = ["langevin", "rng"]
