"""Minibatch optimal transport on the tensor's device: the exact assignment (Bertsekas' auction with epsilon
scaling, every unassigned row bidding at once) and entropic plans (log-domain Sinkhorn, batched)."""

from __future__ import annotations

import math

import torch

__all__ = ["assignment", "sinkhorn"]


def assignment(cost: torch.Tensor, *, method: str = "auto", tolerance: float = 1e-9) -> torch.Tensor:
    """The permutation p (n,) minimizing sum_i cost[i, p[i]] for a square cost matrix (n, n), on cost's device.

    method "auction" (Bertsekas 1988): on the benefits -cost scaled to [0, 1], epsilon from 1/5 down to
    tolerance / n in steps of 1/8, every unassigned row bidding at once; the total cost is within ``tolerance``
    times the cost's range of the optimum (exact for costs whose optimal and second-best totals differ by more);
    one host read per bidding round. "auto": on the CPU, scipy's linear_sum_assignment (shortest augmenting
    paths, exact; 256 rows in about a millisecond where the auction takes about half a second here) when scipy is
    installed; otherwise the auction."""
    if method not in ("auto", "auction"):
        raise ValueError(f"method must be 'auto' or 'auction', got {method!r}")
    if not isinstance(cost, torch.Tensor) or cost.dim() != 2 or cost.shape[0] != cost.shape[1]:
        raise ValueError(f"cost must be a square (n, n) tensor, got "
                         f"{tuple(cost.shape) if isinstance(cost, torch.Tensor) else type(cost).__name__}")
    if not cost.is_floating_point() or not bool(torch.isfinite(cost).all()):
        raise ValueError("cost must be a finite floating-point tensor")
    if not tolerance > 0:
        raise ValueError(f"tolerance must be > 0, got {tolerance!r}")
    n = cost.shape[0]
    if n <= 1:
        return torch.zeros(n, dtype=torch.int64, device=cost.device)
    if method == "auto" and cost.device.type == "cpu":
        try:
            from scipy.optimize import linear_sum_assignment
        except ImportError:
            pass
        else:
            return torch.from_numpy(linear_sum_assignment(cost.detach().double().numpy())[1]).long()
    c = cost.double()
    spread = float(c.max() - c.min())
    benefit = -(c - c.min()) / (spread if spread > 0 else 1.0)
    prices = torch.zeros(n, dtype=torch.float64, device=c.device)
    eps, final = 0.2, tolerance / n
    while True:
        person_of = _auction_phase(benefit, prices, eps)
        if eps <= final:
            return torch.empty_like(person_of).scatter_(0, person_of, torch.arange(n, device=c.device))
        eps = max(eps / 8, final)


def _auction_phase(benefit: torch.Tensor, prices: torch.Tensor, eps: float) -> torch.Tensor:
    """One epsilon phase from the given prices (updated in place): the owner (person) of each object once every
    person holds one."""
    n = benefit.shape[0]
    device = benefit.device
    owner = torch.full((n,), -1, dtype=torch.int64, device=device)  # object -> person
    holds = torch.full((n,), -1, dtype=torch.int64, device=device)  # person -> object
    people = torch.arange(n, device=device)
    while True:
        free = people[holds < 0]
        if free.numel() == 0:
            return owner
        values = benefit[free] - prices[None, :]
        top = values.topk(2, dim=1)
        best = top.indices[:, 0]
        bids = prices[best] + (top.values[:, 0] - top.values[:, 1]) + eps
        high = torch.full((n,), -math.inf, dtype=bids.dtype, device=device).scatter_reduce(0, best, bids, "amax")
        won = bids == high[best]
        winner = torch.full((n,), -1, dtype=torch.int64, device=device).scatter_reduce(
            0, best[won], free[won], "amax")  # one winner per object (the last index among equal bids)
        objects = people[winner >= 0]
        previous = owner[objects]
        holds[previous[previous >= 0]] = -1
        owner[objects] = winner[objects]
        holds[winner[objects]] = objects
        prices[objects] = high[objects]


def sinkhorn(cost: torch.Tensor, reg: float, a: torch.Tensor | None = None, b: torch.Tensor | None = None, *,
             iterations: int = 1000, tol: float | None = 1e-9, check_every: int = 50) -> torch.Tensor:
    """The entropic OT plan P = exp((f_i + g_j - C_ij) / reg) between marginals a (..., n) and b (..., m)
    (uniform by default) for costs C (..., n, m), batched over leading dimensions, by log-domain Sinkhorn
    iterations (stable for small reg). Stops after ``iterations``, or once the row marginals are within ``tol``
    (L1), checked every ``check_every`` iterations (one host read each; ``tol=None``: none)."""
    if not isinstance(cost, torch.Tensor) or cost.dim() < 2 or not cost.is_floating_point():
        raise ValueError("cost must be a floating-point tensor (..., n, m)")
    if isinstance(reg, bool) or not isinstance(reg, (int, float)) or not math.isfinite(reg) or reg <= 0:
        raise ValueError(f"reg must be a finite number > 0, got {reg!r}")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations must be an int >= 1, got {iterations!r}")
    n, m = cost.shape[-2:]
    log_a = _log_marginal(a, cost.shape[:-1], n, cost, "a")
    log_b = _log_marginal(b, cost.shape[:-2] + (m,), m, cost, "b")
    f = torch.zeros_like(log_a)
    g = torch.zeros_like(log_b)
    for i in range(iterations):
        f = reg * (log_a - torch.logsumexp((g[..., None, :] - cost) / reg, dim=-1))
        g = reg * (log_b - torch.logsumexp((f[..., :, None] - cost) / reg, dim=-2))
        if tol is not None and (i + 1) % check_every == 0:
            rows = torch.logsumexp((f[..., :, None] + g[..., None, :] - cost) / reg, dim=-1).exp()
            if float((rows - log_a.exp()).abs().sum(-1).max()) < tol:
                break
    return torch.exp((f[..., :, None] + g[..., None, :] - cost) / reg)


def _log_marginal(w, shape, size: int, cost: torch.Tensor, name: str) -> torch.Tensor:
    if w is None:
        return torch.full(shape, -math.log(size), dtype=cost.dtype, device=cost.device)
    if not isinstance(w, torch.Tensor) or w.shape[-1] != size or not bool((w > 0).all()):
        raise ValueError(f"{name} must be a positive tensor (..., {size}) (a marginal of the cost's shape)")
    return torch.log(w.to(cost.dtype) / w.sum(-1, keepdim=True))
