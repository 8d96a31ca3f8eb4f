"""Triton twins of kernels/hmc.cu: the leapfrog pass p <- p + kick eps_b grad_log_prob, then (drift)
q <- q + eps_b M^-1 p, in float32 arithmetic; and whole HMC chains on a diagonal Gaussian mixture (a tile of chains
per program, the state in registers; the rule: fastgen/reference/hmc.py gmm_hmc_)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..core.rng import hmc_layout
from .langevin import gmm_log_prob_grad
from .rng import BLOCK, INTERPRETED, normal_at, uniform_at

GMM_CHAINS = 64 if INTERPRETED else 128  # chains per program, at most GMM_TILE // BLOCK_D
GMM_TILE = 1024


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


@triton.jit
def gmm_hmc_kernel(
    q_ptr,  # (B, D) updated in place
    means_ptr, inv_vars_ptr, log_coef_ptr,  # (K, D), (K, D), (K,)
    steps_ptr,  # (B,)
    accepted_ptr,  # (B,) out
    divergences_ptr,  # (B,) int32 out
    chains, dim, components, n_transitions, n_leapfrog,
    seed, offset, stride, uniforms,  # stream: transition t at offset + t * stride; accept uniforms at + uniforms
    BLOCK_B: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    rows = pid * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.arange(0, BLOCK_D)
    row_mask = rows < chains
    col_mask = cols < dim
    mask = row_mask[:, None] & col_mask[None, :]
    element = rows[:, None] * dim + cols[None, :]
    x = tl.load(q_ptr + element, mask=mask, other=0.0).to(tl.float32)
    eps = tl.load(steps_ptr + rows, mask=row_mask, other=0.0)[:, None]
    log_p, grad = gmm_log_prob_grad(x, means_ptr, inv_vars_ptr, log_coef_ptr, cols, col_mask, dim, components,
                                     BLOCK_B, BLOCK_D)
    accepted = tl.zeros([BLOCK_B], dtype=tl.float32)
    divergences = tl.zeros([BLOCK_B], dtype=tl.int32)
    counter = offset + element  # int64 momentum positions, advanced by stride per transition
    u_counter = offset + uniforms + rows  # int64 accept positions
    for _ in range(n_transitions):
        p = tl.where(mask, normal_at(seed, counter), 0.0)
        kinetic = 0.5 * tl.sum(p * p, axis=1)
        x1 = x
        p1 = p + 0.5 * eps * grad
        log_p1 = log_p
        grad1 = grad
        for step in range(n_leapfrog):
            x1 = x1 + eps * p1
            log_p1, grad1 = gmm_log_prob_grad(x1, means_ptr, inv_vars_ptr, log_coef_ptr, cols, col_mask, dim,
                                               components, BLOCK_B, BLOCK_D)
            kick = tl.where(step == n_leapfrog - 1, 0.5, 1.0)
            p1 = p1 + kick * eps * grad1
        error = (0.5 * tl.sum(p1 * p1, axis=1) - log_p1) - (kinetic - log_p)
        divergent = (error != error) | (tl.abs(error) == float("inf")) | (error > 1000.0)
        prob = tl.where(divergent, 0.0, tl.exp(-tl.maximum(error, 0.0)))
        accepted += prob
        divergences += divergent.to(tl.int32)
        take = uniform_at(seed, u_counter) < prob
        x = tl.where(take[:, None], x1, x)
        grad = tl.where(take[:, None], grad1, grad)
        log_p = tl.where(take, log_p1, log_p)
        counter += stride
        u_counter += stride
    tl.store(q_ptr + element, x.to(q_ptr.dtype.element_ty), mask=mask)
    tl.store(accepted_ptr + rows, accepted, mask=row_mask)
    tl.store(divergences_ptr + rows, divergences, mask=row_mask)


def gmm_hmc_(q, means, inv_vars, log_coef, step_sizes, n_transitions, n_leapfrog, seed, offset):
    """fastgen_triton::gmm_hmc_ (declared in fastgen/ops/hmc.py)."""
    chains, dim = q.shape
    accepted = torch.zeros(chains, device=q.device, dtype=torch.float32)
    divergences = torch.zeros(chains, device=q.device, dtype=torch.int32)
    if chains == 0 or n_transitions == 0:
        return accepted, divergences
    stride, uniforms = hmc_layout(q.numel(), chains)
    block_d = triton.next_power_of_2(dim)
    block_b = max(1, min(GMM_CHAINS, GMM_TILE // block_d))
    gmm_hmc_kernel[(triton.cdiv(chains, block_b),)](
        q, means, inv_vars, log_coef, step_sizes, accepted, divergences, chains, dim, means.shape[0], n_transitions,
        n_leapfrog, seed, offset, stride, uniforms,
        BLOCK_B=block_b, BLOCK_D=block_d,
    )  # fmt: skip
    return accepted, divergences
