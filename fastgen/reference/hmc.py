"""Plain-PyTorch specification of the leapfrog op (same arguments as the registered op)."""

from __future__ import annotations

import torch


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
