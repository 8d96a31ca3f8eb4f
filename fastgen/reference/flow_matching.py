"""Plain-PyTorch specification of the fused flow-matching interpolation (same arguments as the registered op)."""

from __future__ import annotations

import torch

from .rng import normal_at


def cfm_interpolate(x0, coef, pairing, seed, offset):
    """eps_bj = the normal at stream position offset + p_b D + j (p = pairing, or p_b = b; D elements per sample),
    x_t = alpha_b x0 + sigma_b eps and target = alpha'_b x0 + sigma'_b eps with coef[b] = (alpha, sigma, alpha',
    sigma'); float32 arithmetic, outputs in x0's dtype."""
    batch = x0.shape[0]
    dim = x0.numel() // batch if batch else 0
    rows = torch.arange(batch, device=x0.device) if pairing is None else pairing.to(x0.device, torch.int64)
    n = offset + rows[:, None] * dim + torch.arange(dim, device=x0.device)[None, :]
    eps = normal_at(seed, n.reshape(-1)).view(x0.shape)
    shape = (-1,) + (1,) * (x0.dim() - 1)
    alpha, sigma, d_alpha, d_sigma = (coef[:, k].float().view(shape) for k in range(4))
    x = x0.float()
    return (alpha * x + sigma * eps).to(x0.dtype), (d_alpha * x + d_sigma * eps).to(x0.dtype)
