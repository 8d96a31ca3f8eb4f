"""Triton twin of kernels/flow_matching.cu: x_t = alpha_b x0 + sigma_b eps and target = alpha'_b x0 + sigma'_b eps,
eps_bj the stream's normal at offset + p_b D + j (p the pairing or the identity); each program takes ROWS samples,
BLOCK_D elements of each at a time."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._tiles import row_tile
from .rng import BLOCK, normal_at


@triton.jit
def cfm_interpolate_kernel(
    x0_ptr,  # (B, D) data
    coef_ptr,  # (B, 4) float32: alpha, sigma, alpha', sigma'
    pairing_ptr,  # (B,) int64 noise rows when HAS_PAIRING
    x_t_ptr,  # (B, D) output, x0's dtype
    target_ptr,  # (B, D) output, x0's dtype
    batch,  # B
    dim,  # D: elements per sample
    seed,  # 63-bit seed
    offset,  # stream position of the noise of row 0, element 0
    HAS_PAIRING: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    live = rows < batch
    alpha = tl.load(coef_ptr + rows * 4, mask=live, other=0.0)[:, None]
    sigma = tl.load(coef_ptr + rows * 4 + 1, mask=live, other=0.0)[:, None]
    d_alpha = tl.load(coef_ptr + rows * 4 + 2, mask=live, other=0.0)[:, None]
    d_sigma = tl.load(coef_ptr + rows * 4 + 3, mask=live, other=0.0)[:, None]
    if HAS_PAIRING:
        source = tl.load(pairing_ptr + rows, mask=live, other=0)
    else:
        source = rows
    for start in range(0, dim, BLOCK_D):
        mask, idx = row_tile(rows, start, batch, dim, BLOCK_D)
        eps = normal_at(seed, offset + source[:, None] * dim + start + tl.arange(0, BLOCK_D)[None, :])
        x = tl.load(x0_ptr + idx, mask=mask, other=0.0).to(tl.float32)
        tl.store(x_t_ptr + idx, (alpha * x + sigma * eps).to(x_t_ptr.dtype.element_ty), mask=mask)
        tl.store(target_ptr + idx, (d_alpha * x + d_sigma * eps).to(target_ptr.dtype.element_ty), mask=mask)


def cfm_interpolate(x0, coef, pairing, seed, offset):
    """fastgen_triton::cfm_interpolate (declared in fastgen/ops/flow_matching.py)."""
    x_t, target = torch.empty_like(x0), torch.empty_like(x0)
    batch = x0.shape[0]
    dim = x0.numel() // batch if batch else 0
    if batch and dim:
        block_d = min(triton.next_power_of_2(dim), BLOCK)
        rows = max(1, BLOCK // block_d)
        cfm_interpolate_kernel[(triton.cdiv(batch, rows),)](
            x0, coef, pairing if pairing is not None else coef, x_t, target, batch, dim, seed, offset,
            HAS_PAIRING=pairing is not None, ROWS=rows, BLOCK_D=block_d)
    return x_t, target
