"""Hamiltonian Monte Carlo for many chains at once (Duane et al. 1987; Neal 2011): every chain its own step size
and (diagonal) mass, the gradient at the end of a trajectory reused at the start of the next (L gradient
evaluations per transition, log p at the trajectory's end coming with its gradient), the Metropolis test and the
step-size adaptation on the device (no host read inside the loop), divergent and non-finite trajectories rejected
and counted.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable

import torch

from ..core.rng import reserve, resolve_seed
from ..ops import leapfrog_, normal, uniform
from ..reference.hmc import leapfrog_ as _reference_leapfrog
from ..targets import GaussianMixture
from .langevin import DualAveraging, _check_steps, _checked_step_size, _log_prob_fn, _start

__all__ = ["HMCResult", "hmc", "leapfrog"]

DIVERGENCE = 1000.0  # an energy error above this is a divergence (Stan's threshold)


@dataclasses.dataclass
class HMCResult:
    """What :func:`hmc` returns: ``draws`` (chains, n_steps, *event) (the states after each kept transition, the
    layout fastgen.mcmc.ess and rhat read), and per chain: ``accept_rate`` (the mean Metropolis acceptance
    probability over the kept transitions), ``divergences`` (kept transitions whose energy error exceeded 1000 or
    was not finite: rejected), ``step_size`` (after adaptation); and ``inverse_mass``, the diagonal M^-1 used
    (after adaptation; None for the identity)."""

    draws: torch.Tensor
    accept_rate: torch.Tensor
    divergences: torch.Tensor
    step_size: torch.Tensor
    inverse_mass: torch.Tensor | None


def _per_chain(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A (B,) per-chain value shaped to broadcast over a chain's elements."""
    return v.reshape(-1, *[1] * (like.dim() - 1))


def _inverse_mass(mass, x: torch.Tensor) -> torch.Tensor | None:
    """The inverse of a diagonal mass as the leapfrog op takes it (None for the identity; else contiguous float32
    of the event's shape or one per chain (B, *event)): from a positive number, an event-shaped tensor, or one per
    chain."""
    if mass is None:
        return None
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    if isinstance(mass, (int, float)) and not isinstance(mass, bool):
        if not math.isfinite(mass) or mass <= 0:
            raise ValueError(f"mass must be positive and finite, got {mass!r}")
        return torch.full(x.shape[1:], 1.0 / mass, device=x.device, dtype=work)
    if not isinstance(mass, torch.Tensor):
        raise TypeError(f"mass must be None, a number or a tensor, got {type(mass).__name__}")
    if tuple(mass.shape) not in (tuple(x.shape), tuple(x.shape[1:])):
        raise ValueError(f"mass (a diagonal) must have the event shape {tuple(x.shape[1:])} or one per chain "
                         f"{tuple(x.shape)}, got {tuple(mass.shape)}")
    if not bool(torch.isfinite(mass).all()) or bool((mass <= 0).any()):
        raise ValueError("mass must be positive and finite (a positive-definite diagonal)")
    return (1.0 / mass).to(x.device, work).contiguous()


def leapfrog(q: torch.Tensor, p: torch.Tensor, grad: torch.Tensor, evaluate: Callable, step_size: torch.Tensor,
             n_leapfrog: int, inverse_mass: torch.Tensor | None):
    """n_leapfrog leapfrog steps of Hamilton's equations for H = -log p(q) + p^T M^-1 p / 2 from (q, p), grad =
    grad log p(q): a half kick and a drift, then per step the gradient at the new q and one fused pass of
    fastgen.ops.leapfrog_ (a full kick and a drift; the last one a half kick alone). inverse_mass: the diagonal
    M^-1, float32, one value per chain element or per element of every chain, or None. Returns (q, p, log p(q),
    grad log p(q)) at the end (n_leapfrog evaluations); q and p are new tensors. float64 states run the op's
    reference in float64."""
    step = _reference_leapfrog if q.dtype == torch.float64 else leapfrog_
    eps = step_size.to(torch.float64 if q.dtype == torch.float64 else torch.float32).contiguous()
    q, p = q.clone(memory_format=torch.contiguous_format), p.clone(memory_format=torch.contiguous_format)
    step(q, p, grad.contiguous(), eps, inverse_mass, 0.5, True)
    log_p = None
    for k in range(n_leapfrog):
        log_p, grad = evaluate(q)
        last = k == n_leapfrog - 1
        step(q, p, grad.contiguous(), eps, inverse_mass, 0.5 if last else 1.0, not last)
    return q, p, log_p, grad


