"""Residual flows (Behrmann et al. 2019, i-ResNet; Chen et al. 2019, residual flows).

A block maps data to the base space by z = x + g(x) with Lip(g) < 1 (spectral normalization of every layer
of g with a Lipschitz coefficient c, and 1-Lipschitz activations), so it is invertible and

    log|det(I + J_g(x))| = sum_{k>=1} (-1)^{k+1} tr(J^k) / k.

The estimator: Hutchinson probes v (standard normal, from fastgen's noise stream), tr(J^k) ~ v^T J^k v by k
vector-Jacobian products, and the series cut at a random length N = n_exact + G, G ~ Geometric(p), each kept
term divided by P(N >= k) (Russian roulette), which makes the estimate unbiased for the infinite series.
Gradients use the Neumann series d log det = tr((I + J)^{-1} dJ), (I + J)^{-1} ~ sum_m (-J)^m with the same
probe and roulette: one extra vector-Jacobian product with a graph, instead of the graph of every term.
"""

from __future__ import annotations

import contextlib
import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..core.rng import MAX_SEED, reserve, resolve_seed
from ..nn.spectral import SpectralNorm
from ..ops import normal, uniform
from .core import Flow, Transform

_GOLDEN = 0x9E3779B97F4A7C15  # per-call seeds: base + call * golden ratio, mod 2**63


