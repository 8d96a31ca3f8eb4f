"""Draws from fastgen's Philox stream on any backend (bit-exact uniforms)."""

from __future__ import annotations

import torch

from ._common import check_rng_ints, check_rng_state, require, rng_args
from ._registry import Loop

__all__ = ["normal", "philox_fill_", "uniform"]  # re-exported by fastgen.ops

loop = Loop("rng")


def _philox_fill_shapes(a) -> None:
    require(a.out.dtype == torch.float32, lambda: f"out must be float32, got {a.out.dtype}", TypeError)
    require(a.out.is_contiguous(), lambda: "out must be contiguous")
    check_rng_ints(a.seed, a.offset)
    check_rng_state(a.rng_state, a.out, "out")


_philox_fill = loop.op(
    "philox_fill_(Tensor(a!) out, int seed, int offset=0, Tensor? rng_state=None, bool normal=False) -> ()",
    shapes=_philox_fill_shapes)


def philox_fill_(out: torch.Tensor, seed, offset: int = 0, *, normal: bool = False) -> torch.Tensor:
    """out[i] <- uniform in [0, 1) (or standard normal) at stream position offset + i.

    Args:
        out: contiguous float32 tensor, filled in place.
        seed: int in [0, 2**63 - 1], or an ``RNGState.state`` tensor on out's device.
        offset: first stream position (added to the state's offset when seed is a state).
        normal: draw normals (Box-Muller of the lane pair of position n, cosine at even n, sine
            at odd n) instead of uniforms (lane n % 4 of counter n // 4).
    """
    if not isinstance(out, torch.Tensor) or out.dtype != torch.float32 or not out.is_contiguous():
        raise TypeError("out must be a contiguous float32 tensor")
    seed, offset, state = rng_args(seed, offset, out)
    _philox_fill(out=out, seed=seed, offset=offset, rng_state=state, normal=bool(normal))
    return out


def uniform(shape, seed, offset: int = 0, *, device=None) -> torch.Tensor:
    """Uniforms in [0, 1) at positions offset .. offset + numel - 1."""
    return philox_fill_(torch.empty(shape, dtype=torch.float32, device=device), seed, offset)


def normal(shape, seed, offset: int = 0, *, device=None) -> torch.Tensor:
    """Standard normals at positions offset .. offset + numel - 1."""
    return philox_fill_(torch.empty(shape, dtype=torch.float32, device=device), seed, offset, normal=True)
