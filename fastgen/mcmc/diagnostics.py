"""MCMC convergence diagnostics as MCMC users read them (Vehtari, Gelman, Simpson, Carpenter and Bürkner 2021):
the effective sample size (bulk, tail, mean) and the rank-normalized split R-hat, for draws shaped (chains, draws,
*event), on the draws' device in float64, every event dimension at once. They follow arviz's definitions
(arviz-stats' array functions): split chains (the first and last halves), ranks with ties averaged and
back-transformed by Blom's 3/8 offset, autocovariances by FFT, Geyer's initial positive and monotone sequences.

    draws = torch.stack(chains_history, dim=1)      # (chains, draws, dim)
    fastgen.mcmc.ess(draws), fastgen.mcmc.ess(draws, method="tail"), fastgen.mcmc.rhat(draws)
"""

from __future__ import annotations

import math

import torch

__all__ = ["ess", "rhat", "summary"]


def _draws(x: torch.Tensor, name: str = "draws") -> torch.Tensor:
    """(chains, draws, D) float64 from (chains, draws, *event)."""
    if not isinstance(x, torch.Tensor) or x.dim() < 2:
        raise ValueError(f"{name} must be a tensor shaped (chains, draws, *event), got "
                         f"{getattr(x, 'shape', type(x).__name__)}")
    if x.shape[1] < 4:
        raise ValueError(f"{name} needs at least 4 draws per chain, got {x.shape[1]}")
    return x.detach().to(torch.float64).reshape(x.shape[0], x.shape[1], -1)


def _split(x: torch.Tensor) -> torch.Tensor:
    """Each chain's first and last halves as chains of their own (the middle draw of an odd count dropped)."""
    half = x.shape[1] // 2
    return torch.cat([x[:, :half], x[:, x.shape[1] - half:]])


