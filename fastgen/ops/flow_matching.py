"""The flow-matching interpolation in one fused op: the noise drawn from the stream (paired with the data rows
as given), the point x_t of the path and its target velocity."""

from __future__ import annotations

import torch

from ._common import check_rng_ints, check_state, require
from ._registry import Loop

__all__ = ["cfm_interpolate"]  # re-exported by fastgen.ops

loop = Loop("flow_matching")


def _cfm_interpolate_shapes(a):
    check_state(a.x0, "x0")
    batch = a.x0.shape[0]
    coef = a.coef
    require(isinstance(coef, torch.Tensor) and coef.dtype == torch.float32,
            lambda: f"coef must be a float32 tensor, got {getattr(coef, 'dtype', type(coef).__name__)}", TypeError)
    require(coef.device == a.x0.device and coef.shape == (batch, 4) and coef.is_contiguous(),
            lambda: f"coef must be contiguous ({batch}, 4) (alpha, sigma, alpha', sigma' per sample) on x0's device "
                    f"({a.x0.device}), got {tuple(coef.shape)} on {coef.device}")
    if a.pairing is not None:
        p = a.pairing
        require(isinstance(p, torch.Tensor) and p.dtype == torch.int64,
                lambda: f"pairing must be an int64 tensor, got {getattr(p, 'dtype', type(p).__name__)}", TypeError)
        require(p.device == a.x0.device and p.shape == (batch,) and p.is_contiguous(),
                lambda: f"pairing must be contiguous ({batch},) on x0's device, got {tuple(p.shape)} on {p.device}")
    check_rng_ints(a.seed, a.offset)
    return torch.empty_like(a.x0), torch.empty_like(a.x0)


def _cfm_interpolate_setup(ctx, inputs, output) -> None:
    ctx.save_for_backward(inputs[1])


def _cfm_interpolate_backward(ctx, grad_x_t, grad_target):
    """x_t = alpha x0 + sigma eps, target = alpha' x0 + sigma' eps: d/d x0 = alpha g_x_t + alpha' g_target (the
    noise and the coefficients are not differentiated)."""
    (coef,) = ctx.saved_tensors
    grads = [g for g in (grad_x_t, grad_target) if g is not None]
    if not grads:
        return None, None, None, None, None
    shape = (-1,) + (1,) * (grads[0].dim() - 1)
    total = torch.zeros(grads[0].shape, dtype=torch.float32, device=grads[0].device)
    if grad_x_t is not None:
        total = total + coef[:, 0].view(shape) * grad_x_t.float()
    if grad_target is not None:
        total = total + coef[:, 2].view(shape) * grad_target.float()
    return total.to(grads[0].dtype), None, None, None, None


_cfm_interpolate = loop.op(
    "cfm_interpolate(Tensor x0, Tensor coef, Tensor? pairing=None, int seed=0, int offset=0) "
    "-> (Tensor x_t, Tensor target)",
    shapes=_cfm_interpolate_shapes, backward=_cfm_interpolate_backward, setup_context=_cfm_interpolate_setup)


def cfm_interpolate(
    x0: torch.Tensor,  # (B, ...) data
    coef: torch.Tensor,  # (B, 4) float32: alpha, sigma, alpha', sigma' at each sample's time
    seed: int,
    offset: int = 0,
    *,
    pairing: torch.Tensor | None = None,  # (B,) int64: the noise row of each sample (identity when None)
) -> tuple[torch.Tensor, torch.Tensor]:
    """The point of an affine path and its velocity, in one pass, the noise regenerated from the stream:

        eps_bj = normal at offset + p_b D + j,   x_t = alpha_b x0 + sigma_b eps,   target = alpha'_b x0 + sigma'_b eps,

    p = pairing (an OT-CFM coupling's noise rows, of this batch or of a global batch across processes: no
    permuted copy of the noise is made) or the identity. Returns (x_t, target) in x0's dtype, differentiable in x0.
    Pairing values select stream rows only, never memory: they must be >= 0 (checked for CPU tensors). Reserves
    ``(max(p) + 1) * D`` stream positions (``x0.numel()`` unpaired)."""
    if pairing is not None and isinstance(pairing, torch.Tensor) and pairing.device.type == "cpu" and \
            pairing.numel() and int(pairing.min()) < 0:
        raise IndexError(f"pairing must hold stream rows >= 0, got {int(pairing.min())}")
    return _cfm_interpolate(x0=x0, coef=coef, pairing=pairing, seed=seed, offset=offset)
