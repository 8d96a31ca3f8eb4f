"""Triton: fastgen's Philox stream (the construction of fastgen/reference/rng.py:
value n is element n % 4 of tl.rand4x / tl.randn4x at counter n // 4) and a
kernel filling a float32 buffer from it."""

from __future__ import annotations

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
def uniform_at(seed, n):
    """Uniforms at int64 stream positions n: lane n % 4 of tl.randint4x at counter n // 4."""
    l0, l1, l2, l3 = tl.randint4x(seed, (n >> 2) & 0x3FFFFFFFFFFFFFFF)  # uint64 counter: logical shift
    upper = (n & 2) != 0
    lane = tl.where((n & 1) != 0, tl.where(upper, l3, l1), tl.where(upper, l2, l0))
    return tl.uint_to_uniform_float(lane)


@triton.jit
def normal_at(seed, n):
    """Normals at int64 stream positions n: Box-Muller of counter n // 4's lanes (0, 1) or (2, 3); cos at even n,
    sin at odd."""
    l0, l1, l2, l3 = tl.randint4x(seed, (n >> 2) & 0x3FFFFFFFFFFFFFFF)  # uint64 counter: logical shift
    upper = (n & 2) != 0
    u1 = tl.uint_to_uniform_float(tl.where(upper, l2, l0))
    u2 = tl.uint_to_uniform_float(tl.where(upper, l3, l1))
    z_cos, z_sin = tl.pair_uniform_to_normal(u1, u2)
    return tl.where((n & 1) != 0, z_sin, z_cos)


@triton.jit
def philox_fill_kernel(
    out_ptr,  # (n,) float32
    n,  # number of elements
    seed,  # 63-bit seed
    offset,  # first stream position
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
        values = normal_at(seed, offset + idx)
    else:
        values = uniform_at(seed, offset + idx)
    tl.store(out_ptr + idx, values, mask=mask)


def philox_fill_(out, seed, offset, rng_state, normal):
    """fastgen_triton::philox_fill_ (declared in fastgen/ops/rng.py)."""
    n = out.numel()
    if n == 0:
        return
    state = rng_state if rng_state is not None else out
    grid = (triton.cdiv(n, BLOCK),)
    philox_fill_kernel[grid](out, n, seed, offset, state, HAS_STATE=rng_state is not None, NORMAL=normal, BLOCK=BLOCK)

