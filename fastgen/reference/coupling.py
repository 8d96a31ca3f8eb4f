"""Plain-PyTorch specification of the affine coupling ops (same arguments as the registered ops).

A sample of D elements (its flattened event) is split at ``split``: the first ``split`` elements pass unchanged,
the other D - split are transformed with the conditioner's raw outputs h (log-scale logits) and t (shift), each
(B, D - split) in element order. The log-scale s = log(scale) comes from h by ``scale_mode``:

    0 (soft clamp, RealNVP/FrEIA style):  s = clamp tanh(h / clamp)   (|s| < clamp: the scale stays in
                                           (e^-clamp, e^clamp) however large h grows, with slope 1 at h = 0)
    1 (Glow):                             s = log sigmoid(h + 2)       (scale in (0, 1), 0.88 at h = 0)

forward (inverse False):  y_b = x_b exp(s) + t,     log_det = sum s
inverse (inverse True):   x_b = (y_b - t) exp(-s),  log_det = -sum s

The backward takes x, the data-side tensor (the forward's input, the inverse's output), and the gradients of the
output and of log_det:

    forward:  grad_x_b = g_b exp(s),   grad_h = (g_b x_b exp(s) + g_ld) s'(h)      (grad_t = g_b)
    inverse:  grad_y_b = g_b exp(-s),  grad_h = -(g_b x_b + g_ld) s'(h)            (grad_t = -grad_y_b)

and the first ``split`` elements of the input's gradient are g's. Arithmetic is float32 (float64 for float64
inputs, which the flows' float64 path uses); log_det is float32 (float64).
"""

from __future__ import annotations

import math

import torch

SOFT_CLAMP, SIGMOID = 0, 1


def log_scale(h: torch.Tensor, scale_mode: int, clamp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(s, ds/dh) of logits h."""
    if scale_mode == SOFT_CLAMP:
        th = torch.tanh(h / clamp)
        return clamp * th, 1 - th * th
    a = h + 2.0
    return torch.nn.functional.logsigmoid(a), torch.sigmoid(-a)


def _parts(v: torch.Tensor, split: int) -> tuple[torch.Tensor, torch.Tensor]:
    flat = v.reshape(v.shape[0], math.prod(v.shape[1:]))
    return flat[:, :split], flat[:, split:]


def _work(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def affine_coupling(x, h, t, split, inverse, scale_mode, clamp):
    keep, part = _parts(x, split)
    work = _work(x)
    s, _ = log_scale(h.reshape(part.shape).to(work), scale_mode, clamp)
    tf = t.reshape(part.shape).to(work)
    moved = (part.to(work) - tf) * torch.exp(-s) if inverse else part.to(work) * torch.exp(s) + tf
    out = torch.cat([keep, moved.to(x.dtype)], dim=1).reshape(x.shape)
    log_det = s.sum(1)
    return out, -log_det if inverse else log_det


def affine_coupling_backward(grad_out, grad_log_det, x, h, split, inverse, scale_mode, clamp):
    g_keep, g = _parts(grad_out, split)
    _, part = _parts(x, split)
    work = _work(x)
    s, ds = log_scale(h.reshape(part.shape).to(work), scale_mode, clamp)
    g, xb, gl = g.to(work), part.to(work), grad_log_det.to(work)[:, None]
    if inverse:
        grad_moved = g * torch.exp(-s)
        grad_h = -(g * xb + gl) * ds
    else:
        grad_moved = g * torch.exp(s)
        grad_h = (grad_moved * xb + gl) * ds
    grad_in = torch.cat([g_keep, grad_moved.to(grad_out.dtype)], dim=1).reshape(grad_out.shape)
    return grad_in, grad_h.to(h.dtype).reshape(h.shape)
