"""Triton twin of kernels/hmc.cu: p <- p + kick eps_b grad_log_prob, then (drift) q <- q + eps_b M^-1 p, in float32
arithmetic."""

from __future__ import annotations

import triton
import triton.language as tl

from .rng import BLOCK


@triton.jit
def leapfrog_kernel(
    q_ptr,  # (B * S,) updated in place
    p_ptr,  # (B * S,) updated in place
    grad_ptr,  # (B * S,)
    step_ptr,  # (B,) float32
    inverse_mass_ptr,  # (S,) or (B * S,) float32, or a dummy
    n,  # elements
    size,  # elements per chain
    kick,
    MASS_MODE: tl.constexpr,  # 0 none, 1 shared (S,), 2 per element (B * S,)
    DRIFT: tl.constexpr,
    BLOCK: tl.constexpr,
):
    idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = idx < n
    eps = tl.load(step_ptr + idx // size, mask=mask, other=0.0)
    p = tl.load(p_ptr + idx, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(grad_ptr + idx, mask=mask, other=0.0).to(tl.float32)
    p = p + kick * eps * g
    tl.store(p_ptr + idx, p.to(p_ptr.dtype.element_ty), mask=mask)
    if DRIFT:
        q = tl.load(q_ptr + idx, mask=mask, other=0.0).to(tl.float32)
        if MASS_MODE == 1:
            p = p * tl.load(inverse_mass_ptr + idx % size, mask=mask, other=0.0)
        if MASS_MODE == 2:
            p = p * tl.load(inverse_mass_ptr + idx, mask=mask, other=0.0)
        tl.store(q_ptr + idx, (q + eps * p).to(q_ptr.dtype.element_ty), mask=mask)


def leapfrog_(q, p, grad_log_prob, step_sizes, inverse_mass, kick, drift):
    """fastgen_triton::leapfrog_ (declared in fastgen/ops/hmc.py)."""
    n = q.numel()
    if n == 0:
        return
    size = n // q.shape[0]
    mode = 0 if inverse_mass is None else 1 if inverse_mass.numel() == size else 2
    leapfrog_kernel[(triton.cdiv(n, BLOCK),)](q, p, grad_log_prob, step_sizes, inverse_mass if mode else step_sizes,
                                              n, size, kick, MASS_MODE=mode, DRIFT=drift, BLOCK=BLOCK)
