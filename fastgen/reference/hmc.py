"""Plain-PyTorch specification of the leapfrog op (same arguments as the registered op)."""

from __future__ import annotations

import torch

from ..core.rng import hmc_layout
from .rng import normal_at, uniform_at


def leapfrog_(q, p, grad_log_prob, step_sizes, inverse_mass, kick, drift):
    """p <- p + kick eps_b grad_log_prob; with drift q <- q + eps_b M^-1 p (the new p), float32 arithmetic (float64
    for a float64 state: fastgen.mcmc.hmc's exact path)."""
    if q.numel() == 0:
        return
    work = torch.float64 if q.dtype == torch.float64 else torch.float32
    eps = step_sizes.to(work).reshape((-1,) + (1,) * (q.dim() - 1))
    momentum = p.to(work) + kick * eps * grad_log_prob.to(work)
    p.copy_(momentum)
    if drift:
        scale = 1.0 if inverse_mass is None else inverse_mass.to(work).reshape(
            (-1, *q.shape[1:]) if inverse_mass.numel() == q.numel() else q.shape[1:])
        q.copy_(q.to(work) + eps * scale * momentum)


def gmm_log_prob_grad(x: torch.Tensor, means, inv_vars, log_coef):
    """log p(x) (without -D/2 log 2 pi) and grad log p(x) of a diagonal Gaussian mixture, float32."""
    diff = means[None] - x[:, None, :]  # (B, K, D)
    logits = log_coef - 0.5 * (diff.square() * inv_vars).sum(-1)
    resp = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, -1), (resp[..., None] * diff * inv_vars).sum(1)


def gmm_hmc_(q, means, inv_vars, log_coef, step_sizes, n_transitions, n_leapfrog, seed, offset):
    """n_transitions HMC transitions (identity mass, n_leapfrog steps of eps_b, exact gradient, Metropolis) on the
    mixture; transition t's momentum at offset + t S + b D + d and accept uniform at offset + t S + R(B D) + R(B) +
    b, S = R(B D) + 2 R(B). Returns (summed acceptance probabilities, divergent transitions)."""
    chains, dim = q.shape
    stride, uniforms = hmc_layout(chains * dim, chains)
    x = q.float()
    eps = step_sizes[:, None]
    log_p, grad = gmm_log_prob_grad(x, means, inv_vars, log_coef)
    accepted = torch.zeros(chains, device=q.device)
    divergences = torch.zeros(chains, device=q.device, dtype=torch.int32)
    element = torch.arange(chains * dim, device=q.device).reshape(chains, dim)
    chain = torch.arange(chains, device=q.device)
    for t in range(n_transitions):
        base = offset + t * stride
        p = normal_at(seed, base + element)
        kinetic = 0.5 * p.square().sum(1)
        x1, p1 = x.clone(), p + 0.5 * eps * grad
        for step in range(n_leapfrog):
            x1 = x1 + eps * p1
            log_p1, grad1 = gmm_log_prob_grad(x1, means, inv_vars, log_coef)
            p1 = p1 + (0.5 if step == n_leapfrog - 1 else 1.0) * eps * grad1
        error = (0.5 * p1.square().sum(1) - log_p1) - (kinetic - log_p)
        divergent = ~torch.isfinite(error) | (error > 1000.0)
        prob = torch.where(divergent, torch.zeros_like(error), torch.exp(-error.clamp(min=0)))
        accepted += prob
        divergences += divergent.int()
        take = uniform_at(seed, base + uniforms + chain) < prob
        x = torch.where(take[:, None], x1, x)
        grad = torch.where(take[:, None], grad1, grad)
        log_p = torch.where(take, log_p1, log_p)
    q.copy_(x.to(q.dtype))
    return accepted, divergences
