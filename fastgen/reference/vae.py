"""Plain-PyTorch specification of the fused Gaussian reparameterization (same arguments as the registered op)."""

from __future__ import annotations

import math

from .rng import counters, normal_at


def gaussian_rsample(mean, log_std, seed, offset, path_derivative):
    """eps_i = normal at stream position offset + i,  z = mean + exp(log_std) eps,
    log_prob_b = sum_i (-eps_i^2 / 2 - log_std_i) - D log(2 pi) / 2   (float32; the backward is the op's)."""
    _, n = counters(mean.numel(), offset, mean.device)
    eps = normal_at(seed, n).view(mean.shape)
    log_std32 = log_std.float()
    z = (mean.float() + log_std32.exp() * eps).to(mean.dtype)
    batch = mean.shape[0]
    dim = mean.numel() // batch if batch else 0
    terms = (-0.5 * eps.square() - log_std32).reshape(batch, dim)
    log_prob = terms.sum(1) - 0.5 * dim * math.log(2 * math.pi)
    return z, log_prob.float()
