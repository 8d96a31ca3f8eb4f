"""Triton twins of kernels/coupling.cu: affine coupling forward / inverse and its backward (the rule in
fastgen/reference/coupling.py). Each program takes ROWS samples, BLOCK_D elements of each at a time; the first
``split`` elements of a sample are copied, the rest transformed, and the log-scales summed per sample."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..core.constants import ScaleMode
from ._tiles import row_tile
from .rng import BLOCK

SOFT_CLAMP = tl.constexpr(int(ScaleMode.SOFT_CLAMP))


@triton.jit
def log_scale(h, SCALE_MODE: tl.constexpr, clamp):
    """(s, ds/dh): soft clamp s = clamp tanh(h / clamp), or Glow's s = log sigmoid(h + 2) (ScaleMode)."""
    if SCALE_MODE == SOFT_CLAMP:
        e = tl.exp(-2.0 * tl.abs(h) / clamp)  # tanh(|u|) = (1 - e) / (1 + e), e = exp(-2 |u|): no overflow
        th = (1.0 - e) / (1.0 + e)
        th = tl.where(h < 0, -th, th)
        return clamp * th, 1.0 - th * th
    else:
        a = h + 2.0
        e = tl.exp(-tl.abs(a))  # log sigmoid(a) = min(a, 0) - log(1 + exp(-|a|)); d/da = sigmoid(-a)
        s = tl.minimum(a, 0.0) - tl.log(1.0 + e)
        return s, tl.where(a >= 0, e / (1.0 + e), 1.0 / (1.0 + e))


@triton.jit
def tile(rows, start, batch, dim, split, BLOCK_D: tl.constexpr):
    """Columns start..start + BLOCK_D of `rows`: (in range, in the transformed part, index into x, column of the
    transformed part)."""
    inside, idx = row_tile(rows, start, batch, dim, BLOCK_D)
    cols = start + tl.arange(0, BLOCK_D)[None, :]
    return inside, inside & (cols >= split), idx, cols - split


