"""Triton twin of kernels/hutchinson.cu: out_b = sum_i vjp[b, i] eps(offset + b D + i), eps the Rademacher sign
of the stream's uniform (+1 where u >= 1/2) or its normal; each program takes ROWS samples, BLOCK_D at a time."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._tiles import row_tile
from .rng import BLOCK, normal_at, uniform_at


@triton.jit
def hutchinson_dot_kernel(
    vjp_ptr,  # (B, D) eps^T J per sample
    out_ptr,  # (B,) float32 output
    batch,  # B
    dim,  # D: elements per sample
    seed,  # 63-bit seed
    offset,  # stream position of element 0
    RADEMACHER: tl.constexpr,  # signs instead of normals
    ROWS: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    total = tl.zeros((ROWS, BLOCK_D), dtype=tl.float32)
    for start in range(0, dim, BLOCK_D):
        mask, idx = row_tile(rows, start, batch, dim, BLOCK_D)
        v = tl.load(vjp_ptr + idx, mask=mask, other=0.0).to(tl.float32)
        if RADEMACHER:
            eps = tl.where(uniform_at(seed, offset + idx) < 0.5, -1.0, 1.0)
        else:
            eps = normal_at(seed, offset + idx)
        total += tl.where(mask, v * eps, 0.0)
    tl.store(out_ptr + rows, tl.sum(total, axis=1), mask=rows < batch)


def hutchinson_dot(vjp, seed, offset, rademacher):
    """fastgen_triton::hutchinson_dot (declared in fastgen/ops/hutchinson.py)."""
    batch = vjp.shape[0]
    out = torch.empty(batch, dtype=torch.float32, device=vjp.device)
    dim = vjp.numel() // batch if batch else 0
    if batch:
        block_d = min(triton.next_power_of_2(max(dim, 1)), BLOCK)
        rows = max(1, BLOCK // block_d)
        hutchinson_dot_kernel[(triton.cdiv(batch, rows),)](vjp, out, batch, dim, seed, offset, RADEMACHER=rademacher,
                                                           ROWS=rows, BLOCK_D=block_d)
    return out
