"""Triton twins of kernels/glow.cu and csrc/glow.cpp: ActNorm and its backward, the invertible 1x1 convolution as a
tiled product and its backward, the squeeze (rules in fastgen/reference/glow.py). A tensor (B, C, ...) is seen as
B C rows of S elements (one channel of one sample each)."""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._tiles import row_tile
from .rng import BLOCK


@triton.jit
def actnorm_kernel(
    x_ptr, log_scale_ptr, bias_ptr, out_ptr, log_det_ptr, rows, channels, spatial,
    INVERSE: tl.constexpr, ROWS: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    r = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    c = r % channels
    s = tl.load(log_scale_ptr + c, mask=r < rows, other=0.0)[:, None]
    b = tl.load(bias_ptr + c, mask=r < rows, other=0.0)[:, None]
    for start in range(0, spatial, BLOCK_S):
        mask, idx = row_tile(r, start, rows, spatial, BLOCK_S)
        x = tl.load(x_ptr + idx, mask=mask, other=0.0).to(tl.float32)
        y = (x - b) * tl.exp(-s) if INVERSE else x * tl.exp(s) + b
        tl.store(out_ptr + idx, y.to(out_ptr.dtype.element_ty), mask=mask)
    k = tl.arange(0, BLOCK_C)
    total = spatial * tl.sum(tl.load(log_scale_ptr + k, mask=k < channels, other=0.0))
    if INVERSE:
        total = -total
    first = (r < rows) & (c == 0)  # the first row of each sample writes its log_det
    tl.store(log_det_ptr + r // channels, tl.zeros((ROWS,), dtype=tl.float32) + total, mask=first)


@triton.jit
def actnorm_backward_kernel(
    g_ptr, x_ptr, log_scale_ptr, grad_in_ptr, partial_ptr, rows, channels, spatial,
    INVERSE: tl.constexpr, ROWS: tl.constexpr, BLOCK_S: tl.constexpr,
):  # fmt: skip
    """grad_in = g exp(+-s), and per row (sum g, sum g x) into partial (rows, 2)."""
    r = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    s = tl.load(log_scale_ptr + r % channels, mask=r < rows, other=0.0)[:, None]
    m = tl.exp(-s) if INVERSE else tl.exp(s)
    sum_g = tl.zeros((ROWS, BLOCK_S), dtype=tl.float32)
    sum_gx = tl.zeros((ROWS, BLOCK_S), dtype=tl.float32)
    for start in range(0, spatial, BLOCK_S):
        mask, idx = row_tile(r, start, rows, spatial, BLOCK_S)
        g = tl.load(g_ptr + idx, mask=mask, other=0.0).to(tl.float32)
        x = tl.load(x_ptr + idx, mask=mask, other=0.0).to(tl.float32)
        tl.store(grad_in_ptr + idx, (g * m).to(grad_in_ptr.dtype.element_ty), mask=mask)
        sum_g += g
        sum_gx += g * x
    tl.store(partial_ptr + 2 * r, tl.sum(sum_g, axis=1), mask=r < rows)
    tl.store(partial_ptr + 2 * r + 1, tl.sum(sum_gx, axis=1), mask=r < rows)


def _rows_grid(rows: int, spatial: int) -> tuple[int, int, int]:
    block_s = min(triton.next_power_of_2(max(spatial, 1)), BLOCK)
    per = max(1, BLOCK // block_s)
    return triton.cdiv(rows, per), per, block_s


def actnorm(x, log_scale, bias, inverse):
    """fastgen_triton::actnorm (declared in fastgen/ops/glow.py)."""
    out = torch.empty_like(x)
    batch, channels = x.shape[0], x.shape[1]
    log_det = torch.empty(batch, dtype=torch.float32, device=x.device)
    spatial = math.prod(x.shape[2:])
    if x.numel():
        programs, per, block_s = _rows_grid(batch * channels, spatial)
        actnorm_kernel[(programs,)](x, log_scale, bias, out, log_det, batch * channels, channels, spatial,
                                    INVERSE=inverse, ROWS=per, BLOCK_S=block_s,
                                    BLOCK_C=triton.next_power_of_2(channels))
    elif batch:
        log_det.fill_(0.0)
    return out, log_det


def finish_actnorm_backward(partial, grad_log_det, log_scale, spatial, inverse):
    """(grad_log_scale, grad_bias) from the per-row (sum g, sum g x) of the backward kernel: summed over the batch,
    then the rule (fastgen/reference/glow.py). csrc/glow.cpp does the same (with ATen on CUDA, in a loop on the CPU)."""
    sums = partial.sum(0)
    g_ld = spatial * grad_log_det.sum()
    if inverse:
        return -sums[:, 1] - g_ld, -(-log_scale).exp() * sums[:, 0]
    return log_scale.exp() * sums[:, 1] + g_ld, sums[:, 0].contiguous()


def actnorm_backward(grad_out, grad_log_det, x, log_scale, inverse):
    """fastgen_triton::actnorm_backward (declared in fastgen/ops/glow.py)."""
    grad_in = torch.empty_like(grad_out)
    batch, channels = x.shape[0], x.shape[1]
    spatial = math.prod(x.shape[2:])
    partial = torch.zeros(batch, channels, 2, dtype=torch.float32, device=x.device)
    if x.numel():
        programs, per, block_s = _rows_grid(batch * channels, spatial)
        actnorm_backward_kernel[(programs,)](grad_out, x, log_scale, grad_in, partial, batch * channels, channels,
                                             spatial, INVERSE=inverse, ROWS=per, BLOCK_S=block_s)
    grad_log_scale, grad_bias = finish_actnorm_backward(partial, grad_log_det, log_scale, spatial, inverse)
    return grad_in, grad_log_scale, grad_bias


# The 1x1 convolution: out[b] = W x[b], x[b] a (C, S) matrix, in tiles of BLOCK_O output channels by BLOCK_P
# positions, BLOCK_K input channels at a time (float32 products: input_precision "ieee", no TF32).


@triton.jit
def channel_product_kernel(
    w_ptr, x_ptr, out_ptr, channels, spatial, w_row, w_col,
    BLOCK_O: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr,
):  # fmt: skip
    """out[b, o, p] = sum_k W[o, k] x[b, k, p], W[o, k] at w_ptr + o w_row + k w_col (W^T: swapped strides)."""
    b = tl.program_id(0).to(tl.int64)
    o = tl.program_id(1) * BLOCK_O + tl.arange(0, BLOCK_O)
    p = tl.program_id(2).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    acc = tl.zeros((BLOCK_O, BLOCK_P), dtype=tl.float32)
    for k0 in range(0, channels, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        w = tl.load(w_ptr + o[:, None] * w_row + k[None, :] * w_col,
                    mask=(o[:, None] < channels) & (k[None, :] < channels), other=0.0)
        x = tl.load(x_ptr + (b * channels + k[:, None]) * spatial + p[None, :],
                    mask=(k[:, None] < channels) & (p[None, :] < spatial), other=0.0).to(tl.float32)
        acc += tl.dot(w, x, input_precision="ieee")
    tl.store(out_ptr + (b * channels + o[:, None]) * spatial + p[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=(o[:, None] < channels) & (p[None, :] < spatial))


@triton.jit
def channel_outer_kernel(
    g_ptr, x_ptr, partial_ptr, channels, spatial,
    BLOCK_O: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr,
):  # fmt: skip
    """partial[b, o, k] = sum_p g[b, o, p] x[b, k, p]."""
    b = tl.program_id(0).to(tl.int64)
    o = tl.program_id(1) * BLOCK_O + tl.arange(0, BLOCK_O)
    k = tl.program_id(2) * BLOCK_K + tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_O, BLOCK_K), dtype=tl.float32)
    for p0 in range(0, spatial, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)
        g = tl.load(g_ptr + (b * channels + o[:, None]) * spatial + p[None, :],
                    mask=(o[:, None] < channels) & (p[None, :] < spatial), other=0.0).to(tl.float32)
        x = tl.load(x_ptr + (b * channels + k[None, :]) * spatial + p[:, None],
                    mask=(k[None, :] < channels) & (p[:, None] < spatial), other=0.0).to(tl.float32)
        acc += tl.dot(g, x, input_precision="ieee")
    tl.store(partial_ptr + (b * channels + o[:, None]) * channels + k[None, :], acc,
             mask=(o[:, None] < channels) & (k[None, :] < channels))


def _tiles(channels: int, spatial: int) -> tuple[int, int, int]:
    """(BLOCK_O = BLOCK_K, BLOCK_P): at least 16 (tl.dot's minimum), at most 32 channels by 64 positions."""
    block_c = min(max(16, triton.next_power_of_2(channels)), 32)
    return block_c, block_c, min(max(16, triton.next_power_of_2(max(spatial, 1))), 64)


def invconv1x1(x, weight, log_s):
    """fastgen_triton::invconv1x1 (declared in fastgen/ops/glow.py)."""
    out = torch.empty_like(x)
    batch, channels = x.shape[0], x.shape[1]
    spatial = math.prod(x.shape[2:])
    if x.numel():
        bo, bk, bp = _tiles(channels, spatial)
        grid = (batch, triton.cdiv(channels, bo), triton.cdiv(spatial, bp))
        channel_product_kernel[grid](weight, x, out, channels, spatial, channels, 1, BLOCK_O=bo, BLOCK_K=bk,
                                     BLOCK_P=bp)
    log_det = (spatial * log_s.sum()).expand(batch).contiguous()
    return out, log_det


def invconv1x1_backward(grad_out, x, weight):
    """fastgen_triton::invconv1x1_backward (declared in fastgen/ops/glow.py)."""
    grad_in = torch.empty_like(grad_out)
    batch, channels = x.shape[0], x.shape[1]
    spatial = math.prod(x.shape[2:])
    partial = torch.zeros(batch, channels, channels, dtype=torch.float32, device=x.device)
    if x.numel():
        bo, bk, bp = _tiles(channels, spatial)
        grid = (batch, triton.cdiv(channels, bo), triton.cdiv(spatial, bp))
        channel_product_kernel[grid](weight, grad_out, grad_in, channels, spatial, 1, channels, BLOCK_O=bo,
                                     BLOCK_K=bk, BLOCK_P=bp)
        grid = (batch, triton.cdiv(channels, bo), triton.cdiv(channels, bk))
        channel_outer_kernel[grid](grad_out, x, partial, channels, spatial, BLOCK_O=bo, BLOCK_K=bk, BLOCK_P=bp)
    return grad_in, partial.sum(0)


@triton.jit
def squeeze_kernel(x_ptr, out_ptr, numel, channels, height, width, INVERSE: tl.constexpr, BLOCK_N: tl.constexpr):
    """Each program writes BLOCK_N elements of the squeezed tensor (B, 4 channels, height, width) from the
    unsqueezed one (B, channels, 2 height, 2 width), or back (INVERSE)."""
    i = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = i < numel
    v = i % width
    u = (i // width) % height
    q = (i // (width * height)) % (4 * channels)  # 4 c + 2 di + dj
    b = i // (width * height * 4 * channels)
    c, di, dj = q // 4, (q // 2) % 2, q % 2
    j = ((b * channels + c) * 2 * height + 2 * u + di) * 2 * width + 2 * v + dj
    if INVERSE:
        tl.store(out_ptr + j, tl.load(x_ptr + i, mask=mask), mask=mask)
    else:
        tl.store(out_ptr + i, tl.load(x_ptr + j, mask=mask), mask=mask)


def squeeze2d(x, inverse):
    """fastgen_triton::squeeze2d (declared in fastgen/ops/glow.py)."""
    b, c, h, w = x.shape
    if inverse:
        out = x.new_empty((b, c // 4, 2 * h, 2 * w))
        channels, height, width = c // 4, h, w
    else:
        out = x.new_empty((b, 4 * c, h // 2, w // 2))
        channels, height, width = c, h // 2, w // 2
    if x.numel():
        squeeze_kernel[(triton.cdiv(x.numel(), BLOCK),)](x, out, x.numel(), channels, height, width,
                                                         INVERSE=inverse, BLOCK_N=BLOCK)
    return out