class LipSwish(nn.Module):
    """x sigmoid(beta x) / 1.1 with beta = softplus(b) learnt: 1-Lipschitz (Chen et al. 2019)."""

    def __init__(self):
        super().__init__()
        self.b = nn.Parameter(torch.tensor(0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(F.softplus(self.b) * x) / 1.1


def roulette_length(seed: int, offset: int, n_exact: int, p: float) -> int:
    """N = n_exact + G with G = floor(log(1 - u) / log(1 - p)) ~ Geometric(p) on {0, 1, ...}, u the uniform at
    stream position ``offset`` of ``seed``. Computed from the counter-based stream on the host's CPU: the same
    value every backend would draw, with no read of device memory (no host-device synchronization)."""
    u = float(uniform((1,), seed, offset))
    return n_exact + int(math.floor(math.log1p(-u) / math.log1p(-p)))


def kept_probability(k: int, n_exact: int, p: float) -> float:
    """P(N >= k) for N = n_exact + Geometric(p)."""
    return 1.0 if k <= n_exact else (1.0 - p) ** (k - n_exact)


class ResidualBlock(Transform):
    """z = x + g(x): ``net`` is g (any module mapping (B, ...) to the same shape); every Linear/Conv layer of it
    is spectrally normalized with Lipschitz coefficient ``lipschitz`` (fastgen.nn.SpectralNorm, one grouped
    power iteration per call of g), so with 1-Lipschitz activations Lip(g) <= lipschitz < 1.

    ``forward(x)`` returns (z, log|det dz/dx|): the Russian-roulette power-series estimate (see the module
    docstring; ``n_exact`` terms always, then Geometric(``p``)), or the exact value from the full Jacobian when
    ``exact=True`` (flat (B, D) inputs, small D). Each call draws its probe and series length from the noise
    stream with seed ``seed`` (default: one drawn from torch's RNG at construction) and a per-call counter.
    ``inverse(z)`` is the fixed-point iteration x <- z - g(x) with g held fixed (no power-iteration step), run
    until the largest change is at most tol (1 - c) / c, so that |x - f^{-1}(z)| <= ``tol`` (c = ``lipschitz``),
    or at most 8 ulps of max|z| where that is larger (float rounding), checked every 8 iterations (one host
    read each); ``max_iter`` iterations at most. It runs without gradient."""

    def __init__(self, net: nn.Module, *, lipschitz: float = 0.97, n_power_iterations: int = 1, n_exact: int = 2,
                 p: float = 0.5, exact: bool = False, seed: int | None = None, tol: float = 1e-6,
                 max_iter: int = 2000, normalize: bool = True):
        super().__init__()
        if not 0 < lipschitz < 1:
            raise ValueError(f"lipschitz must be in (0, 1) for an invertible residual block, got {lipschitz!r}")
        if isinstance(n_exact, bool) or not isinstance(n_exact, int) or n_exact < 1:
            raise ValueError(f"n_exact must be an int >= 1, got {n_exact!r}")
        if not 0 < p < 1:
            raise ValueError(f"p must be in (0, 1), got {p!r}")
        if not tol > 0 or isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
            raise ValueError(f"tol must be > 0 and max_iter an int >= 1, got {tol!r} and {max_iter!r}")
        self.net = net
        self.spectral = SpectralNorm.apply(net, lipschitz=lipschitz, n_power_iterations=n_power_iterations) \
            if normalize else None
        self.lipschitz, self.n_exact, self.p, self.exact = float(lipschitz), n_exact, float(p), bool(exact)
        self.tol, self.max_iter = tol, max_iter
        self.seed = resolve_seed(seed)
        self.calls = 0

    def _draw(self, x: torch.Tensor, seed: int | None) -> tuple[torch.Tensor, int]:
        if seed is None:
            seed = (self.seed + self.calls * _GOLDEN) % MAX_SEED
            self.calls += 1
        probe = normal(x.shape, seed, 0, device=x.device).to(x.dtype)
        return probe, roulette_length(seed, reserve(x.numel()), self.n_exact, self.p)

    def forward(self, x: torch.Tensor, seed: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.enable_grad():
            xg = x if x.requires_grad else x.detach().requires_grad_(True)
            gx = self.net(xg)
            if gx.shape != x.shape:
                raise ValueError(f"net must map x to its own shape {tuple(x.shape)}, got {tuple(gx.shape)}")
            log_abs_det = self._exact(xg, gx) if self.exact else self._estimate(xg, gx, *self._draw(x, seed))
        z = x + gx if torch.is_grad_enabled() else (x + gx).detach()
        return z, log_abs_det if torch.is_grad_enabled() else log_abs_det.detach()

    def _estimate(self, x: torch.Tensor, gx: torch.Tensor, probe: torch.Tensor, length: int) -> torch.Tensor:
        """Roulette power-series value; its gradient (when one is wanted) from the Neumann series."""
        need_grad = torch.is_grad_enabled() and (x.requires_grad and (gx.grad_fn is not None))
        w, neumann = probe, probe.clone()
        value = x.new_zeros(x.shape[0])
        with torch.no_grad():
            for k in range(1, length + 1):
                w = torch.autograd.grad(gx, x, w, retain_graph=True)[0]  # v^T J^k
                value += (-1) ** (k + 1) / (k * kept_probability(k, self.n_exact, self.p)) * _per_sample_dot(w, probe)
                if k < length:  # (I + J)^{-1} ~ sum_{m < N} (-J)^m / P(N >= m + 1)
                    neumann += (-1) ** k / kept_probability(k + 1, self.n_exact, self.p) * w
        if not need_grad:
            return value
        surrogate = _per_sample_dot(torch.autograd.grad(gx, x, neumann, create_graph=True)[0], probe)
        return value + surrogate - surrogate.detach()

    def _exact(self, x: torch.Tensor, gx: torch.Tensor) -> torch.Tensor:
        """log|det(I + J)| from the full Jacobian (D vector-Jacobian products; (B, D) inputs)."""
        if x.dim() != 2:
            raise ValueError(f"exact=True takes flat inputs (B, D), got shape {tuple(x.shape)}")
        rows = [torch.autograd.grad(gx[:, i].sum(), x, create_graph=torch.is_grad_enabled(), retain_graph=True)[0]
                for i in range(x.shape[1])]
        jacobian = torch.stack(rows, dim=1)  # (B, D, D): row i = d g_i / dx
        eye = torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
        return torch.linalg.slogdet(eye + jacobian).logabsdet

    @torch.no_grad()
    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        # |x_k - x*| <= c / (1 - c) |x_k - x_{k-1}|, down to the rounding of x's dtype
        threshold = max(self.tol * (1 - self.lipschitz) / self.lipschitz,
                        8 * torch.finfo(z.dtype).eps * (1 + float(z.detach().abs().max())))
        x = z.detach().clone()
        with self.spectral.frozen() if self.spectral is not None else contextlib.nullcontext():
            for it in range(1, self.max_iter + 1):
                step = z - self.net(x)
                if it % 8 == 0 and float((step - x).abs().max()) <= threshold:  # one host read per 8 iterations
                    return step
                x = step
        raise RuntimeError(f"the fixed-point inverse did not reach tol={self.tol} in {self.max_iter} iterations; "
                           f"raise max_iter or lower the block's lipschitz")


def _per_sample_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).reshape(a.shape[0], -1).sum(dim=1)


class ResidualFlow(Flow):
    """A residual flow on (B, dim) data: ``blocks`` residual blocks, each g an MLP dim -> hidden -> ... -> dim with
    LipSwish activations and spectral normalization at ``lipschitz``; standard normal base."""

    def __init__(self, dim: int, blocks: int = 4, hidden: int = 64, depth: int = 3, *, lipschitz: float = 0.97,
                 seed: int | None = None, **block_options):
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be an int >= 1, got {dim!r}")
        seed = resolve_seed(seed)
        transforms = []
        for b in range(blocks):
            sizes = [dim] + [hidden] * (depth - 1) + [dim]
            layers: list[nn.Module] = []
            for i, (a, c) in enumerate(itertools.pairwise(sizes)):
                layers.append(nn.Linear(a, c))
                if i < len(sizes) - 2:
                    layers.append(LipSwish())
            transforms.append(ResidualBlock(nn.Sequential(*layers), lipschitz=lipschitz,
                                            seed=(seed + b * _GOLDEN) % MAX_SEED, **block_options))
        super().__init__(transforms, event_shape=(dim,))