def _mass_windows(adapt_steps: int) -> set[int]:
    """The ends (transition counts) of Stan's slow windows for a warm-up of `adapt_steps`: after an initial 15%,
    windows of 2.5% of the warm-up (at least 10 transitions) doubling in length, the last stretched to end where
    the final 10% begins."""
    start, end = int(0.15 * adapt_steps), adapt_steps - int(0.1 * adapt_steps)
    size, ends = max(int(0.025 * adapt_steps), 10), []
    while start + size <= end:
        nxt = start + size
        if nxt + 2 * size > end:  # the next window would not fit: this one runs to the end
            nxt = end
        ends.append(nxt)
        start, size = nxt, 2 * size
    return set(ends)


class _Welford:
    """Running mean and sum of squared deviations of the chains' states since transition `start`, per chain or
    pooled over the chains (Chan et al.'s batch update), on the device."""

    def __init__(self, q: torch.Tensor, pooled: bool, start: int = 0):
        work = torch.float64 if q.dtype == torch.float64 else torch.float32
        shape = q.shape[1:] if pooled else q.shape
        self.mean, self.m2 = (torch.zeros(shape, device=q.device, dtype=work) for _ in range(2))
        self.pooled, self.count, self.start = pooled, 0, start

    def add(self, q: torch.Tensor) -> None:
        x = q.to(self.mean.dtype)
        batch = x.shape[0] if self.pooled else 1
        mean = x.mean(0) if self.pooled else x
        m2 = (x - mean).square().sum(0) if self.pooled else torch.zeros_like(x)
        total = self.count + batch
        delta = mean - self.mean
        self.mean += delta * (batch / total)
        self.m2 += m2 + delta.square() * (self.count * batch / total)
        self.count = total

    def inverse_mass(self) -> torch.Tensor:
        """The regularized variance (Stan's): n / (n + 5) var + 1e-3 * 5 / (n + 5), contiguous."""
        n = self.count
        var = self.m2 / max(n - 1, 1)
        return (n / (n + 5.0) * var + 1e-3 * 5.0 / (n + 5.0)).contiguous()


