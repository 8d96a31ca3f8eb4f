"""Plain-PyTorch specification of Glow's layer ops (same arguments as the registered ops).

x is (B, C, ...) with S = the elements of one channel of one sample (H W for images); per-channel parameters are
float32 (C,) (float64 for float64 x, which the flows' float64 path uses); arithmetic is float32 (float64).

ActNorm, per channel c with log-scale s_c and bias b_c:

    forward:  y = x exp(s_c) + b_c,      log_det = S sum_c s_c
    inverse:  x = (y - b_c) exp(-s_c),   log_det = -S sum_c s_c

Its backward takes the data-side x (the forward's input, the inverse's output) and the output and log-det
gradients g, g_ld; sums run over the batch and the S elements of channel c:

    forward:  grad_in = g exp(s_c),   grad_b_c = sum g,                grad_s_c = sum g x exp(s_c) + S sum_b g_ld
    inverse:  grad_in = g exp(-s_c),  grad_b_c = -sum g exp(-s_c),     grad_s_c = -sum g x - S sum_b g_ld

Invertible 1x1 convolution: out[b, :, p] = W x[b, :, p] at every position p, log_det = S sum log_s, where log_s
holds log|det W| as a sum (the log-moduli of U's diagonal in Glow's LU parametrization W = P L U; the inverse
layer passes W^-1 and -log_s). Backward: grad_in = W^T g at every position, grad_W = sum_{b, p} g x^T.

Squeeze (factor 2): (B, C, H, W) -> (B, 4C, H/2, W/2), out[b, 4c + 2i + j, u, v] = x[b, c, 2u + i, 2v + j];
the inverse maps back. It only moves elements: its backward is the opposite squeeze.
"""

from __future__ import annotations

import math

import torch


def _per_channel(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.reshape((1, -1) + (1,) * (x.dim() - 2))


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _spatial(x: torch.Tensor) -> int:
    """S: the elements of one channel of one sample."""
    return math.prod(x.shape[2:])


def actnorm(x, log_scale, bias, inverse):
    """(out in x's dtype, log_det (B,)): y = x exp(s) + b per channel, or its inverse."""
    f = _compute_dtype(x)
    s, b = _per_channel(log_scale.to(f), x), _per_channel(bias.to(f), x)
    xf = x.to(f)
    out = (xf - b) * torch.exp(-s) if inverse else xf * torch.exp(s) + b
    total = _spatial(x) * log_scale.to(f).sum()
    log_det = (-total if inverse else total).expand(x.shape[0]).clone()
    return out.to(x.dtype), log_det


def actnorm_backward(grad_out, grad_log_det, x, log_scale, inverse):
    """(grad_in in grad_out's dtype, grad_log_scale (C,), grad_bias (C,)) by the rule above."""
    f = _compute_dtype(x)
    s = _per_channel(log_scale.to(f), x)
    g, xf = grad_out.to(f), x.to(f)
    dims = [0] + list(range(2, x.dim()))
    g_ld = _spatial(x) * grad_log_det.to(f).sum()
    if inverse:
        grad_in = g * torch.exp(-s)
        grad_bias = -grad_in.sum(dims)
        grad_log_scale = -(g * xf).sum(dims) - g_ld
    else:
        grad_in = g * torch.exp(s)
        grad_bias = g.sum(dims)
        grad_log_scale = (grad_in * xf).sum(dims) + g_ld
    return grad_in.to(grad_out.dtype), grad_log_scale.to(log_scale.dtype), grad_bias.to(log_scale.dtype)


def invconv1x1(x, weight, log_s):
    """(out in x's dtype, log_det (B,)): W x at every position, log_det = S sum log_s."""
    f = _compute_dtype(x)
    batch, channels = x.shape[0], weight.shape[0]
    out = torch.matmul(weight.to(f), x.to(f).reshape(batch, channels, _spatial(x))).reshape(x.shape)
    log_det = (_spatial(x) * log_s.to(f).sum()).expand(batch).clone()
    return out.to(x.dtype), log_det


def invconv1x1_backward(grad_out, x, weight):
    """(grad_in = W^T g in grad_out's dtype, grad_weight = sum_{b, p} g x^T (C, C) in weight's dtype)."""
    f = _compute_dtype(x)
    batch, channels = x.shape[0], weight.shape[0]
    g = grad_out.to(f).reshape(batch, channels, _spatial(x))
    grad_in = torch.matmul(weight.to(f).T, g).reshape(x.shape)
    grad_weight = torch.matmul(g, x.to(f).reshape(batch, channels, _spatial(x)).transpose(1, 2)).sum(0)
    return grad_in.to(grad_out.dtype), grad_weight.to(weight.dtype)


def squeeze2d(x, inverse):
    """(B, C, H, W) -> (B, 4C, H/2, W/2) (inverse: back)."""
    b, c, h, w = x.shape
    if inverse:
        return x.reshape(b, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(b, c // 4, 2 * h, 2 * w)
    return x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, 4 * c, h // 2, w // 2)