def _ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks 1..S of every value among all chains and draws, per column, ties given their average rank."""
    c, n, d = x.shape
    flat = x.reshape(c * n, d).t()  # (D, S)
    values, order = flat.sort(dim=1)
    size = flat.shape[1]
    position = torch.arange(1, size + 1, dtype=torch.float64, device=x.device).expand(d, size)
    new_group = torch.ones_like(values, dtype=torch.bool)
    new_group[:, 1:] = values[:, 1:] != values[:, :-1]
    group = new_group.long().cumsum(1) - 1 + torch.arange(d, device=x.device)[:, None] * size  # unique per column
    total = torch.zeros(d * size, dtype=torch.float64, device=x.device).index_add_(0, group.reshape(-1),
                                                                                   position.reshape(-1))
    count = torch.zeros(d * size, dtype=torch.float64, device=x.device).index_add_(
        0, group.reshape(-1), torch.ones(d * size, dtype=torch.float64, device=x.device))
    average = (total / count.clamp(min=1))[group]
    ranks = torch.empty_like(average).scatter_(1, order, average)
    return ranks.t().reshape(c, n, d)


def _z_scale(x: torch.Tensor) -> torch.Tensor:
    """Rank normalization: Phi^-1((rank - 3/8) / (S + 1/4))."""
    size = x.shape[0] * x.shape[1]
    return torch.special.ndtri((_ranks(x) - 0.375) / (size + 0.25))


def _rhat(x: torch.Tensor) -> torch.Tensor:
    """sqrt((B / W + n - 1) / n) per column of (chains, n, D)."""
    n = x.shape[1]
    between = n * x.mean(1).var(0, unbiased=True)
    within = x.var(1, unbiased=True).mean(0)
    return ((between / within + n - 1) / n).sqrt()


def _ess(x: torch.Tensor) -> torch.Tensor:
    """The effective sample size per column of (chains, n, D), arviz's _ess: autocovariances by FFT, Geyer's
    initial positive sequence of pair sums (cut at the first non-positive pair) made monotone."""
    c, n, d = x.shape
    centred = x - x.mean(1, keepdim=True)
    spectrum = torch.fft.rfft(centred, n=2 * n, dim=1)
    acov = torch.fft.irfft(spectrum * spectrum.conj(), n=2 * n, dim=1)[:, :n] / n  # (C, n, D)
    mean_var = acov[:, 0].mean(0) * n / (n - 1.0)
    var_plus = mean_var * (n - 1.0) / n
    if c > 1:
        var_plus = var_plus + x.mean(1).var(0, unbiased=True)
    rho = 1.0 - (mean_var - acov.mean(0)) / var_plus  # (n, D); rho[0] is replaced by 1
    rho[0] = 1.0
    pairs = n // 2  # pair j = rho[2j] + rho[2j + 1], for 2j + 1 <= n - 1
    pair = rho[0:2 * pairs:2] + rho[1:2 * pairs + 1:2]  # (pairs, D)
    bound = max((n - 3) // 2, 0)  # arviz computes pairs 1 .. bound
    j = torch.arange(pairs, device=x.device)[:, None]
    positive_before = torch.cat([torch.ones_like(pair[:1], dtype=torch.bool),
                                 (pair > 0).long().cumprod(0)[:-1].bool()])  # all pairs before j positive
    computed = (j >= 1) & (j <= bound) & positive_before
    last = (computed.long() * j).amax(0)  # the last pair computed (0: none)
    monotone = pair.cummin(0).values
    kept = (j < last).to(torch.float64)  # pairs 0 .. last - 1 enter the sum
    total = (monotone * kept).sum(0)
    even = rho.gather(0, (2 * last).clamp(max=n - 1)[None])[0]  # rho[2 last]
    last_pair = pair.gather(0, last.clamp(max=pairs - 1)[None])[0]
    extra = torch.where(last == 0, torch.ones_like(even),
                        torch.where((last_pair >= 0) | (even > 0), even, torch.zeros_like(even)))
    tau = -1.0 + 2.0 * total + extra
    size = c * n
    tau = tau.clamp(min=1 / math.log10(size))
    result = size / tau
    constant = (x.amax((0, 1)) - x.amin((0, 1))) < torch.finfo(torch.float64).resolution
    return torch.where(constant, torch.full_like(result, float(size)), result)


def _quantile(flat: torch.Tensor, p: float) -> torch.Tensor:
    """Per column of flat (S, D), the p-quantile with linear interpolation (torch.quantile's default, which refuses
    inputs over 2^24 elements)."""
    values = flat.sort(0).values
    position = p * (flat.shape[0] - 1)
    low = int(math.floor(position))
    high = min(low + 1, flat.shape[0] - 1)
    return values[low] + (position - low) * (values[high] - values[low])


def ess(draws: torch.Tensor, method: str = "bulk", prob: tuple[float, float] = (0.05, 0.95)) -> torch.Tensor:
    """Effective sample size per event element of draws shaped (chains, draws, *event), shaped like the event.

    method: "bulk" (of the rank-normalized split chains: the default, for means and medians), "tail" (the smaller of
    the ESS of the indicators x <= q at the quantiles `prob`, 5% and 95%), or "mean" (of the split chains)."""
    x = _draws(draws)
    event = draws.shape[2:]
    if method == "bulk":
        out = _ess(_z_scale(_split(x)))
    elif method == "mean":
        out = _ess(_split(x))
    elif method == "tail":
        flat = x.reshape(-1, x.shape[2])
        out = None
        for p in prob:
            if not 0 < p < 1:
                raise ValueError(f"prob must hold quantile levels in (0, 1), got {prob}")
            q = _quantile(flat, p)
            value = _ess(_split((x <= q).to(torch.float64)))
            out = value if out is None else torch.minimum(out, value)
    else:
        raise ValueError(f"method must be 'bulk', 'tail' or 'mean', got {method!r}")
    return out.reshape(event)


def rhat(draws: torch.Tensor) -> torch.Tensor:
    """The rank-normalized split R-hat per event element of draws shaped (chains, draws, *event): the larger of the
    split R-hat of the rank-normalized draws and of their folded (|x - median|) rank-normalized values. At least 2
    chains (as arviz)."""
    x = _draws(draws)
    if x.shape[0] < 2:
        raise ValueError(f"draws needs at least 2 chains for R-hat, got {x.shape[0]}")
    x = _split(x)
    folded = (x - _quantile(x.reshape(-1, x.shape[2]), 0.5)).abs()
    return torch.maximum(_rhat(_z_scale(x)), _rhat(_z_scale(folded))).reshape(draws.shape[2:])


def summary(draws: torch.Tensor) -> dict[str, torch.Tensor]:
    """arviz's summary columns per event element of draws (chains, draws, *event), float64 on the draws' device:
    mean, sd, mcse_mean (sd / sqrt(the mean's ESS)), ess_bulk, ess_tail, r_hat (NaN for a single chain)."""
    x = _draws(draws)
    event = draws.shape[2:]
    sd = x.reshape(-1, x.shape[2]).std(0)
    out = {"mean": x.mean((0, 1)), "sd": sd, "mcse_mean": sd / ess(x, "mean").sqrt(), "ess_bulk": ess(x),
           "ess_tail": ess(x, "tail"),
           "r_hat": rhat(x) if x.shape[0] > 1 else torch.full_like(sd, float("nan"))}
    return {k: v.reshape(event) for k, v in out.items()}