def hmc(
    x0: torch.Tensor,  # (B, ...) initial chains
    *,
    log_prob: Callable | None = None,
    energy: Callable | GaussianMixture | None = None,
    n_steps: int,
    step_size,
    n_leapfrog: int,
    mass=None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    adapt_steps: int = 0,
    target_accept: float = 0.8,
    adapt: str = "shared",
    adapt_mass: bool = False,
    jitter: float = 0.2,
) -> HMCResult:
    """Hamiltonian Monte Carlo on a batch of independent chains. Per transition: momentum p ~ N(0, M), n_leapfrog
    leapfrog steps of size eps (see :func:`leapfrog`), and the Metropolis test min(1, exp(H(q, p) - H(q', p'))),
    H = -log p(q) + p^T M^-1 p / 2, all chains at once. log_prob (x -> log p(x), shape (B,)) or energy (U = -log p);
    its gradient by autograd. step_size: a number or one per chain (B,); mass: a diagonal, one for all chains
    (event-shaped) or one per chain (B, *event), or a number.

    During the first ``adapt_steps`` transitions the step size is tuned by dual averaging toward ``target_accept``
    (Stan's constants; restarted, as Stan's windows do, after the first quarter, which the chains spend approaching
    the typical set), then frozen at its average; the next ``n_steps`` transitions are kept. ``adapt="shared"``
    (default) feeds every chain's step size the mean acceptance over the chains (many chains make the signal nearly
    noiseless, and the adapted value lands on the target), "per_chain" each its own (chains with different masses
    or targets). With ``adapt_mass`` the diagonal mass is estimated too, in Stan's windows (an initial 15% of the
    warm-up for the step size alone, slow windows doubling in length, a final 10%): at each slow window's end the
    inverse mass becomes the draws' variance over the window (Welford, pooled over the chains when shared,
    regularized as Stan: n / (n + 5) var + 1e-3 * 5 / (n + 5)) and the step-size adaptation restarts; ``mass`` is
    then the starting point. Each transition uses its chain's step size times a uniform factor in
    [1 - jitter, 1 + jitter]
    (Neal 2011's randomized step size: with a fixed trajectory length the acceptance is not monotone in the step
    size on a Gaussian, which misleads the adaptation). Noise: fastgen's counter-based stream under `seed`.

    A trajectory whose energy error exceeds 1000 or is not finite (a NaN or -inf log p on the way) is rejected: the
    chain stays, never NaN, and it counts as a divergence. The start must have finite log p for every chain."""
    evaluate = _log_prob_fn(log_prob, energy)
    n_steps = _check_steps(n_steps)
    adapt_steps = _check_steps(adapt_steps, "adapt_steps")
    n_leapfrog = _check_steps(n_leapfrog, "n_leapfrog")
    if n_leapfrog < 1:
        raise ValueError("n_leapfrog must be an int >= 1, got 0")
    if not 0.0 < float(target_accept) < 1.0:
        raise ValueError(f"target_accept must be in (0, 1), got {target_accept!r}")
    if adapt not in ("shared", "per_chain"):
        raise ValueError(f"adapt must be 'shared' or 'per_chain', got {adapt!r}")
    if isinstance(jitter, bool) or not isinstance(jitter, (int, float)) or not 0.0 <= jitter < 1.0:
        raise ValueError(f"jitter must be a number in [0, 1), got {jitter!r}")
    q = _start(x0)
    chains = q.shape[0]
    eps = _checked_step_size(step_size, q)
    eps = eps.expand(chains).clone() if isinstance(eps, torch.Tensor) else torch.full((chains,), eps, device=q.device)
    inverse_mass = _inverse_mass(mass, q)
    log_p, grad = evaluate(q)
    bad = ~torch.isfinite(log_p)
    if bool(bad.any()):
        raise ValueError(f"log_prob must be finite at x0 for every chain; it is not for {int(bad.sum())} of {chains} "
                         f"chain(s), the first chain {int(bad.nonzero()[0, 0])}")
    seed = resolve_seed(seed, generator)
    adaptation = DualAveraging(eps, target_accept)
    windows = _mass_windows(adapt_steps) if adapt_mass else set()
    welford = _Welford(q, pooled=adapt == "shared") if windows else None
    dims = tuple(range(1, q.dim()))
    draws = torch.empty((n_steps, *q.shape), device=q.device, dtype=q.dtype)
    accept_total = torch.zeros(chains, device=q.device)
    divergences = torch.zeros(chains, device=q.device, dtype=torch.int64)
    offset = 0
    for t in range(adapt_steps + n_steps):
        xi = normal(q.shape, seed, offset, device=q.device).to(q.dtype)
        offset += reserve(q.numel())
        p = xi if inverse_mass is None else xi / inverse_mass.sqrt().to(q.dtype)  # p ~ N(0, M)
        scale = 1.0 + jitter * (2.0 * uniform((chains,), seed, offset, device=q.device) - 1.0)
        offset += reserve(chains)
        q_new, p_new, log_p_new, grad_new = leapfrog(q, p, grad, evaluate, eps * scale, n_leapfrog, inverse_mass)
        kinetic, kinetic_new = (0.5 * (v * v if inverse_mass is None else v * v * inverse_mass).sum(dims)
                                for v in (p, p_new))
        error = (kinetic_new - log_p_new.to(q.dtype)) - (kinetic - log_p.to(q.dtype))  # H' - H
        finite = torch.isfinite(error) & torch.isfinite(log_p_new)
        divergent = ~finite | (error > DIVERGENCE)
        prob = torch.where(finite, torch.exp(-error.clamp(min=0)), torch.zeros_like(error)).float()
        u = uniform((chains,), seed, offset, device=q.device)
        offset += reserve(chains)
        accept = (u < prob) & ~divergent
        keep = _per_chain(accept, q)
        q = torch.where(keep, q_new, q)
        grad = torch.where(keep, grad_new, grad)
        log_p = torch.where(accept, log_p_new, log_p)
        if t < adapt_steps:
            signal = prob.mean().expand(chains) if adapt == "shared" else prob
            eps = adaptation.update(signal, final=t == adapt_steps - 1)
            if welford is not None and welford.start <= t:
                welford.add(q)
            if t + 1 in windows:  # a slow window's end: its variance becomes the inverse mass
                inverse_mass = welford.inverse_mass()
                welford = _Welford(q, pooled=adapt == "shared", start=t + 1)
                adaptation = DualAveraging(eps, target_accept)
            elif not windows and t + 1 == adapt_steps // 4:  # Stan's restart after the initial window
                adaptation = DualAveraging(eps, target_accept)
        else:
            draws[t - adapt_steps] = q
            accept_total += prob
            divergences += divergent.long()
    if n_steps and bool((divergences > 0).any()):  # one host read, after the chains
        warnings.warn(f"fastgen.hmc: {int(divergences.sum())} divergent or non-finite trajectories over "
                      f"{int((divergences > 0).sum())} of {chains} chains (rejected; result.divergences counts them "
                      "per chain): a smaller step size or a reparametrization may help", RuntimeWarning,
                      stacklevel=2)
    return HMCResult(draws.transpose(0, 1), accept_total / max(n_steps, 1), divergences, eps, inverse_mass)
