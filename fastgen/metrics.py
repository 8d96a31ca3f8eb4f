"""Sample-quality metrics between sample sets x (n, D) and y (m, D), in float64."""

from __future__ import annotations

import torch

from .core.checks import check_batch


def _flat(t: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor) or t.dim() < 2 or t.shape[0] < 2:
        raise ValueError(f"{name} must be a tensor of at least 2 samples, shape (n, ...)")
    return t.detach().reshape(t.shape[0], -1).double()


def _pair(x, y):
    x, y = _flat(x, "x"), _flat(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same dimension, got {x.shape[1]} and {y.shape[1]}")
    return x, y.to(x.device)


def median_bandwidth(x: torch.Tensor, y: torch.Tensor) -> float:
    """Median pairwise distance of the pooled samples (the median heuristic)."""
    z = torch.cat(_pair(x, y))
    d = torch.cdist(z, z)
    return float(d[torch.triu_indices(len(z), len(z), 1, device=z.device).unbind()].median())


MULTISCALE = (1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0, 2.0)


def mmd(x: torch.Tensor, y: torch.Tensor, bandwidth=None) -> float:
    """Unbiased squared MMD with the RBF kernel exp(-|a - b|^2 / (2 bandwidth^2)), or the mean of several.

    bandwidth: a float; a sequence of floats (the kernel is the mean of their RBF kernels); "multiscale", the
    median heuristic times 1/16 ... 2 (MULTISCALE), which also sees errors at scales far below the median distance,
    such as a mode 20% too narrow; or None, the median heuristic on the pooled samples. The unbiased estimate has
    mean 0 when x and y come from the same law (so it can be < 0).
    """
    x, y = _pair(x, y)
    if bandwidth is None or isinstance(bandwidth, str):
        if bandwidth not in (None, "multiscale"):
            raise ValueError(f"bandwidth must be a float, a sequence, 'multiscale' or None, got {bandwidth!r}")
        median = median_bandwidth(x, y)
        bandwidths = [median * f for f in MULTISCALE] if bandwidth == "multiscale" else [median]
    else:
        bandwidths = [float(b) for b in (bandwidth if hasattr(bandwidth, "__len__") else [bandwidth])]
    if not bandwidths or not all(b > 0 for b in bandwidths):
        raise ValueError(f"bandwidth must be > 0, got {bandwidth!r}")
    n, m = len(x), len(y)
    dxx, dyy, dxy = torch.cdist(x, x).square(), torch.cdist(y, y).square(), torch.cdist(x, y).square()
    total = 0.0
    for bw in bandwidths:
        gamma = 1.0 / (2 * bw * bw)
        kxx, kyy, kxy = torch.exp(-gamma * dxx), torch.exp(-gamma * dyy), torch.exp(-gamma * dxy)
        xx = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
        yy = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
        total += float(xx + yy - 2 * kxy.mean())
    return total / len(bandwidths)


def energy_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """2 E|X - Y| - E|X - X'| - E|Y - Y'| (within-set terms unbiased); 0 iff the laws agree."""
    x, y = _pair(x, y)
    n, m = len(x), len(y)
    xy = torch.cdist(x, y).mean()
    xx = torch.cdist(x, x).sum() / (n * (n - 1))
    yy = torch.cdist(y, y).sum() / (m * (m - 1))
    return float(2 * xy - xx - yy)


def sliced_wasserstein(x: torch.Tensor, y: torch.Tensor, n_projections: int = 128, seed: int = 0) -> float:
    """Sliced 2-Wasserstein distance: sqrt of the mean over random directions of W2^2 of the projections."""
    x, y = _pair(x, y)
    if n_projections < 1:
        raise ValueError(f"n_projections must be >= 1, got {n_projections}")
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(x.shape[1], n_projections, generator=g, dtype=torch.float64).to(x.device)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    px, _ = torch.sort(x @ dirs, dim=0)
    py, _ = torch.sort(y @ dirs, dim=0)
    if len(px) != len(py):  # compare on common quantile levels
        q = torch.linspace(0, 1, max(len(px), len(py)), dtype=torch.float64, device=x.device)
        px, py = torch.quantile(px, q, dim=0), torch.quantile(py, q, dim=0)
    return float((px - py).square().mean().sqrt())


def mode_weights(x: torch.Tensor, gmm) -> torch.Tensor:
    """Share of the samples whose nearest component mean is mode k, shape (K,)."""
    check_batch(x, "x", dims=2)
    if x.shape[1] != gmm.dim or len(x) == 0:
        raise ValueError(f"x must have shape (n, {gmm.dim}) with n >= 1, got {tuple(x.shape)}")
    means = gmm.means.to(x.device, torch.float32)
    nearest = torch.empty(len(x), dtype=torch.int64, device=x.device)
    for start in range(0, len(x), 1 << 16):  # bounded memory for millions of samples
        chunk = x[start:start + (1 << 16)].float()
        nearest[start:start + len(chunk)] = torch.cdist(chunk, means).argmin(dim=1)
    return torch.bincount(nearest, minlength=gmm.n_components).double().cpu() / max(len(x), 1)


def within_mode_spread(x: torch.Tensor, gmm) -> torch.Tensor:
    """Per component k, the RMS distance of the samples nearest to mean k, over the truth's RMS std of component k
    (shape (K,); 1 where the sampler keeps the modes' width, < 1 too narrow, > 1 too wide; NaN for a component no
    sample is nearest to). Meaningful when the components are well separated."""
    if x.dim() != 2 or x.shape[1] != gmm.dim:
        raise ValueError(f"x must have shape (n, {gmm.dim}), got {tuple(x.shape)}")
    x = x.detach().double().cpu()
    nearest = torch.cdist(x, gmm.means).argmin(dim=1)
    sq = (x - gmm.means[nearest]).square().sum(dim=1)
    count = torch.bincount(nearest, minlength=gmm.n_components).double()
    mean_sq = torch.zeros(gmm.n_components, dtype=torch.float64).index_add_(0, nearest, sq) / count
    return (mean_sq / gmm.stds.square().sum(dim=1)).sqrt()
