"""Tile helpers shared by the Triton kernels (not a loop)."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def row_tile(rows, start, batch, dim, BLOCK_D: tl.constexpr):
    """The (ROWS, BLOCK_D) tile of columns start.. of samples `rows` in a contiguous (batch, dim) tensor: its mask
    and its flat element indices."""
    cols = start + tl.arange(0, BLOCK_D)
    mask = (rows[:, None] < batch) & (cols[None, :] < dim)
    return mask, rows[:, None] * dim + cols[None, :]
