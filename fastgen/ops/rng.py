"""Draws from fastgen's Philox stream on any backend (bit-exact uniforms)."""

from __future__ import annotations

import torch

from ..reference import rng as reference
from ._common import op_for, rng_args


def philox_fill_(out: torch.Tensor, seed, offset: int = 0, *, normal: bool = False) -> torch.Tensor:
    """out[i] <- uniform in [0, 1) (or standard normal) at stream position offset + i.

    Args:
        out: contiguous float32 tensor, filled in place.
        seed: int in [0, 2**63 - 1], or an ``RNGState.state`` tensor on out's device.
        offset: first stream position (added to the state's offset when seed is a state).
        normal: draw normals (Box-Muller of lanes 0 and 1) instead of uniforms (lane 0).
    """
    if not isinstance(out, torch.Tensor) or out.dtype != torch.float32 or not out.is_contiguous():
        raise TypeError("out must be a contiguous float32 tensor")
    seed, offset, state = rng_args(seed, offset, out)
    op_for(out, "philox_fill_", reference)(out, seed, offset, state, bool(normal))
    return out


def uniform(shape, seed, offset: int = 0, *, device=None) -> torch.Tensor:
    """Uniforms in [0, 1) at positions offset .. offset + numel - 1."""
    return philox_fill_(torch.empty(shape, dtype=torch.float32, device=device), seed, offset)


def normal(shape, seed, offset: int = 0, *, device=None) -> torch.Tensor:
    """Standard normals at positions offset .. offset + numel - 1."""
    return philox_fill_(torch.empty(shape, dtype=torch.float32, device=device), seed, offset, normal=True)
