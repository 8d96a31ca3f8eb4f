"""Glow's layers beside the coupling: ActNorm, the invertible 1x1 convolution and the squeeze, each one pass forward
and one backward. The rules are in fastgen/reference/glow.py."""

from __future__ import annotations

import math

import torch

from ._common import check_like, check_state, check_vector, require
from ._registry import Loop

__all__ = ["actnorm", "invconv1x1", "squeeze2d"]  # re-exported by fastgen.ops

loop = Loop("glow")


def _channels(x: torch.Tensor, name: str) -> int:
    check_state(x, name)
    require(x.dim() >= 2, lambda: f"{name} must have shape (B, C, ...), got {tuple(x.shape)}")
    return x.shape[1]


def _grad_log_det(a, x: torch.Tensor) -> None:
    check_vector(a.grad_log_det, "grad_log_det", x, x.shape[0], torch.float32, x_name="grad_out")


def _actnorm_shapes(a):
    c = _channels(a.x, "x")
    check_vector(a.log_scale, "log_scale", a.x, c, torch.float32)
    check_vector(a.bias, "bias", a.x, c, torch.float32)
    return torch.empty_like(a.x), a.x.new_empty((a.x.shape[0],), dtype=torch.float32)


def _actnorm_backward_shapes(a):
    c = _channels(a.grad_out, "grad_out")
    _grad_log_det(a, a.grad_out)
    check_like(a.x, "x", a.grad_out, "grad_out")
    require(a.x.is_contiguous(), lambda: "x must be contiguous")
    check_vector(a.log_scale, "log_scale", a.grad_out, c, torch.float32, x_name="grad_out")
    return torch.empty_like(a.grad_out), a.log_scale.new_empty((c,)), a.log_scale.new_empty((c,))


def _actnorm_setup(ctx, inputs, output) -> None:
    x, log_scale, _, inverse = inputs
    ctx.save_for_backward(output[0] if inverse else x, log_scale)  # the data side
    ctx.inverse = inverse


def _actnorm_autograd(ctx, grad_out, grad_log_det):
    x, log_scale = ctx.saved_tensors
    grad_out = torch.zeros_like(x) if grad_out is None else grad_out.contiguous()
    grad_log_det = x.new_zeros((x.shape[0],), dtype=torch.float32) if grad_log_det is None else \
        grad_log_det.float().contiguous()
    grad_in, grad_log_scale, grad_bias = _actnorm_backward(grad_out=grad_out, grad_log_det=grad_log_det, x=x,
                                                           log_scale=log_scale, inverse=ctx.inverse)
    return grad_in, grad_log_scale, grad_bias, None


_actnorm = loop.op("actnorm(Tensor x, Tensor log_scale, Tensor bias, bool inverse=False) -> (Tensor out, "
                   "Tensor log_det)", shapes=_actnorm_shapes, backward=_actnorm_autograd, setup_context=_actnorm_setup)
_actnorm_backward = loop.op(
    "actnorm_backward(Tensor grad_out, Tensor grad_log_det, Tensor x, Tensor log_scale, bool inverse=False) -> "
    "(Tensor grad_in, Tensor grad_log_scale, Tensor grad_bias)", shapes=_actnorm_backward_shapes)


