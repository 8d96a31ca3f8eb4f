"""Triton: fill a float32 buffer from fastgen's Philox stream (tl.rand / tl.randn
follow the construction of fastgen/reference/rng.py)."""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

INTERPRETED = triton.knobs.runtime.interpret if hasattr(triton, "knobs") else False
# NOTE: the interpreter pays per program, not per element: big blocks keep CPU tests short.
BLOCK = 16384 if INTERPRETED else 1024


@triton.jit
def load_rng(seed, offset, rng_state_ptr, HAS_STATE: tl.constexpr):
    """(seed, offset) of a call: the arguments, or state[0] and state[1] + offset."""
    if HAS_STATE:
        seed = tl.load(rng_state_ptr)
        offset = tl.load(rng_state_ptr + 1) + offset
    return seed, offset


@triton.jit
def philox_fill_kernel(
    out_ptr,  # (n,) float32
    n,  # number of elements
    seed,  # 63-bit seed
    offset,  # first counter
    rng_state_ptr,  # (2,) int64 (seed, offset) when HAS_STATE
    HAS_STATE: tl.constexpr,
    NORMAL: tl.constexpr,  # normals instead of uniforms
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    idx = pid * BLOCK + tl.arange(0, BLOCK)
    mask = idx < n
    seed, offset = load_rng(seed, offset, rng_state_ptr, HAS_STATE)
    if NORMAL:
        values = tl.randn(seed, offset + idx)
    else:
        values = tl.rand(seed, offset + idx)
    tl.store(out_ptr + idx, values, mask=mask)


@torch.library.custom_op("fastgen_triton::philox_fill_", mutates_args=("out",))
def philox_fill_(out: torch.Tensor, seed: int, offset: int, rng_state: Optional[torch.Tensor], normal: bool) -> None:
    n = out.numel()
    if n == 0:
        return
    state = rng_state if rng_state is not None else out
    grid = (triton.cdiv(n, BLOCK),)
    philox_fill_kernel[grid](out, n, seed, offset, state, HAS_STATE=rng_state is not None, NORMAL=normal, BLOCK=BLOCK)


@philox_fill_.register_fake
def _(out, seed, offset, rng_state, normal):
    return None
