"""Triton twins of kernels/langevin.cu: ULA step (also the MALA proposal), MALA
accept/reject, and many ULA steps on a Gaussian mixture with the state in
registers. Arithmetic is float32; noise from the shared stream (kernels/rng.py).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .rng import BLOCK, INTERPRETED, load_rng, normal_at, uniform_at

CHAIN_BLOCK = 1024  # elements per program in per-chain reductions
# Chains per program in the mixture kernel: at most GMM_CHAINS, and a tile of at most GMM_TILE coordinates, so a
# 64-D mixture on 4,096 chains still spreads over 256 programs rather than 32.
GMM_CHAINS = 64 if INTERPRETED else 128
GMM_TILE = 1024


@triton.jit
def clip_scale_kernel(
    score_ptr,  # (B, D)
    scale_ptr,  # (B,) out: min(1, grad_clip / (|s_b| + 1e-6))
    chain_size,  # D
    grad_clip,  # max norm
    BLOCK: tl.constexpr,
):
    chain = tl.program_id(0).to(tl.int64)
    row = score_ptr + chain * chain_size
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, chain_size, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        s = tl.load(row + cols, mask=cols < chain_size, other=0.0).to(tl.float32)
        acc += s * s
    norm = tl.sqrt(tl.sum(acc, axis=0))
    tl.store(scale_ptr + chain, tl.minimum(1.0, grad_clip / (norm + 1e-6)))


@triton.jit
def ula_kernel(
    x_ptr,  # (numel,) state in
    y_ptr,  # (numel,) state out (may be x_ptr)
    score_ptr,  # (numel,)
    numel,  # B * D
    chain_size,  # D
    step_size,  # scalar h
    steps_ptr,  # (B,) per-chain h when HAS_STEPS
    clip_ptr,  # (B,) per-chain score scale when HAS_CLIP
    clamp_lo,
    clamp_hi,
    seed,
    offset,
    rng_state_ptr,  # (2,) int64 when HAS_STATE
    HAS_STEPS: tl.constexpr,
    HAS_CLIP: tl.constexpr,
    HAS_CLAMP: tl.constexpr,
    HAS_STATE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    idx = pid * BLOCK + tl.arange(0, BLOCK)
    mask = idx < numel
    seed, offset = load_rng(seed, offset, rng_state_ptr, HAS_STATE)
    x = tl.load(x_ptr + idx, mask=mask, other=0.0).to(tl.float32)
    s = tl.load(score_ptr + idx, mask=mask, other=0.0).to(tl.float32)
    chain = idx // chain_size
    h = tl.full([BLOCK], step_size, tl.float32)
    if HAS_STEPS:
        h = tl.load(steps_ptr + chain, mask=mask, other=1.0)
    drift = h
    if HAS_CLIP:
        drift = h * tl.load(clip_ptr + chain, mask=mask, other=1.0)
    value = x + drift * s + tl.sqrt(2.0 * h) * normal_at(seed, offset + idx)
    if HAS_CLAMP:
        value = tl.minimum(tl.maximum(value, clamp_lo), clamp_hi)
    tl.store(y_ptr + idx, value.to(y_ptr.dtype.element_ty), mask=mask)


def _ula(x, y, score, step_size, step_sizes, seed, offset, rng_state, *, clamp_lo=None, clamp_hi=None,
         grad_clip=None) -> None:
    numel = x.numel()
    if numel == 0:
        return
    chains = x.shape[0]
    chain_size = max(1, numel // chains)
    score = score.contiguous()
    clip = None
    if grad_clip is not None:
        clip = torch.empty(chains, dtype=torch.float32, device=x.device)
        clip_scale_kernel[(chains,)](score, clip, chain_size, grad_clip, BLOCK=CHAIN_BLOCK)
    has_clamp = clamp_lo is not None or clamp_hi is not None
    ula_kernel[(triton.cdiv(numel, BLOCK),)](
        x, y, score, numel, chain_size, step_size,
        step_sizes if step_sizes is not None else x,
        clip if clip is not None else x,
        float("-inf") if clamp_lo is None else clamp_lo,
        float("inf") if clamp_hi is None else clamp_hi,
        seed, offset,
        rng_state if rng_state is not None else x,
        HAS_STEPS=step_sizes is not None, HAS_CLIP=clip is not None, HAS_CLAMP=has_clamp,
        HAS_STATE=rng_state is not None, BLOCK=BLOCK,
    )  # fmt: skip


def ula_step_(x, score, step_size, step_sizes, seed, offset, rng_state, clamp_lo, clamp_hi, grad_clip):
    """fastgen_triton::ula_step_ (declared in fastgen/ops/langevin.py)."""
    _ula(x, x, score, step_size, step_sizes, seed, offset, rng_state, clamp_lo=clamp_lo, clamp_hi=clamp_hi,
         grad_clip=grad_clip)



def mala_propose(x, grad_log_prob, step_size, step_sizes, seed, offset, rng_state):
    """fastgen_triton::mala_propose (declared in fastgen/ops/langevin.py)."""
    y = torch.empty_like(x)
    _ula(x, y, grad_log_prob, step_size, step_sizes, seed, offset, rng_state)
    return y



@triton.jit
def mala_accept_kernel(
    x_ptr,  # (B, D) state, updated where accepted
    log_prob_ptr,  # (B,) float32, updated where accepted
    grad_ptr,  # (B, D), updated where accepted
    y_ptr,  # (B, D) proposal
    log_prob_y_ptr,  # (B,) float32
    grad_y_ptr,  # (B, D)
    accepted_ptr,  # (B,) bool out
    prob_ptr,  # (B,) float32 out: min(1, alpha)
    chain_size,  # D
    step_size,  # scalar h
    steps_ptr,  # (B,) when HAS_STEPS
    seed,
    offset,
    rng_state_ptr,
    HAS_STEPS: tl.constexpr,
    HAS_STATE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    chain = tl.program_id(0).to(tl.int64)
    one = tl.arange(0, 1)
    row = chain * chain_size
    h = tl.full([1], step_size, tl.float32)
    if HAS_STEPS:
        h = tl.load(steps_ptr + chain + one)
    forward = tl.zeros([BLOCK], dtype=tl.float32)
    backward = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, chain_size, BLOCK):
        cols = row + start + tl.arange(0, BLOCK)
        m = start + tl.arange(0, BLOCK) < chain_size
        x = tl.load(x_ptr + cols, mask=m, other=0.0).to(tl.float32)
        y = tl.load(y_ptr + cols, mask=m, other=0.0).to(tl.float32)
        g = tl.load(grad_ptr + cols, mask=m, other=0.0).to(tl.float32)
        gy = tl.load(grad_y_ptr + cols, mask=m, other=0.0).to(tl.float32)
        f = y - x - h * g
        b = x - y - h * gy
        forward += f * f
        backward += b * b
    lp = tl.load(log_prob_ptr + chain + one)
    lpy = tl.load(log_prob_y_ptr + chain + one)
    log_alpha = lpy - lp + (tl.sum(forward, axis=0) - tl.sum(backward, axis=0)) / (4.0 * h)
    prob = tl.where(log_alpha >= 0.0, 1.0, tl.where(log_alpha < 0.0, tl.exp(tl.minimum(log_alpha, 0.0)), 0.0))
    seed, offset = load_rng(seed, offset, rng_state_ptr, HAS_STATE)
    accept = uniform_at(seed, offset + chain + one) < prob
    tl.store(prob_ptr + chain + one, prob)
    tl.store(accepted_ptr + chain + one, accept)
    tl.store(log_prob_ptr + chain + one, lpy, mask=accept)
    for start in range(0, chain_size, BLOCK):
        cols = row + start + tl.arange(0, BLOCK)
        m = (start + tl.arange(0, BLOCK) < chain_size) & accept
        tl.store(x_ptr + cols, tl.load(y_ptr + cols, mask=m), mask=m)
        tl.store(grad_ptr + cols, tl.load(grad_y_ptr + cols, mask=m), mask=m)


def mala_accept_(
    x, log_prob, grad_log_prob, y, log_prob_y, grad_log_prob_y, step_size, step_sizes, seed, offset, rng_state,
):
    """fastgen_triton::mala_accept_ (declared in fastgen/ops/langevin.py)."""
    chains = x.shape[0]
    accepted = torch.empty(chains, dtype=torch.bool, device=x.device)
    prob = torch.empty(chains, dtype=torch.float32, device=x.device)
    if chains == 0:
        return accepted, prob
    mala_accept_kernel[(chains,)](
        x, log_prob, grad_log_prob, y, log_prob_y, grad_log_prob_y, accepted, prob,
        x.numel() // chains, step_size,
        step_sizes if step_sizes is not None else log_prob,
        seed, offset,
        rng_state if rng_state is not None else log_prob,
        HAS_STEPS=step_sizes is not None, HAS_STATE=rng_state is not None, BLOCK=CHAIN_BLOCK,
    )  # fmt: skip
    return accepted, prob



@triton.jit
def gmm_log_prob_grad(x, means_ptr, inv_vars_ptr, log_coef_ptr, cols, col_mask, dim, components,
                       BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr):
    """(log p, grad log p) of a tile of states x (BLOCK_B, BLOCK_D), an online softmax over the components."""
    running_max = tl.full([BLOCK_B], float("-inf"), tl.float32)
    total = tl.zeros([BLOCK_B], dtype=tl.float32)
    acc = tl.zeros([BLOCK_B, BLOCK_D], dtype=tl.float32)
    for k in range(components):
        mu = tl.load(means_ptr + k * dim + cols, mask=col_mask, other=0.0)
        iv = tl.load(inv_vars_ptr + k * dim + cols, mask=col_mask, other=0.0)
        diff = mu[None, :] - x
        logit = tl.load(log_coef_ptr + k) - 0.5 * tl.sum(diff * diff * iv[None, :], axis=1)
        new_max = tl.maximum(running_max, logit)
        rescale = tl.exp(running_max - new_max)
        weight = tl.exp(logit - new_max)
        total = total * rescale + weight
        acc = acc * rescale[:, None] + weight[:, None] * diff * iv[None, :]
        running_max = new_max
    return running_max + tl.log(total), acc / total[:, None]


@triton.jit
def gmm_langevin_kernel(
    x_ptr,  # (B, D) state, updated in place
    means_ptr,  # (K, D)
    inv_vars_ptr,  # (K, D) 1 / sigma^2
    log_coef_ptr,  # (K,) log w_k - sum_d log sigma_kd
    chains,  # B
    dim,  # D
    numel,  # B * D
    components,  # K
    n_steps,
    step_size,  # scalar h
    steps_ptr,  # (B,) when HAS_STEPS
    seed,
    offset,
    rng_state_ptr,
    HAS_STEPS: tl.constexpr,
    HAS_STATE: tl.constexpr,
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
    x = tl.load(x_ptr + element, mask=mask, other=0.0).to(tl.float32)
    h = tl.full([BLOCK_B], step_size, tl.float32)
    if HAS_STEPS:
        h = tl.load(steps_ptr + rows, mask=row_mask, other=1.0)
    noise_scale = tl.sqrt(2.0 * h)
    seed, offset = load_rng(seed, offset, rng_state_ptr, HAS_STATE)
    counter = offset + element  # int64: this step's noise counters, advanced by B * D per step
    for _ in range(n_steps):
        _, score = gmm_log_prob_grad(x, means_ptr, inv_vars_ptr, log_coef_ptr, cols, col_mask, dim, components,
                                     BLOCK_B, BLOCK_D)
        noise = normal_at(seed, counter)
        x = x + h[:, None] * score + noise_scale[:, None] * noise
        counter += numel
    tl.store(x_ptr + element, x.to(x_ptr.dtype.element_ty), mask=mask)


def gmm_langevin_(x, means, inv_vars, log_coef, n_steps, step_size, step_sizes, seed, offset, rng_state):
    """fastgen_triton::gmm_langevin_ (declared in fastgen/ops/langevin.py)."""
    chains, dim = x.shape
    if chains == 0 or n_steps == 0:
        return
    block_d = triton.next_power_of_2(dim)
    block_b = max(1, min(GMM_CHAINS, GMM_TILE // block_d))
    gmm_langevin_kernel[(triton.cdiv(chains, block_b),)](
        x, means, inv_vars, log_coef, chains, dim, chains * dim, means.shape[0], n_steps, step_size,
        step_sizes if step_sizes is not None else means,
        seed, offset,
        rng_state if rng_state is not None else means,
        HAS_STEPS=step_sizes is not None, HAS_STATE=rng_state is not None,
        BLOCK_B=block_b, BLOCK_D=block_d,
    )  # fmt: skip

