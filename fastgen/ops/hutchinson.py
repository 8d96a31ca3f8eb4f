"""Hutchinson trace estimation: probes from fastgen's noise stream, and the per-sample reduction eps^T (J eps)
fused with regenerating the probe (it is never stored for the reduction or its backward)."""

from __future__ import annotations

import torch

from ._common import check_rng_ints, check_state, rng_args
from ._registry import Loop
from .rng import philox_fill_

__all__ = ["hutchinson_dot", "probe"]  # re-exported by fastgen.ops

loop = Loop("hutchinson")


def _hutchinson_dot_shapes(a):
    check_state(a.vjp, "vjp")
    check_rng_ints(a.seed, a.offset)
    return a.vjp.new_empty((a.vjp.shape[0],), dtype=torch.float32)


def _hutchinson_dot_setup(ctx, inputs, output) -> None:
    vjp, seed, offset, rademacher = inputs
    ctx.shape, ctx.dtype, ctx.device = vjp.shape, vjp.dtype, vjp.device
    ctx.seed, ctx.offset, ctx.rademacher = seed, offset, rademacher


def _hutchinson_dot_backward(ctx, grad):
    """out_b = sum_i vjp_bi eps_bi is linear in vjp: d out_b / d vjp_bi = eps_bi (redrawn from the stream)."""
    eps = probe(ctx.shape, ctx.seed, ctx.offset, rademacher=ctx.rademacher, device=ctx.device)
    return (grad.view((-1,) + (1,) * (len(ctx.shape) - 1)) * eps).to(ctx.dtype), None, None, None


_hutchinson_dot = loop.op("hutchinson_dot(Tensor vjp, int seed, int offset=0, bool rademacher=True) -> Tensor",
                          shapes=_hutchinson_dot_shapes, backward=_hutchinson_dot_backward,
                          setup_context=_hutchinson_dot_setup)


def probe(shape, seed: int, offset: int = 0, *, rademacher: bool = True, device=None,
          dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A Hutchinson probe of ``shape`` (E[eps eps^T] = I): Rademacher signs (+1 where the stream's uniform is
    >= 1/2, else -1) or standard normals, at stream positions offset .. offset + numel - 1 (drawn by the
    noise-stream kernels of :func:`fastgen.ops.philox_fill_`)."""
    seed, offset, _ = rng_args(seed, offset, torch.empty(0, device=device))
    draws = philox_fill_(torch.empty(tuple(shape), dtype=torch.float32, device=device), seed, offset,
                         normal=not rademacher)
    if rademacher:
        draws = draws.ge_(0.5).mul_(2.0).sub_(1.0)  # in place: +1 where u >= 1/2, else -1
    return draws.to(dtype)


def hutchinson_dot(
    vjp: torch.Tensor,  # (B, ...) eps^T J, from torch.autograd.grad(f(x), x, eps)
    seed: int,
    offset: int = 0,
    *,
    rademacher: bool = True,
) -> torch.Tensor:
    """The per-sample Hutchinson reduction with the probe regenerated in the kernel:

        out_b = sum_i vjp[b, i] eps[b, i],   eps = probe(vjp.shape, seed, offset),

    so that E[out_b] = tr(J_b) when vjp = eps^T J_b. Returns (B,) float32, differentiable in vjp."""
    seed, offset, state = rng_args(seed, offset, vjp)
    if state is not None:
        raise ValueError("seed must be an int here (the probe is regenerated from (seed, offset))")
    return _hutchinson_dot(vjp=vjp, seed=seed, offset=offset, rademacher=bool(rademacher))
