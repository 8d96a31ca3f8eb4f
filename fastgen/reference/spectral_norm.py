"""Plain-PyTorch specification of the grouped spectral-norm power iteration (same arguments as the registered op)."""

from __future__ import annotations

import torch


def _normalize(x: torch.Tensor, eps: float) -> torch.Tensor:
    return x / x.norm().clamp_min(eps)


def spectral_norm_power(weights, us, vs, n_power_iterations, eps):
    """For every matrix W (h, w) with its vectors u (h,) and v (w,), in float32:

        repeat n_power_iterations times:  u <- W v / max(|W v|, eps);  v <- W^T u / max(|W^T u|, eps)
        sigma = u^T W v

    Returns (sigmas (L,) float32, new us, new vs in the weights' dtype). With n_power_iterations = 0,
    u and v are returned unchanged and sigma uses them as given (torch's eval mode)."""
    sigmas, us_out, vs_out = [], [], []
    for weight, u, v in zip(weights, us, vs, strict=True):
        w, u, v = weight.float(), u.float(), v.float()
        for _ in range(n_power_iterations):
            u = _normalize(w @ v, eps)
            v = _normalize(w.T @ u, eps)
        sigmas.append(torch.dot(u, w @ v))
        us_out.append(u.to(weight.dtype, copy=True))
        vs_out.append(v.to(weight.dtype, copy=True))
    sigmas = torch.stack(sigmas) if sigmas else torch.empty(0, dtype=torch.float32,
                                                            device=weights[0].device if weights else None)
    return sigmas, us_out, vs_out