@triton.jit
def affine_coupling_kernel(
    x_ptr, h_ptr, t_ptr, out_ptr, log_det_ptr, batch, dim, split, h_stride, t_stride, clamp,
    INVERSE: tl.constexpr, SCALE_MODE: tl.constexpr, ROWS: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    total = tl.zeros((ROWS, BLOCK_D), dtype=tl.float32)
    for start in range(0, dim, BLOCK_D):
        inside, moved, idx, c = tile(rows, start, batch, dim, split, BLOCK_D)
        x = tl.load(x_ptr + idx, mask=inside, other=0.0).to(tl.float32)
        h = tl.load(h_ptr + rows[:, None] * h_stride + c, mask=moved, other=0.0).to(tl.float32)
        t = tl.load(t_ptr + rows[:, None] * t_stride + c, mask=moved, other=0.0).to(tl.float32)
        s, _ = log_scale(h, SCALE_MODE, clamp)
        if INVERSE:
            y = (x - t) * tl.exp(-s)
        else:
            y = x * tl.exp(s) + t
        tl.store(out_ptr + idx, tl.where(moved, y, x).to(out_ptr.dtype.element_ty), mask=inside)
        total += tl.where(moved, s, 0.0)
    log_det = tl.sum(total, axis=1)
    if INVERSE:
        log_det = -log_det
    tl.store(log_det_ptr + rows, log_det, mask=rows < batch)


@triton.jit
def affine_coupling_backward_kernel(
    g_ptr, gl_ptr, x_ptr, h_ptr, grad_in_ptr, grad_h_ptr, batch, dim, split, h_stride, clamp,
    INVERSE: tl.constexpr, SCALE_MODE: tl.constexpr, ROWS: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    gl = tl.load(gl_ptr + rows, mask=rows < batch, other=0.0)[:, None]
    for start in range(0, dim, BLOCK_D):
        inside, moved, idx, c = tile(rows, start, batch, dim, split, BLOCK_D)
        pidx = rows[:, None] * (dim - split) + c  # grad_h is contiguous
        g = tl.load(g_ptr + idx, mask=inside, other=0.0).to(tl.float32)
        x = tl.load(x_ptr + idx, mask=moved, other=0.0).to(tl.float32)
        h = tl.load(h_ptr + rows[:, None] * h_stride + c, mask=moved, other=0.0).to(tl.float32)
        s, ds = log_scale(h, SCALE_MODE, clamp)
        if INVERSE:
            gin = g * tl.exp(-s)
            gh = -(g * x + gl) * ds
        else:
            gin = g * tl.exp(s)
            gh = (gin * x + gl) * ds
        tl.store(grad_in_ptr + idx, tl.where(moved, gin, g).to(grad_in_ptr.dtype.element_ty), mask=inside)
        tl.store(grad_h_ptr + pidx, gh.to(grad_h_ptr.dtype.element_ty), mask=moved)


def _row_stride(v: torch.Tensor, per_sample: int) -> int:
    """Elements between samples of h or t (contiguous, or a dim-1 slice of a conditioner's output)."""
    return v.stride(0) if v.shape[0] > 1 else per_sample


def _grid(batch: int, dim: int) -> tuple[int, int, int]:
    block_d = min(triton.next_power_of_2(max(dim, 1)), BLOCK)
    rows = max(1, BLOCK // block_d)
    return triton.cdiv(batch, rows), rows, block_d


def affine_coupling(x, h, t, split, inverse, scale_mode, clamp):
    """fastgen_triton::affine_coupling (declared in fastgen/ops/coupling.py)."""
    out = torch.empty_like(x)
    batch = x.shape[0]
    log_det = torch.empty(batch, dtype=torch.float32, device=x.device)
    if batch:
        dim = x.numel() // batch
        programs, rows, block_d = _grid(batch, dim)
        affine_coupling_kernel[(programs,)](x, h, t, out, log_det, batch, dim, split, _row_stride(h, dim - split),
                                            _row_stride(t, dim - split), clamp, INVERSE=inverse,
                                            SCALE_MODE=scale_mode, ROWS=rows, BLOCK_D=block_d)
    return out, log_det


def affine_coupling_backward(grad_out, grad_log_det, x, h, split, inverse, scale_mode, clamp):
    """fastgen_triton::affine_coupling_backward (declared in fastgen/ops/coupling.py)."""
    grad_in, grad_h = torch.empty_like(grad_out), h.new_empty(h.shape)
    batch = x.shape[0]
    if batch:
        dim = x.numel() // batch
        programs, rows, block_d = _grid(batch, dim)
        affine_coupling_backward_kernel[(programs,)](grad_out, grad_log_det, x, h, grad_in, grad_h, batch, dim,
                                                     split, _row_stride(h, dim - split), clamp, INVERSE=inverse,
                                                     SCALE_MODE=scale_mode, ROWS=rows, BLOCK_D=block_d)
    return grad_in, grad_h


# Rational-quadratic spline coupling. A program takes ROWS samples, BLOCK_D elements of each at a time, as one
# tile of ROWS * BLOCK_D elements by KP >= bins parameter columns.


@triton.jit
def softplus(u):
    e = tl.exp(-tl.abs(u))
    return tl.maximum(u, 0.0) + tl.where(e < 1e-4, e * (1.0 - 0.5 * e), tl.log(1.0 + e))


@triton.jit
def spline_side(u, valid, minimum, bins, bound):
    """(softmax (E, KP), sizes 2 bound (minimum + (1 - bins minimum) softmax), left knots -bound + sizes
    before) of logits u; zero in the padding columns."""
    u = tl.where(valid, u, float("-inf"))
    e = tl.exp(u - tl.max(u, axis=1)[:, None])
    sm = e / tl.sum(e, axis=1)[:, None]
    size = tl.where(valid, 2.0 * bound * (minimum + (1.0 - bins * minimum) * sm), 0.0)
    return sm, size, tl.cumsum(size, axis=1) - size - bound


@triton.jit
def pick(values, j, k):
    """values[e, k[e]] of an (E, KP) tile."""
    return tl.sum(tl.where(j[None, :] == k[:, None], values, 0.0), axis=1)


@triton.jit
def spline_tile(params_ptr, pidx, moved, v, bins, bound, min_width, min_height, min_derivative, INVERSE: tl.constexpr,
                KP: tl.constexpr):
    """Everything one bin needs for the elements v of a tile: (k, j, softmaxes and sizes of widths and heights,
    x_k, w_k, y_k, h_k, d_k, d_{k+1}, derivative logits). The bin is found on the y side for the inverse."""
    j = tl.arange(0, KP)
    base = pidx[:, None] * (3 * bins - 1) + j[None, :]
    in_bins = j[None, :] < bins
    uw = tl.load(params_ptr + base, mask=moved[:, None] & in_bins, other=0.0).to(tl.float32)
    uh = tl.load(params_ptr + base + bins, mask=moved[:, None] & in_bins, other=0.0).to(tl.float32)
    ud = tl.load(params_ptr + base + 2 * bins, mask=moved[:, None] & (j[None, :] < bins - 1), other=0.0)
    ud = ud.to(tl.float32)
    smw, w, xk = spline_side(uw, in_bins, min_width, bins, bound)
    smh, h, yk = spline_side(uh, in_bins, min_height, bins, bound)
    knots = yk if INVERSE else xk
    k = tl.sum(tl.where(in_bins & (j[None, :] >= 1) & (v[:, None] >= knots), 1, 0), axis=1)
    dsp = min_derivative + softplus(ud)
    d0 = tl.where(k == 0, 1.0, pick(dsp, j, k - 1))
    d1 = tl.where(k == bins - 1, 1.0, pick(dsp, j, k))
    return (k, j, smw, smh, pick(xk, j, k), pick(w, j, k), pick(yk, j, k), pick(h, j, k), d0, d1, ud)


@triton.jit
def spline_coupling_kernel(
    x_ptr, params_ptr, out_ptr, log_det_ptr, batch, dim, split, bins, bound, min_width, min_height, min_derivative,
    INVERSE: tl.constexpr, ROWS: tl.constexpr, BLOCK_D: tl.constexpr, KP: tl.constexpr,
):  # fmt: skip
    e = tl.arange(0, ROWS * BLOCK_D)
    rows = tl.program_id(0).to(tl.int64) * ROWS + e // BLOCK_D
    total = tl.zeros((ROWS * BLOCK_D,), dtype=tl.float32)
    for start in range(0, dim, BLOCK_D):
        cols = start + e % BLOCK_D
        inside = (rows < batch) & (cols < dim)
        moved = inside & (cols >= split)
        idx, pidx = rows * dim + cols, rows * (dim - split) + (cols - split)
        v = tl.load(x_ptr + idx, mask=inside, other=0.0).to(tl.float32)
        vin = tl.minimum(tl.maximum(v, -bound), bound)
        _, _, _, _, x0, w, y0, h, d0, d1, _ = spline_tile(params_ptr, pidx, moved, vin, bins, bound, min_width,
                                                          min_height, min_derivative, INVERSE, KP)
        s = h / w
        if INVERSE:
            r = vin - y0
            a = r * (d0 + d1 - 2.0 * s) + h * (s - d0)
            b = h * d0 - r * (d0 + d1 - 2.0 * s)
            c = -s * r
            theta = 2.0 * c / (-b - tl.sqrt(tl.maximum(b * b - 4.0 * a * c, 0.0)))
            out = theta * w + x0
        else:
            theta = (vin - x0) / w
            u = theta * (1.0 - theta)
            out = y0 + h * (s * theta * theta + d0 * u) / (s + (d0 + d1 - 2.0 * s) * u)
        u = theta * (1.0 - theta)
        m = d1 * theta * theta + 2.0 * s * u + d0 * (1.0 - theta) * (1.0 - theta)
        den = s + (d0 + d1 - 2.0 * s) * u
        log_slope = 2.0 * tl.log(s) + tl.log(m) - 2.0 * tl.log(den)
        spline = moved & (v >= -bound) & (v <= bound)
        tl.store(out_ptr + idx, tl.where(spline, out, v).to(out_ptr.dtype.element_ty), mask=inside)
        total += tl.where(spline, log_slope, 0.0)
    log_det = tl.sum(tl.reshape(total, (ROWS, BLOCK_D)), axis=1)
    if INVERSE:
        log_det = -log_det
    out_rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    tl.store(log_det_ptr + out_rows, log_det, mask=out_rows < batch)


@triton.jit
def spline_coupling_backward_kernel(
    g_ptr, gl_ptr, x_ptr, params_ptr, grad_in_ptr, grad_params_ptr, batch, dim, split, bins, bound, min_width,
    min_height, min_derivative, INVERSE: tl.constexpr, ROWS: tl.constexpr, BLOCK_D: tl.constexpr, KP: tl.constexpr,
):  # fmt: skip
    e = tl.arange(0, ROWS * BLOCK_D)
    rows = tl.program_id(0).to(tl.int64) * ROWS + e // BLOCK_D
    gl = tl.load(gl_ptr + rows, mask=rows < batch, other=0.0)
    for start in range(0, dim, BLOCK_D):
        cols = start + e % BLOCK_D
        inside = (rows < batch) & (cols < dim)
        moved = inside & (cols >= split)
        idx, pidx = rows * dim + cols, rows * (dim - split) + (cols - split)
        g = tl.load(g_ptr + idx, mask=inside, other=0.0).to(tl.float32)
        xv = tl.load(x_ptr + idx, mask=moved, other=0.0).to(tl.float32)
        spline = moved & (xv >= -bound) & (xv <= bound)
        xin = tl.minimum(tl.maximum(xv, -bound), bound)
        k, j, smw, smh, x0, w, y0, h, d0, d1, ud = spline_tile(params_ptr, pidx, moved, xin, bins, bound, min_width,
                                                               min_height, min_derivative, False, KP)
        s = h / w
        theta = (xin - x0) / w
        u = theta * (1.0 - theta)
        den = s + (d0 + d1 - 2.0 * s) * u
        num = s * theta * theta + d0 * u
        m = d1 * theta * theta + 2.0 * s * u + d0 * (1.0 - theta) * (1.0 - theta)
        dden = (d0 + d1 - 2.0 * s) * (1.0 - 2.0 * theta)
        # y = y0 + h R, R = num / den; L = log dy/dx = 2 log s + log m - 2 log den; partials in theta, s, d0, d1
        inv2 = 1.0 / (den * den)
        r_theta = ((2.0 * s * theta + d0 * (1.0 - 2.0 * theta)) * den - num * dden) * inv2
        r_s = (theta * theta * den - num * (1.0 - 2.0 * u)) * inv2
        r_d0 = u * (den - num) * inv2
        r_d1 = -num * u * inv2
        l_theta = (2.0 * d1 * theta - 2.0 * d0 * (1.0 - theta) + 2.0 * s * (1.0 - 2.0 * theta)) / m - 2.0 * dden / den
        l_s = 2.0 / s + 2.0 * u / m - 2.0 * (1.0 - 2.0 * u) / den
        l_d0 = (1.0 - theta) * (1.0 - theta) / m - 2.0 * u / den
        l_d1 = theta * theta / m - 2.0 * u / den
        slope = s * s * m * inv2
        l_x = l_theta / w
        if INVERSE:  # g is the gradient of x = f^-1(y), gl of -log f'(x)
            c = (g - gl * l_x) / slope
            a_f, a_l, grad_in = -c, -gl, c
        else:
            a_f, a_l, grad_in = g, gl, g * slope + gl * l_x
        g_theta = a_f * h * r_theta + a_l * l_theta
        g_s = a_f * h * r_s + a_l * l_s
        g_d0 = a_f * h * r_d0 + a_l * l_d0
        g_d1 = a_f * h * r_d1 + a_l * l_d1
        g_x0, g_w = -g_theta / w, -(g_theta * theta + g_s * s) / w
        g_y0, g_h = a_f, a_f * num / den + g_s / w
        # through the normalization: size_j = 2 bound (min + (1 - bins min) softmax_j), x_k = sum_{j<k} size_j
        g_x0, g_w, g_y0, g_h = tl.where(spline, g_x0, 0.0), tl.where(spline, g_w, 0.0), \
            tl.where(spline, g_y0, 0.0), tl.where(spline, g_h, 0.0)
        g_d0, g_d1 = tl.where(spline, g_d0, 0.0), tl.where(spline, g_d1, 0.0)
        before = j[None, :] < k[:, None]
        at = j[None, :] == k[:, None]
        gsw = 2.0 * bound * (1.0 - bins * min_width) * (tl.where(at, g_w[:, None], 0.0) +
                                                        tl.where(before, g_x0[:, None], 0.0))
        gsh = 2.0 * bound * (1.0 - bins * min_height) * (tl.where(at, g_h[:, None], 0.0) +
                                                         tl.where(before, g_y0[:, None], 0.0))
        guw = smw * (gsw - tl.sum(smw * gsw, axis=1)[:, None])
        guh = smh * (gsh - tl.sum(smh * gsh, axis=1)[:, None])
        sig = 1.0 / (1.0 + tl.exp(-ud))
        gud = sig * (tl.where(j[None, :] == k[:, None] - 1, g_d0[:, None], 0.0) + tl.where(at, g_d1[:, None], 0.0))
        tl.store(grad_in_ptr + idx, tl.where(spline, grad_in, g).to(grad_in_ptr.dtype.element_ty), mask=inside)
        base = pidx[:, None] * (3 * bins - 1) + j[None, :]
        ty = grad_params_ptr.dtype.element_ty
        in_bins = moved[:, None] & (j[None, :] < bins)
        tl.store(grad_params_ptr + base, guw.to(ty), mask=in_bins)
        tl.store(grad_params_ptr + base + bins, guh.to(ty), mask=in_bins)
        tl.store(grad_params_ptr + base + 2 * bins, gud.to(ty), mask=moved[:, None] & (j[None, :] < bins - 1))


def _spline_grid(batch: int, dim: int, bins: int) -> tuple[int, int, int, int]:
    kp = triton.next_power_of_2(bins)
    elements = max(16, 4096 // kp)
    block_d = min(triton.next_power_of_2(max(dim, 1)), elements)
    rows = elements // block_d
    return triton.cdiv(batch, rows), rows, block_d, kp


def spline_coupling(x, params, split, bins, bound, inverse, min_width, min_height, min_derivative):
    """fastgen_triton::spline_coupling (declared in fastgen/ops/coupling.py)."""
    out = torch.empty_like(x)
    batch = x.shape[0]
    log_det = torch.empty(batch, dtype=torch.float32, device=x.device)
    if batch:
        dim = x.numel() // batch
        programs, rows, block_d, kp = _spline_grid(batch, dim, bins)
        spline_coupling_kernel[(programs,)](x, params, out, log_det, batch, dim, split, bins, bound, min_width,
                                            min_height, min_derivative, INVERSE=inverse, ROWS=rows, BLOCK_D=block_d,
                                            KP=kp)
    return out, log_det


def spline_coupling_backward(grad_out, grad_log_det, x, params, split, bins, bound, inverse, min_width, min_height,
                             min_derivative):
    """fastgen_triton::spline_coupling_backward (declared in fastgen/ops/coupling.py)."""
    grad_in, grad_params = torch.empty_like(grad_out), torch.empty_like(params)
    batch = x.shape[0]
    if batch:
        dim = x.numel() // batch
        programs, rows, block_d, kp = _spline_grid(batch, dim, bins)
        spline_coupling_backward_kernel[(programs,)](grad_out, grad_log_det, x, params, grad_in, grad_params, batch,
                                                     dim, split, bins, bound, min_width, min_height, min_derivative,
                                                     INVERSE=inverse, ROWS=rows, BLOCK_D=block_d, KP=kp)
    return grad_in, grad_params
