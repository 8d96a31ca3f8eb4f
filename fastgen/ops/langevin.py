"""Functional Langevin ops: validate once, pick the backend, call the fused op.

Chains lie along dim 0 of the state ``x`` (shape ``(B, ...)``); a call draws
its noise at stream positions ``offset .. offset + n - 1`` (``n`` = elements,
or chains for ``mala_accept_``), so results depend only on (seed, offset).
"""

from __future__ import annotations

import torch

from ..reference import langevin as reference
from ._common import check_like, check_state, clamp_args, op_for, positive_float, rng_args, step_size_args

MAX_GMM_DIM = 64
MAX_GMM_COMPONENTS = 64


def ula_step_(
    x: torch.Tensor,  # (B, ...) state, updated in place
    score: torch.Tensor,  # (B, ...) grad log p(x)
    step_size,  # float, or tensor () / (B,)
    seed,  # int, or RNGState.state
    offset: int = 0,
    *,
    clamp: tuple[float | None, float | None] | None = None,
    grad_clip: float | None = None,
) -> torch.Tensor:
    """One unadjusted Langevin step, in place:

        x <- clamp(x + h_b c_b s + sqrt(2 h_b) xi),   xi ~ N(0, I) at positions offset + i,

    with h_b the step size of chain b and c_b = min(1, grad_clip / (|s_b| + 1e-6))
    when ``grad_clip`` is given (else 1). ``x`` may be float32, float16 or
    bfloat16; ``score`` has x's dtype or float32; arithmetic is float32.
    Reserves ``x.numel()`` positions. Returns ``x``.
    """
    check_state(x)
    check_like(score, "score", x, dtypes=(x.dtype, torch.float32))
    h, steps = step_size_args(step_size, x)
    seed, offset, state = rng_args(seed, offset, x)
    lo, hi = clamp_args(clamp)
    clip = None if grad_clip is None else positive_float(grad_clip, "grad_clip")
    op_for(x, "ula_step_", reference)(x, score, h, steps, seed, offset, state, lo, hi, clip)
    return x


def mala_propose(
    x: torch.Tensor,  # (B, ...) current state
    grad_log_prob: torch.Tensor,  # (B, ...) grad log p(x)
    step_size,  # float, or tensor () / (B,)
    seed,
    offset: int = 0,
) -> torch.Tensor:
    """MALA proposal y = x + h_b grad log p(x) + sqrt(2 h_b) xi (a new tensor).

    Reserves ``x.numel()`` positions.
    """
    check_state(x)
    check_like(grad_log_prob, "grad_log_prob", x)
    h, steps = step_size_args(step_size, x)
    seed, offset, state = rng_args(seed, offset, x)
    return op_for(x, "mala_propose", reference)(x, grad_log_prob, h, steps, seed, offset, state)


def mala_accept_(
    x: torch.Tensor,  # (B, ...) current state, updated where accepted
    log_prob: torch.Tensor,  # (B,) float32 log p(x), updated where accepted
    grad_log_prob: torch.Tensor,  # (B, ...) grad log p(x), updated where accepted
    y: torch.Tensor,  # (B, ...) proposal from mala_propose
    log_prob_y: torch.Tensor,  # (B,) float32 log p(y)
    grad_log_prob_y: torch.Tensor,  # (B, ...) grad log p(y)
    step_size,  # the proposal's step size
    seed,
    offset: int = 0,
    *,
    return_prob: bool = False,
):
    """Metropolis-Hastings correction of one MALA transition per chain, in place:

        log alpha_b = log p(y) - log p(x) + (|y - x - h g(x)|^2 - |x - y - h g(y)|^2) / (4h),

    accepted where u_b < min(1, alpha_b), u_b the uniform at position offset + b;
    accepted chains take y, log p(y) and grad log p(y). Reserves B positions (round up with fastgen.rng.reserve after normals).
    Returns the (B,) bool accept mask, or (mask, min(1, alpha)) with ``return_prob``.
    """
    check_state(x)
    chains = x.shape[0]
    check_like(grad_log_prob, "grad_log_prob", x)
    check_like(y, "y", x)
    check_like(grad_log_prob_y, "grad_log_prob_y", x)
    for name, t in (("log_prob", log_prob), ("log_prob_y", log_prob_y)):
        if not isinstance(t, torch.Tensor) or t.dtype != torch.float32 or t.shape != (chains,) or t.device != x.device:
            got = f"{t.dtype} {tuple(t.shape)} on {t.device}" if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must be float32 of shape ({chains},) on {x.device}, got {got}")
    for name, t in (("grad_log_prob", grad_log_prob), ("log_prob", log_prob)):
        if not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous (it is updated in place)")
    h, steps = step_size_args(step_size, x)
    seed, offset, state = rng_args(seed, offset, x)
    op = op_for(x, "mala_accept_", reference)
    accepted, prob = op(x, log_prob, grad_log_prob, y.contiguous(), log_prob_y.contiguous(),
                        grad_log_prob_y.contiguous(), h, steps, seed, offset, state)  # fmt: skip
    return (accepted, prob) if return_prob else accepted


def gmm_langevin_(
    x: torch.Tensor,  # (B, D) state, updated in place
    gmm,  # fastgen.targets.GaussianMixture, D <= 64, K <= 64
    n_steps: int,
    step_size,  # float, or tensor () / (B,)
    seed,
    offset: int = 0,
) -> torch.Tensor:
    """``n_steps`` ULA steps on a diagonal Gaussian mixture in one launch:

        x <- x + h_b score(x) + sqrt(2 h_b) xi_t,   score(x) = sum_k r_k(x) (mu_k - x) / sigma_k^2,

    step t drawing positions ``offset + t * x.numel() + i`` (so it equals n_steps
    ula_step_ calls with the exact score). Reserves ``n_steps * x.numel()`` positions.
    """
    check_state(x)
    means, inv_vars, log_coef = gmm.kernel_params(x.device)
    if x.dim() != 2 or x.shape[1] != means.shape[1]:
        raise ValueError(f"x must have shape (chains, {means.shape[1]}) for this mixture, got {tuple(x.shape)}")
    if means.shape[1] > MAX_GMM_DIM or means.shape[0] > MAX_GMM_COMPONENTS:
        raise ValueError(f"gmm_langevin_ takes up to {MAX_GMM_COMPONENTS} components in dimension up to {MAX_GMM_DIM}, "
                         f"got {means.shape[0]} in dimension {means.shape[1]}")
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 0:
        raise ValueError(f"n_steps must be an int >= 0, got {n_steps!r}")
    h, steps = step_size_args(step_size, x)
    seed, offset, state = rng_args(seed, offset, x)
    op_for(x, "gmm_langevin_", reference)(x, means, inv_vars, log_coef, n_steps, h, steps, seed, offset, state)
    return x
