"""Triton twin of kernels/vae.cu: z = mean + exp(log_std) eps (eps the stream's normals at offset + i) and
log_prob_b = sum_i (-eps_i^2 / 2 - log_std_i) - D log(2 pi) / 2; each program takes ROWS samples, BLOCK_D
elements of each at a time."""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._tiles import row_tile
from .rng import BLOCK, normal_at


@triton.jit
def gaussian_rsample_kernel(
    mean_ptr,  # (B, D) posterior mean
    log_std_ptr,  # (B, D) posterior log standard deviation, mean's dtype
    z_ptr,  # (B, D) output, mean's dtype
    log_prob_ptr,  # (B,) float32 output
    batch,  # B
    dim,  # D: elements per sample
    seed,  # 63-bit seed
    offset,  # stream position of element 0
    log_norm,  # D log(2 pi) / 2
    ROWS: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    total = tl.zeros((ROWS, BLOCK_D), dtype=tl.float32)
    for start in range(0, dim, BLOCK_D):
        mask, idx = row_tile(rows, start, batch, dim, BLOCK_D)
        mean = tl.load(mean_ptr + idx, mask=mask, other=0.0).to(tl.float32)
        log_std = tl.load(log_std_ptr + idx, mask=mask, other=0.0).to(tl.float32)
        eps = normal_at(seed, offset + idx)
        tl.store(z_ptr + idx, (mean + tl.exp(log_std) * eps).to(z_ptr.dtype.element_ty), mask=mask)
        total += tl.where(mask, -0.5 * eps * eps - log_std, 0.0)
    tl.store(log_prob_ptr + rows, tl.sum(total, axis=1) - log_norm, mask=rows < batch)


def gaussian_rsample(mean, log_std, seed, offset, path_derivative):
    """fastgen_triton::gaussian_rsample (declared in fastgen/ops/vae.py)."""
    z = torch.empty_like(mean)
    batch = mean.shape[0]
    log_prob = torch.empty(batch, dtype=torch.float32, device=mean.device)
    dim = mean.numel() // batch if batch else 0
    if batch:
        block_d = min(triton.next_power_of_2(max(dim, 1)), BLOCK)
        rows = max(1, BLOCK // block_d)
        gaussian_rsample_kernel[(triton.cdiv(batch, rows),)](
            mean, log_std, z, log_prob, batch, dim, seed, offset, 0.5 * dim * math.log(2 * math.pi), ROWS=rows,
            BLOCK_D=block_d)
    return z, log_prob
