"""Triton twins of kernels/coupling.cu: affine coupling forward / inverse and its backward (the rule in
fastgen/reference/coupling.py). Each program takes ROWS samples, BLOCK_D elements of each at a time; the first
``split`` elements of a sample are copied, the rest transformed, and the log-scales summed per sample."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .rng import BLOCK


@triton.jit
def log_scale(h, SCALE_MODE: tl.constexpr, clamp):
    """(s, ds/dh): 0 soft clamp s = clamp tanh(h / clamp); 1 Glow's s = log sigmoid(h + 2)."""
    if SCALE_MODE == 0:
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
    """Columns start..start + BLOCK_D of `rows`: (in range, in the transformed part, index into x, index into
    h and t)."""
    cols = start + tl.arange(0, BLOCK_D)
    inside = (rows[:, None] < batch) & (cols[None, :] < dim)
    moved = inside & (cols[None, :] >= split)
    return inside, moved, rows[:, None] * dim + cols[None, :], rows[:, None] * (dim - split) + (cols[None, :] - split)


@triton.jit
def affine_coupling_kernel(
    x_ptr, h_ptr, t_ptr, out_ptr, log_det_ptr, batch, dim, split, clamp,
    INVERSE: tl.constexpr, SCALE_MODE: tl.constexpr, ROWS: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    total = tl.zeros((ROWS, BLOCK_D), dtype=tl.float32)
    for start in range(0, dim, BLOCK_D):
        inside, moved, idx, pidx = tile(rows, start, batch, dim, split, BLOCK_D)
        x = tl.load(x_ptr + idx, mask=inside, other=0.0).to(tl.float32)
        h = tl.load(h_ptr + pidx, mask=moved, other=0.0).to(tl.float32)
        t = tl.load(t_ptr + pidx, mask=moved, other=0.0).to(tl.float32)
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
    g_ptr, gl_ptr, x_ptr, h_ptr, grad_in_ptr, grad_h_ptr, batch, dim, split, clamp,
    INVERSE: tl.constexpr, SCALE_MODE: tl.constexpr, ROWS: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    gl = tl.load(gl_ptr + rows, mask=rows < batch, other=0.0)[:, None]
    for start in range(0, dim, BLOCK_D):
        inside, moved, idx, pidx = tile(rows, start, batch, dim, split, BLOCK_D)
        g = tl.load(g_ptr + idx, mask=inside, other=0.0).to(tl.float32)
        x = tl.load(x_ptr + idx, mask=moved, other=0.0).to(tl.float32)
        h = tl.load(h_ptr + pidx, mask=moved, other=0.0).to(tl.float32)
        s, ds = log_scale(h, SCALE_MODE, clamp)
        if INVERSE:
            gin = g * tl.exp(-s)
            gh = -(g * x + gl) * ds
        else:
            gin = g * tl.exp(s)
            gh = (gin * x + gl) * ds
        tl.store(grad_in_ptr + idx, tl.where(moved, gin, g).to(grad_in_ptr.dtype.element_ty), mask=inside)
        tl.store(grad_h_ptr + pidx, gh.to(grad_h_ptr.dtype.element_ty), mask=moved)


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
        affine_coupling_kernel[(programs,)](x, h, t, out, log_det, batch, dim, split, clamp, INVERSE=inverse,
                                            SCALE_MODE=scale_mode, ROWS=rows, BLOCK_D=block_d)
    return out, log_det


def affine_coupling_backward(grad_out, grad_log_det, x, h, split, inverse, scale_mode, clamp):
    """fastgen_triton::affine_coupling_backward (declared in fastgen/ops/coupling.py)."""
    grad_in, grad_h = torch.empty_like(grad_out), torch.empty_like(h)
    batch = x.shape[0]
    if batch:
        dim = x.numel() // batch
        programs, rows, block_d = _grid(batch, dim)
        affine_coupling_backward_kernel[(programs,)](grad_out, grad_log_det, x, h, grad_in, grad_h, batch, dim,
                                                     split, clamp, INVERSE=inverse, SCALE_MODE=scale_mode, ROWS=rows,
                                                     BLOCK_D=block_d)
    return grad_in, grad_h
