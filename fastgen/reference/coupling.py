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

from ..core.constants import ScaleMode


def log_scale(h: torch.Tensor, scale_mode: int, clamp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(s, ds/dh) of logits h."""
    if scale_mode == ScaleMode.SOFT_CLAMP:
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


# Rational-quadratic spline coupling (Durkan et al. 2019, neural spline flows).
#
# Each transformed element has 3K - 1 raw parameters, in this order: K width logits, K height logits, K - 1
# derivative logits (the interior knots). On [-bound, bound]:
#
#     widths  w_k = 2 bound (min_width + (1 - K min_width) softmax(uw)_k),   knots x_k = -bound + sum_{j<k} w_j
#     heights h_k, knots y_k: the same with uh and min_height
#     derivatives d_0 = d_K = 1 (the linear tails' slope), d_k = min_derivative + softplus(ud_k) inside
#
# and in bin k, with theta = (x - x_k) / w_k, s = h_k / w_k, u = theta (1 - theta):
#
#     y = y_k + h_k (s theta^2 + d_k u) / (s + (d_k + d_{k+1} - 2 s) u)
#     dy/dx = s^2 (d_{k+1} theta^2 + 2 s u + d_k (1 - theta)^2) / (s + (d_k + d_{k+1} - 2 s) u)^2
#
# Outside [-bound, bound] the map is the identity (log-det 0), so it is monotone, continuous with a continuous
# derivative, and finite for every finite input. The inverse solves the bin's quadratic for theta. The backward is
# the gradient of this rule, taking the data-side tensor x as the affine backward does. The reference computes in
# float64 whatever the input dtype: where a bin is narrow and flat (slope near min_derivative) the rule is
# ill-conditioned, and a float32 evaluation differs from the exact one by more than the fused float32 kernels do.


def spline_knots(p: torch.Tensor, bins: int, bound: float, min_width: float, min_height: float,
                 min_derivative: float):
    """(x knots (N, K+1), widths (N, K), y knots, heights, derivatives (N, K+1)) of raw parameters (N, 3K - 1)."""
    K = bins

    def sides(logits, minimum):
        size = 2 * bound * (minimum + (1 - K * minimum) * torch.softmax(logits, dim=1))
        knots = torch.nn.functional.pad(torch.cumsum(size, dim=1)[:, :-1], (1, 0)) - bound
        return torch.cat([knots, torch.full_like(knots[:, :1], bound)], dim=1), size

    xk, w = sides(p[:, :K], min_width)
    yk, h = sides(p[:, K:2 * K], min_height)
    d = torch.nn.functional.pad(min_derivative + torch.nn.functional.softplus(p[:, 2 * K:], threshold=1e9), (1, 1),
                                value=1.0)
    return xk, w, yk, h, d


def _spline(v, p, bins, bound, inverse, min_width, min_height, min_derivative):
    """(out, log|det d out / d v|) of one flat batch of elements v (N,) with parameters p (N, 3K - 1)."""
    xk, w, yk, h, d = spline_knots(p, bins, bound, min_width, min_height, min_derivative)
    inside = (v >= -bound) & (v <= bound)
    vin = v.clamp(-bound, bound)
    edges = yk if inverse else xk
    k = (vin[:, None] >= edges[:, 1:bins]).sum(1, keepdim=True)
    x0, wk, y0, hk = xk.gather(1, k)[:, 0], w.gather(1, k)[:, 0], yk.gather(1, k)[:, 0], h.gather(1, k)[:, 0]
    d0, d1 = d.gather(1, k)[:, 0], d.gather(1, k + 1)[:, 0]
    s = hk / wk
    if inverse:
        r = vin - y0
        a = r * (d0 + d1 - 2 * s) + hk * (s - d0)
        b = hk * d0 - r * (d0 + d1 - 2 * s)
        c = -s * r
        theta = 2 * c / (-b - torch.sqrt((b * b - 4 * a * c).clamp_min(0)))
        out = theta * wk + x0
    else:
        theta = (vin - x0) / wk
        u = theta * (1 - theta)
        out = y0 + hk * (s * theta * theta + d0 * u) / (s + (d0 + d1 - 2 * s) * u)
    u = theta * (1 - theta)
    log_slope = (2 * torch.log(s) + torch.log(d1 * theta * theta + 2 * s * u + d0 * (1 - theta) ** 2)
                 - 2 * torch.log(s + (d0 + d1 - 2 * s) * u))
    log_slope = -log_slope if inverse else log_slope
    return torch.where(inside, out, v), torch.where(inside, log_slope, torch.zeros_like(v))


def spline_coupling(x, params, split, bins, bound, inverse, min_width, min_height, min_derivative):
    keep, part = _parts(x, split)
    work = torch.float64  # see the note above
    batch, n = part.shape
    p = params.reshape(batch * n, 3 * bins - 1).to(work)
    out, log_slope = _spline(part.reshape(-1).to(work), p, bins, bound, inverse, min_width, min_height,
                             min_derivative)
    out = torch.cat([keep, out.reshape(batch, n).to(x.dtype)], dim=1).reshape(x.shape)
    return out, log_slope.reshape(batch, n).sum(1).to(_work(x))


def spline_coupling_backward(grad_out, grad_log_det, x, params, split, bins, bound, inverse, min_width, min_height,
                             min_derivative):
    """The gradient of the rule at the data-side x, written out (an op cannot run autograd inside): with y = y_k
    + h_k R(theta, s, d_k, d_{k+1}) and L = log dy/dx, the cotangents (a_f, a_l) of (y, L) are (g, g_L) forward;
    for the inverse, whose output is x and log-det -L, c = (g - g_L dL/dx) / (dy/dx) is the input gradient and
    (a_f, a_l) = (-c, -g_L). They flow to theta, s, d_k, d_{k+1}, then to the knots and sizes, then through the
    softmax and softplus to the raw parameters. tests/test_coupling.py checks it against autograd of the rule."""
    g_keep, g = _parts(grad_out, split)
    _, part = _parts(x, split)
    work = torch.float64
    batch, n = part.shape
    K = bins
    p = params.reshape(batch * n, 3 * K - 1).to(work)
    v, g = part.reshape(-1).to(work), g.reshape(-1).to(work)
    gl = grad_log_det.to(work)[:, None].expand(batch, n).reshape(-1)
    spline = (v >= -bound) & (v <= bound)
    v = v.clamp(-bound, bound)
    xk, w, yk, h, d = spline_knots(p, K, bound, min_width, min_height, min_derivative)
    k = (v[:, None] >= xk[:, 1:K]).sum(1, keepdim=True)
    x0, wk, hk = xk.gather(1, k)[:, 0], w.gather(1, k)[:, 0], h.gather(1, k)[:, 0]
    d0, d1 = d.gather(1, k)[:, 0], d.gather(1, k + 1)[:, 0]
    s, theta = hk / wk, (v - x0) / wk
    u = theta * (1 - theta)
    den = s + (d0 + d1 - 2 * s) * u
    num = s * theta ** 2 + d0 * u
    m = d1 * theta ** 2 + 2 * s * u + d0 * (1 - theta) ** 2
    dden = (d0 + d1 - 2 * s) * (1 - 2 * theta)
    r_theta = ((2 * s * theta + d0 * (1 - 2 * theta)) * den - num * dden) / den ** 2
    r_s = (theta ** 2 * den - num * (1 - 2 * u)) / den ** 2
    r_d0, r_d1 = u * (den - num) / den ** 2, -num * u / den ** 2
    l_theta = (2 * d1 * theta - 2 * d0 * (1 - theta) + 2 * s * (1 - 2 * theta)) / m - 2 * dden / den
    l_s = 2 / s + 2 * u / m - 2 * (1 - 2 * u) / den
    l_d0, l_d1 = (1 - theta) ** 2 / m - 2 * u / den, theta ** 2 / m - 2 * u / den
    slope, l_x = s * s * m / den ** 2, l_theta / wk
    if inverse:
        grad_v = (g - gl * l_x) / slope
        a_f, a_l = -grad_v, -gl
    else:
        grad_v = g * slope + gl * l_x
        a_f, a_l = g, gl
    a_f, a_l = torch.where(spline, a_f, 0), torch.where(spline, a_l, 0)
    g_theta, g_s = a_f * hk * r_theta + a_l * l_theta, a_f * hk * r_s + a_l * l_s
    g_x0, g_w = -g_theta / wk, -(g_theta * theta + g_s * s) / wk
    g_y0, g_h = a_f, a_f * num / den + g_s / wk
    j = torch.arange(K, device=v.device)
    grads = []
    for logits, minimum, g_at, g_before in ((p[:, :K], min_width, g_w, g_x0), (p[:, K:2 * K], min_height, g_h, g_y0)):
        sm = torch.softmax(logits, dim=1)
        g_size = 2 * bound * (1 - K * minimum) * (torch.where(j == k, g_at[:, None], 0) +
                                                  torch.where(j < k, g_before[:, None], 0))
        grads.append(sm * (g_size - (sm * g_size).sum(1, keepdim=True)))
    g_d = torch.zeros_like(d).scatter_add(1, k, (a_f * hk * r_d0 + a_l * l_d0)[:, None])
    g_d = g_d.scatter_add(1, k + 1, (a_f * hk * r_d1 + a_l * l_d1)[:, None])
    grads.append(g_d[:, 1:K] * torch.sigmoid(p[:, 2 * K:]))
    grad_p = torch.cat(grads, dim=1)
    grad_v = torch.where(spline, grad_v, g)
    grad_in = torch.cat([g_keep, grad_v.reshape(batch, n).to(grad_out.dtype)], dim=1).reshape(grad_out.shape)
    return grad_in, grad_p.to(params.dtype).reshape(params.shape)
