"""Plain-PyTorch specification of the Hutchinson reduction (same arguments as the registered op)."""

from __future__ import annotations

import torch

from .rng import counters, normal_at, uniform_at


def probe_values(numel: int, seed: int, offset: int, rademacher: bool, device) -> torch.Tensor:
    """The probe at stream positions offset .. offset + numel - 1: sign(u - 1/2) from uniforms (+1 where u >= 1/2),
    or standard normals."""
    _, n = counters(numel, offset, device)
    if rademacher:
        return torch.where(uniform_at(seed, n) < 0.5, -1.0, 1.0)
    return normal_at(seed, n)


def hutchinson_dot(vjp, seed, offset, rademacher):
    """out_b = sum_i vjp[b, i] eps[b, i], eps the probe at positions offset + (flat index), float32."""
    batch = vjp.shape[0]
    eps = probe_values(vjp.numel(), seed, offset, rademacher, vjp.device).view(vjp.shape)
    return (vjp.float() * eps).reshape(batch, vjp.numel() // batch if batch else 0).sum(1)
