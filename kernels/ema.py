"""Triton twin of kernels/ema.cu: averages[t] <- averages[t] + weight (values[t] - averages[t]), float32
arithmetic. One launch per tensor pair (a Triton kernel takes no table of pointers portably)."""

from __future__ import annotations

import triton
import triton.language as tl

from .rng import BLOCK


@triton.jit
def ema_kernel(
    average_ptr,  # (n,) updated in place
    value_ptr,  # (n,) same dtype
    n,  # elements
    weight,  # 1 - decay
    BLOCK: tl.constexpr,
):
    idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = idx < n
    a = tl.load(average_ptr + idx, mask=mask, other=0.0).to(tl.float32)
    v = tl.load(value_ptr + idx, mask=mask, other=0.0).to(tl.float32)
    tl.store(average_ptr + idx, (a + weight * (v - a)).to(average_ptr.dtype.element_ty), mask=mask)


def ema_update_(averages, values, weight):
    """fastgen_triton::ema_update_ (declared in fastgen/ops/ema.py)."""
    for average, value in zip(averages, values, strict=True):
        n = average.numel()
        if n:
            ema_kernel[(triton.cdiv(n, BLOCK),)](average, value, n, weight, BLOCK=BLOCK)
