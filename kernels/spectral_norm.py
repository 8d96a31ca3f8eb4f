"""Triton twin of kernels/spectral_norm.cu: per matrix W (rows, cols), n power-iteration steps

    u <- W v / max(|W v|, eps);  v <- W^T u / max(|W^T u|, eps);  sigma = |W^T u|^2 / max(|W^T u|, eps)

(sigma = u^T W v at the given u, v when n = 0), float32 arithmetic, the same four passes as the CUDA kernels.
One set of launches per matrix (a Triton kernel takes no table of pointers portably)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .rng import INTERPRETED

BLOCK_ROWS = 16
BLOCK_COLS = 1024 if INTERPRETED else 128
BLOCK = 16384 if INTERPRETED else 1024


@triton.jit
def matvec_kernel(
    w_ptr,  # (rows, cols) row-major
    v_ptr,  # (cols,) float32
    out_ptr,  # (rows,) float32: W v
    rows,
    cols,
    BLOCK_ROWS: tl.constexpr,
    BLOCK_COLS: tl.constexpr,
):
    r = tl.program_id(0).to(tl.int64) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    acc = tl.zeros((BLOCK_ROWS,), dtype=tl.float32)
    for start in range(0, cols, BLOCK_COLS):
        c = start + tl.arange(0, BLOCK_COLS)
        mask = (r[:, None] < rows) & (c[None, :] < cols)
        w = tl.load(w_ptr + r[:, None] * cols + c[None, :], mask=mask, other=0.0).to(tl.float32)
        v = tl.load(v_ptr + c, mask=c < cols, other=0.0)
        acc += tl.sum(w * v[None, :], axis=1)
    tl.store(out_ptr + r, acc, mask=r < rows)


@triton.jit
def matvec_t_kernel(
    w_ptr,  # (rows, cols) row-major
    u_ptr,  # (rows,) float32
    partial_ptr,  # (chunks, cols) float32: W^T u over chunk k of the rows
    rows,
    cols,
    chunks,
    BLOCK_ROWS: tl.constexpr,
    BLOCK_COLS: tl.constexpr,
):
    c = tl.program_id(0).to(tl.int64) * BLOCK_COLS + tl.arange(0, BLOCK_COLS)
    k = tl.program_id(1).to(tl.int64)
    first, last = k * rows // chunks, (k + 1) * rows // chunks
    acc = tl.zeros((BLOCK_COLS,), dtype=tl.float32)
    for start in range(first, last, BLOCK_ROWS):
        r = start + tl.arange(0, BLOCK_ROWS)
        mask = (r[:, None] < last) & (c[None, :] < cols)
        w = tl.load(w_ptr + r[:, None] * cols + c[None, :], mask=mask, other=0.0).to(tl.float32)
        u = tl.load(u_ptr + r, mask=r < last, other=0.0)
        acc += tl.sum(w * u[:, None], axis=0)
    tl.store(partial_ptr + k * cols + c, acc, mask=c < cols)


@triton.jit
def normalize_kernel(
    x_ptr,  # (n,) float32, scaled in place to x / max(|x|, eps)
    partial_ptr,  # (chunks, n) float32 summed into x first, or x itself with chunks = 0
    sigma_ptr,  # (1,) float32: |x|^2 / max(|x|, eps)
    n,
    chunks,
    eps,
    BLOCK: tl.constexpr,
):
    total = tl.zeros((BLOCK,), dtype=tl.float32)
    for start in range(0, n, BLOCK):
        i = start + tl.arange(0, BLOCK)
        mask = i < n
        if chunks > 0:
            x = tl.zeros((BLOCK,), dtype=tl.float32)
            for k in range(chunks):
                x += tl.load(partial_ptr + k * n + i, mask=mask, other=0.0)
            tl.store(x_ptr + i, x, mask=mask)
        else:
            x = tl.load(x_ptr + i, mask=mask, other=0.0)
        total += x * x
    norm = tl.sqrt(tl.sum(total, axis=0))
    scale = 1.0 / tl.maximum(norm, eps)
    for start in range(0, n, BLOCK):
        i = start + tl.arange(0, BLOCK)
        mask = i < n
        tl.store(x_ptr + i, tl.load(x_ptr + i, mask=mask, other=0.0) * scale, mask=mask)
    tl.store(sigma_ptr, norm * norm * scale)


@triton.jit
def dot_kernel(
    u_ptr,  # (n,) the weights' dtype
    t_ptr,  # (n,) float32
    out_ptr,  # (1,) float32: sum u t
    n,
    BLOCK: tl.constexpr,
):
    total = tl.zeros((BLOCK,), dtype=tl.float32)
    for start in range(0, n, BLOCK):
        i = start + tl.arange(0, BLOCK)
        mask = i < n
        total += tl.load(u_ptr + i, mask=mask, other=0.0).to(tl.float32) * tl.load(t_ptr + i, mask=mask, other=0.0)
    tl.store(out_ptr, tl.sum(total, axis=0))


def _row_chunks(rows: int) -> int:
    """As spectral_norm_row_chunks in kernels/launchers.h."""
    return min(32, max(1, (rows + 127) // 128))


def spectral_norm_power(weights, us, vs, n_power_iterations, eps):
    """fastgen_triton::spectral_norm_power (declared in fastgen/ops/spectral_norm.py)."""
    device = weights[0].device if weights else torch.device("cpu")
    sigmas = torch.zeros(len(weights), dtype=torch.float32, device=device)
    us_out, vs_out = [], []
    for t, (weight, u, v) in enumerate(zip(weights, us, vs, strict=True)):
        rows, cols = weight.shape
        u32, v32 = torch.empty(rows, dtype=torch.float32, device=device), v.float().clone()
        sigma = sigmas[t:t + 1]
        if n_power_iterations == 0:
            if rows:  # no launch over an empty grid
                matvec_kernel[(triton.cdiv(rows, BLOCK_ROWS),)](weight, v32, u32, rows, cols, BLOCK_ROWS=BLOCK_ROWS,
                                                               BLOCK_COLS=BLOCK_COLS)
            dot_kernel[(1,)](u, u32, sigma, rows, BLOCK=BLOCK)
            us_out.append(u.clone())
            vs_out.append(v.clone())
            continue
        chunks = _row_chunks(rows)
        partial = torch.empty((chunks, cols), dtype=torch.float32, device=device)
        for _ in range(n_power_iterations):
            if rows:
                matvec_kernel[(triton.cdiv(rows, BLOCK_ROWS),)](weight, v32, u32, rows, cols, BLOCK_ROWS=BLOCK_ROWS,
                                                               BLOCK_COLS=BLOCK_COLS)
            normalize_kernel[(1,)](u32, u32, sigma, rows, 0, eps, BLOCK=BLOCK)
            matvec_t_kernel[(max(1, triton.cdiv(cols, BLOCK_COLS)), chunks)](
                weight, u32, partial, rows, cols, chunks, BLOCK_ROWS=BLOCK_ROWS, BLOCK_COLS=BLOCK_COLS)
            normalize_kernel[(1,)](v32, partial, sigma, cols, chunks, eps, BLOCK=BLOCK)
        us_out.append(u32.to(weight.dtype))
        vs_out.append(v32.to(weight.dtype))
    return sigmas, us_out, vs_out