def actnorm(
    x: torch.Tensor,  # (B, C, ...)
    log_scale: torch.Tensor,  # (C,) float32
    bias: torch.Tensor,  # (C,) float32
    *,
    inverse: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """ActNorm (Kingma & Dhariwal 2018) in one pass, per channel c (dim 1) with S elements per channel:

        forward:  y = x exp(log_scale_c) + bias_c,      log_det = S sum log_scale
        inverse:  x = (y - bias_c) exp(-log_scale_c),   log_det = -S sum log_scale

    Returns (out in x's dtype, log_det (B,) float32), differentiable in x, log_scale and bias (one fused backward:
    the input gradient and both per-channel sums)."""
    return _actnorm(x=x.contiguous(), log_scale=log_scale.contiguous(), bias=bias.contiguous(), inverse=bool(inverse))


def _weight(a, x: torch.Tensor, name: str, c: int) -> None:
    w = a.weight
    require(isinstance(w, torch.Tensor), lambda: f"weight must be a torch.Tensor, got {type(w).__name__}", TypeError)
    require(w.dtype == torch.float32, lambda: f"weight must be float32, got {w.dtype}", TypeError)
    require(w.shape == (c, c) and w.device == x.device and w.is_contiguous(),
            lambda: f"weight must be contiguous ({c}, {c}) (channels of {name}) on the device of {name} "
                    f"({x.device}), got {tuple(w.shape)} on {w.device}")


def _invconv_shapes(a):
    c = _channels(a.x, "x")
    _weight(a, a.x, "x", c)
    check_vector(a.log_s, "log_s", a.x, c, torch.float32)
    return torch.empty_like(a.x), a.x.new_empty((a.x.shape[0],), dtype=torch.float32)


def _invconv_backward_shapes(a):
    c = _channels(a.grad_out, "grad_out")
    check_like(a.x, "x", a.grad_out, "grad_out")
    require(a.x.is_contiguous(), lambda: "x must be contiguous")
    _weight(a, a.grad_out, "grad_out", c)
    return torch.empty_like(a.grad_out), a.weight.new_empty((c, c))


def _invconv_setup(ctx, inputs, output) -> None:
    x, weight, _ = inputs
    ctx.save_for_backward(x, weight)


def _invconv_autograd(ctx, grad_out, grad_log_det):
    """grad_log_s = S sum_b g_ld, the same for every channel."""
    x, weight = ctx.saved_tensors
    grad_in = grad_weight = grad_log_s = None
    if grad_out is not None:
        grad_in, grad_weight = _invconv1x1_backward(grad_out=grad_out.contiguous(), x=x, weight=weight)
    if grad_log_det is not None:
        grad_log_s = (math.prod(x.shape[2:]) * grad_log_det.float().sum()).expand(weight.shape[0])
    return grad_in, grad_weight, grad_log_s


_invconv1x1 = loop.op("invconv1x1(Tensor x, Tensor weight, Tensor log_s) -> (Tensor out, Tensor log_det)",
                      shapes=_invconv_shapes, backward=_invconv_autograd, setup_context=_invconv_setup)
_invconv1x1_backward = loop.op(
    "invconv1x1_backward(Tensor grad_out, Tensor x, Tensor weight) -> (Tensor grad_in, Tensor grad_weight)",
    shapes=_invconv_backward_shapes)


def invconv1x1(
    x: torch.Tensor,  # (B, C, ...)
    weight: torch.Tensor,  # (C, C) float32
    log_s: torch.Tensor,  # (C,) float32, summing to log|det weight|
) -> tuple[torch.Tensor, torch.Tensor]:
    """Invertible 1x1 convolution in one pass: out[b, :, p] = weight x[b, :, p] at each of the S positions p,
    log_det = S sum log_s (Glow's LU parametrization gives log|det W| as the sum of U's log-moduli, no
    determinant computed; for the inverse pass W^-1 and -log_s). Returns (out in x's dtype, log_det (B,)
    float32), differentiable in x, weight and log_s; the backward is one pass: W^T g and sum_{b, p} g x^T."""
    return _invconv1x1(x=x.contiguous(), weight=weight.contiguous(), log_s=log_s.contiguous())


def _squeeze_shapes(a):
    check_state(a.x, "x")
    if a.inverse:
        require(a.x.dim() == 4 and a.x.shape[1] % 4 == 0,
                lambda: f"x must have shape (B, 4C, H, W) to unsqueeze, got {tuple(a.x.shape)}")
        b, c, h, w = a.x.shape
        return a.x.new_empty((b, c // 4, 2 * h, 2 * w))
    require(a.x.dim() == 4 and a.x.shape[2] % 2 == 0 and a.x.shape[3] % 2 == 0,
            lambda: f"x must have shape (B, C, H, W) with H and W even, got {tuple(a.x.shape)}")
    b, c, h, w = a.x.shape
    return a.x.new_empty((b, 4 * c, h // 2, w // 2))


def _squeeze_setup(ctx, inputs, output) -> None:
    ctx.inverse = inputs[1]


def _squeeze_autograd(ctx, grad):
    return _squeeze2d(x=grad.contiguous(), inverse=not ctx.inverse), None


_squeeze2d = loop.op("squeeze2d(Tensor x, bool inverse=False) -> Tensor", shapes=_squeeze_shapes,
                     backward=_squeeze_autograd, setup_context=_squeeze_setup)


def squeeze2d(x: torch.Tensor, *, inverse: bool = False) -> torch.Tensor:
    """Glow's squeeze in one pass: (B, C, H, W) -> (B, 4C, H/2, W/2), out[b, 4c + 2i + j, u, v] = x[b, c, 2u + i,
    2v + j] (log|det| = 0); ``inverse=True`` maps back. Differentiable (its backward is the opposite squeeze)."""
    return _squeeze2d(x=x.contiguous(), inverse=bool(inverse))
