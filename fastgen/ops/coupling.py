"""Affine coupling (RealNVP, Glow): the transformed part of a sample, its log-determinant and their backward,
one pass each. The rule and the scale parametrizations are in fastgen/reference/coupling.py."""

from __future__ import annotations

import math

import torch

from ._common import check_state, require
from ._registry import Loop

loop = Loop("coupling")

SCALES = {"soft_clamp": 0, "sigmoid": 1}


def _params(a, first: torch.Tensor, first_name: str) -> None:
    """What both ops share: split, the conditioner's outputs (h, and t where given), scale options."""
    check_state(first, first_name)
    batch = first.shape[0]
    size = first.numel() // batch if batch else 0
    require(0 <= a.split < size or (batch == 0 and a.split >= 0),
            lambda: f"split must leave elements to transform: 0 <= split < {size} (the elements of one sample), got "
                    f"{a.split}")
    names = (("h", a.h), ("t", a.t)) if hasattr(a, "t") else (("h", a.h),)
    for name, v in names:
        require(isinstance(v, torch.Tensor), lambda: f"{name} must be a torch.Tensor, got {type(v).__name__}",
                TypeError)
        require(v.dtype == first.dtype, lambda: f"{name} must have the dtype of {first_name} ({first.dtype}), got "
                                                f"{v.dtype}", TypeError)
        require(v.device == first.device and v.is_contiguous() and v.dim() >= 1 and v.shape[0] == batch and
                v.numel() == batch * (size - a.split),
                lambda: f"{name} must be contiguous on the device of {first_name} with {size - a.split} elements per "
                        f"sample (the transformed part: {size} - split), batch {batch} first, got "
                        f"{tuple(v.shape)} on {v.device}")
    require(a.scale_mode in SCALES.values(), lambda: f"scale_mode must be 0 (soft clamp) or 1 (sigmoid), got "
                                                     f"{a.scale_mode}")
    require(math.isfinite(a.clamp) and a.clamp > 0, lambda: f"clamp must be finite and > 0, got {a.clamp}")


def _affine_coupling_shapes(a):
    _params(a, a.x, "x")
    return torch.empty_like(a.x), a.x.new_empty((a.x.shape[0],), dtype=torch.float32)


def _affine_coupling_backward_shapes(a):
    _params(a, a.grad_out, "grad_out")
    require(a.x.shape == a.grad_out.shape and a.x.dtype == a.grad_out.dtype and a.x.device == a.grad_out.device
            and a.x.is_contiguous(), lambda: "x must be contiguous with the shape, dtype and device of grad_out")
    require(a.grad_log_det.dtype == torch.float32 and a.grad_log_det.shape == (a.x.shape[0],) and
            a.grad_log_det.device == a.x.device and a.grad_log_det.is_contiguous(),
            lambda: f"grad_log_det must be contiguous float32 of shape ({a.x.shape[0]},) on the device of x")
    return torch.empty_like(a.grad_out), torch.empty_like(a.h)


def _affine_coupling_setup(ctx, inputs, output) -> None:
    x, h, t, split, inverse, scale_mode, clamp = inputs
    ctx.save_for_backward(output[0] if inverse else x, h)  # the data side: the forward's input, the inverse's output
    ctx.options = dict(split=split, inverse=inverse, scale_mode=scale_mode, clamp=clamp)
    ctx.t_shape = t.shape


def _affine_coupling_autograd(ctx, grad_out, grad_log_det):
    """Through affine_coupling_backward: (grad of the input, of h); grad_t is the output gradient's transformed
    part (forward) or minus the input gradient's (inverse)."""
    x, h = ctx.saved_tensors
    batch, split = x.shape[0], ctx.options["split"]
    grad_out = torch.zeros_like(x) if grad_out is None else grad_out.contiguous()
    grad_log_det = x.new_zeros((batch,), dtype=torch.float32) if grad_log_det is None else \
        grad_log_det.float().contiguous()
    grad_in, grad_h = _affine_coupling_backward(grad_out=grad_out, grad_log_det=grad_log_det, x=x, h=h,
                                                **ctx.options)
    moved = (grad_in if ctx.options["inverse"] else grad_out).reshape(batch, math.prod(x.shape[1:]))[:, split:]
    grad_t = (-moved if ctx.options["inverse"] else moved).reshape(ctx.t_shape)
    return grad_in, grad_h, grad_t, None, None, None, None


_affine_coupling = loop.op(
    "affine_coupling(Tensor x, Tensor h, Tensor t, int split, bool inverse=False, int scale_mode=0, "
    "float clamp=2.) -> (Tensor out, Tensor log_det)",
    shapes=_affine_coupling_shapes, backward=_affine_coupling_autograd, setup_context=_affine_coupling_setup)
_affine_coupling_backward = loop.op(
    "affine_coupling_backward(Tensor grad_out, Tensor grad_log_det, Tensor x, Tensor h, int split, "
    "bool inverse=False, int scale_mode=0, float clamp=2.) -> (Tensor grad_in, Tensor grad_h)",
    shapes=_affine_coupling_backward_shapes)


def affine_coupling(
    x: torch.Tensor,  # (B, ...) input (data side forward, base side inverse)
    h: torch.Tensor,  # (B, ...) log-scale logits for the D - split transformed elements of each sample
    t: torch.Tensor,  # (B, ...) shifts, as h
    split: int,  # elements of each (flattened) sample that pass unchanged
    *,
    inverse: bool = False,
    scale: str = "soft_clamp",
    clamp: float = 2.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Affine coupling in one pass: with s the log-scale from h (``scale``: "soft_clamp", s = clamp tanh(h /
    clamp), or "sigmoid", Glow's s = log sigmoid(h + 2)),

        forward:  y = [x_a, x_b exp(s) + t],    log_det = sum s
        inverse:  x = [y_a, (y_b - t) exp(-s)], log_det = -sum s

    with x_a the first ``split`` elements of each flattened sample and x_b the rest. Returns (out in x's dtype,
    log_det (B,) float32), differentiable in x, h and t (the backward is one fused pass too). h and t hold the
    transformed part in element order, any shape with that many elements per sample (for (B, C, H, W) split at
    channel c: split = c H W, h and t (B, C - c, H, W))."""
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {', '.join(SCALES)}, got {scale!r}")
    if isinstance(split, bool) or not isinstance(split, int):
        raise TypeError(f"split must be an int, got {type(split).__name__}")
    if isinstance(clamp, bool) or not isinstance(clamp, (int, float)):
        raise TypeError(f"clamp must be a number, got {type(clamp).__name__}")
    return _affine_coupling(x=x.contiguous(), h=h.contiguous(), t=t.contiguous(), split=split, inverse=bool(inverse),
                            scale_mode=SCALES[scale], clamp=float(clamp))
