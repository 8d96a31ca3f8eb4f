"""Plain-PyTorch specification of the Langevin-family ops (same arguments as the
registered ops). Arithmetic is float32 (float64 for per-chain sums); the state
keeps its dtype. Chain b owns the b-th slice along dim 0; element i of a call
draws its noise at stream position offset + i.
"""

from __future__ import annotations

import math

import torch

from .rng import counters, normal_at, uniform_at


def _per_chain(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B,) values shaped to broadcast against x of shape (B, ...)."""
    return values.view((x.shape[0],) + (1,) * (x.dim() - 1))


def _normals(x: torch.Tensor, seed: int, offset: int, rng_state: torch.Tensor | None) -> torch.Tensor:
    state_seed, n = counters(x.numel(), offset, x.device, rng_state)
    return normal_at(seed if state_seed is None else state_seed, n).view(x.shape)


def _ula(x, score, step_size, step_sizes, seed, offset, rng_state, *, clamp_lo=None, clamp_hi=None,
         grad_clip=None) -> torch.Tensor:
    s = score.float()
    if step_sizes is None:
        h, noise_scale = step_size, math.sqrt(2.0 * step_size)
    else:
        h = _per_chain(step_sizes.float(), x)
        noise_scale = torch.sqrt(2.0 * h)
    drift = h
    if grad_clip is not None:
        norms = s.double().flatten(1).norm(dim=1) if x.dim() > 1 else s.double().abs()
        drift = h * _per_chain((grad_clip / (norms + 1e-6)).clamp(max=1.0).float(), x)
    value = x.float() + drift * s + noise_scale * _normals(x, seed, offset, rng_state)
    if clamp_lo is not None or clamp_hi is not None:
        value = value.clamp(clamp_lo, clamp_hi)
    return value


def ula_step_(x, score, step_size, step_sizes, seed, offset, rng_state, clamp_lo, clamp_hi, grad_clip):
    """x <- clamp(x + h_b c_b s + sqrt(2 h_b) xi), c_b = min(1, grad_clip / (|s_b| + 1e-6))."""
    if x.numel():
        x.copy_(_ula(x, score, step_size, step_sizes, seed, offset, rng_state, clamp_lo=clamp_lo, clamp_hi=clamp_hi,
                     grad_clip=grad_clip))


def mala_propose(x, grad_log_prob, step_size, step_sizes, seed, offset, rng_state):
    """y = x + h_b grad log p(x) + sqrt(2 h_b) xi."""
    y = torch.empty_like(x)
    if x.numel():
        y.copy_(_ula(x, grad_log_prob, step_size, step_sizes, seed, offset, rng_state))
    return y


def mala_accept_(x, log_prob, grad_log_prob, y, log_prob_y, grad_log_prob_y, step_size, step_sizes, seed, offset,
                 rng_state):
    """Metropolis-Hastings correction per chain b:

    log alpha = log p(y) - log p(x) + (|y - x - h g(x)|^2 - |x - y - h g(y)|^2) / (4h),
    accept when u_b < min(1, alpha) with u_b the uniform at position offset + b;
    where accepted, x, log_prob and grad_log_prob take y's values.
    Returns (accepted, min(1, alpha)).
    """
    chains = x.shape[0]
    if chains == 0:
        return torch.empty(0, dtype=torch.bool, device=x.device), torch.empty(0, device=x.device)
    h = step_sizes.double() if step_sizes is not None else torch.full((chains,), step_size, dtype=torch.float64,
                                                                       device=x.device)
    xd, yd = x.double().reshape(chains, -1), y.double().reshape(chains, -1)
    h_col = h[:, None]
    forward = (yd - xd - h_col * grad_log_prob.double().reshape(chains, -1)).square().sum(1)
    backward = (xd - yd - h_col * grad_log_prob_y.double().reshape(chains, -1)).square().sum(1)
    log_alpha = log_prob_y.double() - log_prob.double() + (forward - backward) / (4.0 * h)
    prob = torch.where(log_alpha >= 0, torch.ones_like(log_alpha), torch.exp(log_alpha.clamp(max=0.0)))
    prob = torch.nan_to_num(prob, nan=0.0).float()
    state_seed, n = counters(chains, offset, x.device, rng_state)
    accepted = uniform_at(seed if state_seed is None else state_seed, n) < prob
    where = _per_chain(accepted, x)
    x.copy_(torch.where(where, y, x))
    grad_log_prob.copy_(torch.where(where, grad_log_prob_y, grad_log_prob))
    log_prob.copy_(torch.where(accepted, log_prob_y, log_prob))
    return accepted, prob


def gmm_score(x: torch.Tensor, means: torch.Tensor, inv_vars: torch.Tensor, log_coef: torch.Tensor) -> torch.Tensor:
    """Score of a diagonal Gaussian mixture: sum_k r_k(x) (mu_k - x) / sigma_k^2, in float32."""
    diff = x.float()[:, None, :] - means[None]  # (B, K, D)
    logits = log_coef - 0.5 * (diff.square() * inv_vars).sum(-1)  # (B, K)
    resp = torch.softmax(logits, dim=-1)
    return -(resp[..., None] * diff * inv_vars).sum(1)


def gmm_langevin_(x, means, inv_vars, log_coef, n_steps, step_size, step_sizes, seed, offset, rng_state):
    """n_steps ULA steps with the mixture's exact score; step t draws positions offset + t * numel + i."""
    for step in range(n_steps):
        score = gmm_score(x, means, inv_vars, log_coef)
        ula_step_(x, score, step_size, step_sizes, seed, offset + step * x.numel(), rng_state, None, None, None)
