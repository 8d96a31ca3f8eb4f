"""Hamiltonian Monte Carlo for many chains at once (Duane et al. 1987; Neal 2011), and the driver it shares with
NUTS (fastgen.mcmc.nuts): every chain its own step size and mass (a diagonal through the fused leapfrog op, or a
dense one as the identity on whitened coordinates), the gradient at the end of a trajectory reused at the start of
the next (L gradient evaluations per transition, log p at the trajectory's end coming with its gradient), the
Metropolis test and the step-size adaptation on the device (no host read inside a fixed-length run), Stan's
windowed mass adaptation, ChEES trajectory-length adaptation, divergent and non-finite trajectories rejected and
counted.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable

import torch

from ..core.constants import MAX_GMM_COMPONENTS, MAX_GMM_DIM
from ..core.rng import hmc_layout, reserve, resolve_seed
from ..ops import gmm_hmc_, leapfrog_, normal, uniform
from ..reference.hmc import leapfrog_ as _reference_leapfrog
from ..targets import GaussianMixture
from .langevin import DualAveraging, _check_steps, _checked_step_size, _log_prob_fn, _start

__all__ = ["HMCResult", "hmc", "leapfrog"]

DIVERGENCE = 1000.0  # an energy error above this is a divergence (Stan's threshold)
MAX_LEAPFROG = 1000  # ChEES never asks for more leapfrog steps per transition (TFP's max_leapfrog_steps)


@dataclasses.dataclass
class HMCResult:
    """What :func:`hmc` and :func:`~fastgen.mcmc.nuts` return: ``draws`` (chains, n_steps, *event) (the states
    after each kept transition, the layout fastgen.mcmc.ess and rhat read), and per chain: ``accept_rate`` (the mean
    acceptance statistic over the kept transitions: the Metropolis probability for HMC, the tree's mean over its
    leaves for NUTS), ``divergences`` (kept transitions whose energy error exceeded 1000 or was not finite),
    ``step_size`` (after adaptation), ``gradients`` (gradient evaluations spent on the chain over the kept
    transitions); ``inverse_mass``: M^-1 after adaptation (None for the identity; a diagonal, event-shaped or one
    per chain, or with ``dense_mass`` a (n, n) matrix or one per chain, n = the event's size); NUTS's
    ``tree_depth`` (chains, n_steps) and ChEES's ``trajectory_length`` (None otherwise)."""

    draws: torch.Tensor
    accept_rate: torch.Tensor
    divergences: torch.Tensor
    step_size: torch.Tensor
    inverse_mass: torch.Tensor | None
    gradients: torch.Tensor
    tree_depth: torch.Tensor | None = None
    trajectory_length: float | None = None


def _work(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _inverse_mass(mass, x: torch.Tensor) -> torch.Tensor | None:
    """The inverse of a diagonal mass as the leapfrog op takes it (None for the identity; else contiguous float32
    of the event's shape or one per chain (B, *event)): from a positive number, an event-shaped tensor, or one per
    chain."""
    if mass is None:
        return None
    if isinstance(mass, (int, float)) and not isinstance(mass, bool):
        if not math.isfinite(mass) or mass <= 0:
            raise ValueError(f"mass must be positive and finite, got {mass!r}")
        return torch.full(x.shape[1:], 1.0 / mass, device=x.device, dtype=_work(x))
    if not isinstance(mass, torch.Tensor):
        raise TypeError(f"mass must be None, a number or a tensor, got {type(mass).__name__}")
    if tuple(mass.shape) not in (tuple(x.shape), tuple(x.shape[1:])):
        raise ValueError(f"mass (a diagonal) must have the event shape {tuple(x.shape[1:])} or one per chain "
                         f"{tuple(x.shape)}, got {tuple(mass.shape)}")
    if not bool(torch.isfinite(mass).all()) or bool((mass <= 0).any()):
        raise ValueError("mass must be positive and finite (a positive-definite diagonal)")
    return (1.0 / mass).to(x.device, _work(x)).contiguous()


def _dense_factor(mass, x: torch.Tensor) -> torch.Tensor | None:
    """C with C C^T = M^-1 (lower triangular, (n, n) or one per chain (B, n, n)) from a dense mass M: a positive
    number, an (n, n) or a (B, n, n) symmetric positive-definite tensor; None for the identity."""
    chains, n = x.shape[0], x[0].numel()
    if mass is None:
        return None
    if isinstance(mass, (int, float)) and not isinstance(mass, bool):
        if not math.isfinite(mass) or mass <= 0:
            raise ValueError(f"mass must be positive and finite, got {mass!r}")
        return torch.eye(n, device=x.device, dtype=_work(x)) / math.sqrt(mass)
    if not isinstance(mass, torch.Tensor):
        raise TypeError(f"mass must be None, a number or a tensor, got {type(mass).__name__}")
    if tuple(mass.shape) not in ((n, n), (chains, n, n)):
        raise ValueError(f"mass (dense) must have shape ({n}, {n}) or one per chain ({chains}, {n}, {n}), got "
                         f"{tuple(mass.shape)}")
    m = mass.detach().to(torch.float64)
    asymmetry = (m - m.transpose(-1, -2)).abs().amax((-2, -1)) if m.numel() else torch.zeros(())
    if not bool(torch.isfinite(m).all()) or bool((asymmetry > 1e-5 * m.abs().amax((-2, -1))).any()):
        raise ValueError("mass must be a finite symmetric matrix (to 1e-5 of its largest entry)")
    m = 0.5 * (m + m.transpose(-1, -2))
    factor, info = torch.linalg.cholesky_ex(m)
    if bool((info != 0).any()):
        raise ValueError("mass must be positive definite (its Cholesky factorization fails)")
    inverse = torch.cholesky_inverse(factor)
    return torch.linalg.cholesky(inverse).to(x.device, _work(x))


class _Metric:
    """The kinetic energy p^T M^-1 p / 2 on flattened chains (B, n): the identity, a diagonal M^-1 (passed to the
    fused leapfrog op), or a dense M^-1 = C C^T, run as the identity on whitened coordinates w = C^-1 q (the same
    Hamiltonian dynamics; log p and its gradient are evaluated at q = C w and the gradient becomes C^T grad)."""

    def __init__(self, mass, q: torch.Tensor, dense: bool):
        chains, n = q.shape[0], q[0].numel()
        self.dense, self.diag, self.factor = dense, None, None
        if dense:
            self.factor = _dense_factor(mass, q)
        else:
            diag = _inverse_mass(mass, q)
            if diag is not None:
                self.diag = diag.reshape(chains, n) if diag.dim() == q.dim() else diag.reshape(n)

    def inverse_mass(self, rows: torch.Tensor | None = None) -> torch.Tensor | None:
        """The diagonal the leapfrog op takes (of the chains `rows`), or None."""
        if self.diag is None or self.diag.dim() == 1 or rows is None:
            return self.diag
        return self.diag[rows].contiguous()

    def _factor(self, rows):
        return self.factor if self.factor.dim() == 2 or rows is None else self.factor[rows]

    def to_q(self, w: torch.Tensor, rows=None) -> torch.Tensor:
        if self.factor is None:
            return w
        c = self._factor(rows)
        return (w @ c.T if c.dim() == 2 else torch.bmm(c, w.unsqueeze(2)).squeeze(2)).contiguous()

    def to_w(self, q: torch.Tensor) -> torch.Tensor:
        if self.factor is None:
            return q
        c = self.factor
        if c.dim() == 2:
            return torch.linalg.solve_triangular(c, q.T, upper=False).T.contiguous()
        return torch.linalg.solve_triangular(c, q.unsqueeze(2), upper=False).squeeze(2).contiguous()

    def grad_w(self, grad: torch.Tensor, rows=None) -> torch.Tensor:
        """C^T grad, the gradient in w."""
        if self.factor is None:
            return grad
        c = self._factor(rows)
        return (grad @ c if c.dim() == 2 else torch.bmm(grad.unsqueeze(1), c).squeeze(1)).contiguous()

    def evaluator(self, evaluate: Callable, rows=None) -> Callable:
        """w -> (log p, grad_w log p) for the chains `rows` (all when None)."""
        if self.factor is None:
            return evaluate

        def at(w):
            log_p, grad = evaluate(self.to_q(w, rows))
            return log_p, self.grad_w(grad, rows)

        return at

    def set(self, estimate: torch.Tensor) -> None:
        """Take a covariance estimate (flattened: (n,) / (B, n) diagonal, (n, n) / (B, n, n) dense) as M^-1."""
        if self.dense:
            self.factor = torch.linalg.cholesky(estimate.to(torch.float64)).to(estimate.dtype)
        else:
            self.diag = estimate.contiguous()

    def covariance(self, q: torch.Tensor) -> torch.Tensor | None:
        """M^-1 as HMCResult reports it: event-shaped diagonals, (n, n) matrices."""
        if self.dense:
            return None if self.factor is None else self.factor @ self.factor.transpose(-1, -2)
        if self.diag is None:
            return None
        return self.diag.reshape(q.shape if self.diag.dim() == 2 else q.shape[1:])


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
    """Running mean and sum of squared deviations (a diagonal) or of outer products (dense) of flattened chains'
    states (B, n) since transition `start`, per chain or pooled over the chains (Chan et al.'s batch update), on the
    device."""

    def __init__(self, q: torch.Tensor, pooled: bool, dense: bool, start: int = 0):
        shape = q.shape[1:] if pooled else q.shape
        self.mean = torch.zeros(shape, device=q.device, dtype=_work(q))
        self.m2 = torch.zeros(shape + shape[-1:] if dense else shape, device=q.device, dtype=_work(q))
        self.pooled, self.dense, self.count, self.start = pooled, dense, 0, start

    def _outer(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a.unsqueeze(-1) * b.unsqueeze(-2) if self.dense else a * b

    def add(self, q: torch.Tensor) -> None:
        x = q.to(self.mean.dtype)
        batch = x.shape[0] if self.pooled else 1
        mean = x.mean(0) if self.pooled else x
        total = self.count + batch
        delta = mean - self.mean
        self.mean += delta * (batch / total)
        if self.pooled:
            centred = x - mean
            self.m2 += centred.T @ centred if self.dense else centred.square().sum(0)
        self.m2 += self._outer(delta, delta) * (self.count * batch / total)
        self.count = total

    def covariance(self) -> torch.Tensor:
        """The regularized estimate (Stan's): n / (n + 5) S + 1e-3 * 5 / (n + 5) (times I when dense)."""
        n = self.count
        cov = n / (n + 5.0) * (self.m2 / max(n - 1, 1))
        shrink = 1e-3 * 5.0 / (n + 5.0)
        if self.dense:
            return (cov + shrink * torch.eye(cov.shape[-1], device=cov.device, dtype=cov.dtype)).contiguous()
        return (cov + shrink).contiguous()


def _halton(index: int) -> float:
    """The base-2 van der Corput sequence at index >= 1: 1/2, 1/4, 3/4, 1/8, ... (ChEES's quasi-random jitter)."""
    value, fraction = 0.0, 0.5
    while index:
        value += fraction * (index & 1)
        index >>= 1
        fraction /= 2
    return value


def _kinetic(p: torch.Tensor, inverse_mass: torch.Tensor | None) -> torch.Tensor:
    return 0.5 * (p * p if inverse_mass is None else p * p * inverse_mass).sum(1)


def _momentum(shape, dtype, inverse_mass, seed: int, offset: int, device):
    """p ~ N(0, M) for a diagonal M (or the identity), and the next stream offset."""
    xi = normal(shape, seed, offset, device=device).to(dtype)
    p = xi if inverse_mass is None else xi / inverse_mass.sqrt().to(dtype)
    return p, offset + reserve(xi.numel())


class _HMC:
    """One HMC transition of every chain: a momentum draw, a trajectory of a fixed number of leapfrog steps (its
    step size jittered per chain) or, with ChEES, of a jittered length ceil(h_t T / eps) (h_t the van der Corput
    sequence), and the Metropolis test. With a Gaussian mixture (`mixture`) a transition is one launch of
    fastgen.ops.gmm_hmc_, which draws what the general path draws (log p and its gradient are then kept inside
    the kernel, not returned)."""

    def __init__(self, n_leapfrog: int, jitter: float, adapt_length: bool, mixture=None):
        self.n_leapfrog, self.jitter, self.chees, self.mixture = n_leapfrog, jitter, adapt_length, mixture
        self.count, self.length, self.eps_host = 0, None, None
        self.moment, self.log_lengths = 0.0, []

    def __call__(self, w, log_p, grad, eps, metric: _Metric, evaluate, seed, offset, adapting):
        chains = w.shape[0]
        if self.mixture is not None:  # the whole trajectory and the Metropolis test in one launch
            scale = 1.0 + self.jitter * (2.0 * uniform((chains,), seed, offset + reserve(w.numel()), device=w.device)
                                         - 1.0)
            prob, divergent = gmm_hmc_(w, self.mixture, 1, self.n_leapfrog, (eps * scale).float().contiguous(), seed,
                                       offset)
            stride = hmc_layout(w.numel(), chains)[0]
            return w, log_p, grad, prob, divergent.bool(), self.n_leapfrog, None, offset + stride
        inverse_mass = metric.inverse_mass()
        p, offset = _momentum(w.shape, w.dtype, inverse_mass, seed, offset, w.device)
        if self.chees:
            self.count += 1
            if adapting or self.eps_host is None:  # one host read per warm-up transition (the trajectory's size)
                self.eps_host = float(eps.mean())
            if self.length is None:
                self.length = self.n_leapfrog * self.eps_host
            h = _halton(self.count)
            steps, step = max(1, min(MAX_LEAPFROG, math.ceil(h * self.length / self.eps_host))), eps
        else:
            scale = 1.0 + self.jitter * (2.0 * uniform((chains,), seed, offset, device=w.device) - 1.0)
            offset += reserve(chains)
            steps, step = self.n_leapfrog, eps * scale
        w_new, p_new, log_p_new, grad_new = leapfrog(w, p, grad, metric.evaluator(evaluate), step, steps,
                                                     inverse_mass)
        error = (_kinetic(p_new, inverse_mass) - log_p_new.to(w.dtype)) - (_kinetic(p, inverse_mass)
                                                                           - log_p.to(w.dtype))  # H' - H
        finite = torch.isfinite(error) & torch.isfinite(log_p_new)
        divergent = ~finite | (error > DIVERGENCE)
        prob = torch.where(finite, torch.exp(-error.clamp(min=0)), torch.zeros_like(error)).float()
        accept = (uniform((chains,), seed, offset, device=w.device) < prob) & ~divergent
        offset += reserve(chains)
        if self.chees and adapting:
            self._chees(w, w_new, p_new, inverse_mass, prob, divergent, h)
        keep = accept[:, None]
        return (torch.where(keep, w_new, w), torch.where(accept, log_p_new, log_p), torch.where(keep, grad_new, grad),
                prob, divergent, steps, None, offset)

    def _chees(self, w, w_new, p_new, inverse_mass, prob, divergent, h):
        """One Adam ascent step (rate 0.025, beta1 0, beta2 0.95: TFP's defaults) on log T of the ChEES criterion
        E[(|q' - E q'|^2 - |q - E q|^2)^2] / 4, its gradient estimated over the chains weighted by their
        acceptance (Hoffman, Radul & Sountsov 2021); one host read."""
        valid = (~divergent).to(w.dtype)
        m0 = w.mean(0)
        m1 = (w_new * valid[:, None]).sum(0) / valid.sum().clamp(min=1)
        c0, c1 = w - m0, torch.where(valid[:, None] > 0, w_new - m1, torch.zeros_like(w_new))
        velocity = p_new if inverse_mass is None else p_new * inverse_mass
        g = h * self.length * (c1.square().sum(1) - c0.square().sum(1)) * (c1 * velocity).sum(1)
        weights = prob.to(w.dtype) * valid
        gradient = float(torch.nan_to_num((weights * g).sum() / weights.sum().clamp(min=1e-12)))
        self.moment = 0.95 * self.moment + 0.05 * gradient * gradient
        corrected = self.moment / (1.0 - 0.95 ** self.count)
        log_length = math.log(self.length) + 0.025 * gradient / (math.sqrt(corrected) + 1e-8)
        cap = math.log(MAX_LEAPFROG * self.eps_host)
        self.length = math.exp(min(log_length, cap))
        self.log_lengths.append(math.log(self.length))

    def end_warmup(self) -> None:
        """ChEES: T becomes the geometric mean of its values over the second half of the warm-up."""
        if self.chees and self.log_lengths:
            tail = self.log_lengths[len(self.log_lengths) // 2:]
            self.length = math.exp(sum(tail) / len(tail))


def _initial_step_size(w, log_p, grad, eps, metric: _Metric, evaluate, seed: int, offset: int, pooled: bool):
    """Stan's (and NumPyro's) start of the warm-up: from one momentum draw, each chain's step size is doubled while
    one leapfrog step's acceptance exp(H - H') stays above 0.8 (or halved while it stays below), and ends at the
    first one past the crossing; pooled, the chains' mean acceptance decides for all. At most 100 tries, a host
    read each. Returns (step sizes, the next stream offset)."""
    inverse_mass, at = metric.inverse_mass(), metric.evaluator(evaluate)
    p, offset = _momentum(w.shape, w.dtype, inverse_mass, seed, offset, w.device)
    h0 = _kinetic(p, inverse_mass) - log_p.to(w.dtype)
    target = math.log(0.8)

    def log_accept(step):
        _, p1, log_p1, _ = leapfrog(w, p, grad, at, step, 1, inverse_mass)
        a = torch.nan_to_num(h0 - (_kinetic(p1, inverse_mass) - log_p1.to(w.dtype)), nan=-math.inf).clamp(max=0)
        return (torch.logsumexp(a, 0) - math.log(a.numel())).expand_as(a) if pooled else a

    up = log_accept(eps) > target
    active = torch.ones_like(up)
    for _ in range(100):
        eps = torch.where(active, torch.where(up, eps * 2, eps / 2), eps)
        a = log_accept(eps)
        active = active & torch.where(up, a > target, a <= target)
        if not bool(active.any()):
            break
    return eps, offset


def _run(kernel, x0, log_prob, energy, *, n_steps, step_size, mass, dense_mass, seed, generator, adapt_steps,
         target_accept, adapt, adapt_mass, name) -> HMCResult:
    """The chains' loop shared by HMC and NUTS: validation, the metric, the adaptation (dual averaging of the step
    size, Stan's mass windows), the kept draws and the per-chain statistics. ``kernel(w, log_p, grad, eps, metric,
    evaluate, seed, offset, adapting)`` runs one transition of every chain on flattened (B, n) states and returns
    (w, log_p, grad, acceptance statistic, divergent, gradient evaluations (an int, or one per chain), tree depth or
    None, offset)."""
    evaluate = _log_prob_fn(log_prob, energy)
    n_steps = _check_steps(n_steps)
    adapt_steps = _check_steps(adapt_steps, "adapt_steps")
    if not 0.0 < float(target_accept) < 1.0:
        raise ValueError(f"target_accept must be in (0, 1), got {target_accept!r}")
    if adapt not in ("shared", "per_chain"):
        raise ValueError(f"adapt must be 'shared' or 'per_chain', got {adapt!r}")
    q = _start(x0)
    chains, event = q.shape[0], q.shape[1:]
    eps = _checked_step_size(step_size, q)
    eps = eps.expand(chains).clone() if isinstance(eps, torch.Tensor) else torch.full((chains,), eps, device=q.device)
    metric = _Metric(mass, q, bool(dense_mass))

    def flat(x):
        log_p, grad = evaluate(x.view(x.shape[0], *event))
        return log_p, grad.reshape(x.shape[0], -1)

    qf = q.reshape(chains, -1)
    log_p, grad = flat(qf)
    bad = ~torch.isfinite(log_p)
    if bool(bad.any()):
        raise ValueError(f"log_prob must be finite at x0 for every chain; it is not for {int(bad.sum())} of {chains} "
                         f"chain(s), the first chain {int(bad.nonzero()[0, 0])}")
    w, grad = metric.to_w(qf), metric.grad_w(grad)
    seed = resolve_seed(seed, generator)
    offset = 0
    pooled = adapt == "shared"
    if adapt_steps:
        eps, offset = _initial_step_size(w, log_p, grad, eps, metric, flat, seed, offset, pooled)
    adaptation = DualAveraging(eps, target_accept)
    windows = _mass_windows(adapt_steps) if adapt_mass else set()
    welford = _Welford(qf, pooled, metric.dense) if windows else None
    draws = torch.empty((n_steps, chains, qf.shape[1]), device=q.device, dtype=q.dtype)
    accept_total = torch.zeros(chains, device=q.device)
    divergences = torch.zeros(chains, device=q.device, dtype=torch.int64)
    gradients = torch.zeros(chains, device=q.device, dtype=torch.int64)
    depths = None
    for t in range(adapt_steps + n_steps):
        adapting = t < adapt_steps
        w, log_p, grad, stat, divergent, evaluations, depth, offset = kernel(w, log_p, grad, eps, metric, flat, seed,
                                                                            offset, adapting)
        if adapting:
            signal = stat.mean().expand(chains) if pooled else stat
            eps = adaptation.update(signal, final=t == adapt_steps - 1)
            if welford is not None and welford.start <= t:
                welford.add(metric.to_q(w))
            if t + 1 in windows:  # a slow window's end: its covariance becomes M^-1
                qf = metric.to_q(w)
                metric.set(welford.covariance())
                w = metric.to_w(qf)
                if metric.dense:  # the gradient in the new coordinates (one evaluation per window)
                    log_p, grad = flat(qf)
                    grad = metric.grad_w(grad)
                welford = _Welford(qf, pooled, metric.dense, start=t + 1)
                adaptation = DualAveraging(eps, target_accept)
            elif not windows and t + 1 == adapt_steps // 4:  # Stan's restart after the initial window
                adaptation = DualAveraging(eps, target_accept)
            if t == adapt_steps - 1 and hasattr(kernel, "end_warmup"):
                kernel.end_warmup()
        else:
            draws[t - adapt_steps] = metric.to_q(w)
            accept_total += stat
            divergences += divergent.long()
            gradients += evaluations
            if depth is not None:
                if depths is None:
                    depths = torch.zeros((n_steps, chains), device=q.device, dtype=torch.int64)
                depths[t - adapt_steps] = depth
    if n_steps and bool((divergences > 0).any()):  # one host read, after the chains
        warnings.warn(f"fastgen.{name}: {int(divergences.sum())} divergent or non-finite trajectories over "
                      f"{int((divergences > 0).sum())} of {chains} chains (rejected; result.divergences counts them "
                      "per chain): a smaller step size or a reparametrization may help", RuntimeWarning,
                      stacklevel=3)
    length = getattr(kernel, "length", None) if getattr(kernel, "chees", False) else None
    return HMCResult(draws.transpose(0, 1).reshape(chains, n_steps, *event), accept_total / max(n_steps, 1),
                     divergences, eps, metric.covariance(q), gradients,
                     None if depths is None else depths.transpose(0, 1), length)


def hmc(
    x0: torch.Tensor,  # (B, ...) initial chains
    *,
    log_prob: Callable | None = None,
    energy: Callable | GaussianMixture | None = None,
    n_steps: int,
    step_size,
    n_leapfrog: int,
    mass=None,
    dense_mass: bool = False,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    adapt_steps: int = 0,
    target_accept: float = 0.8,
    adapt: str = "shared",
    adapt_mass: bool = False,
    adapt_length: bool = False,
    jitter: float = 0.2,
) -> HMCResult:
    """Hamiltonian Monte Carlo on a batch of independent chains. Per transition: momentum p ~ N(0, M), n_leapfrog
    leapfrog steps of size eps (see :func:`leapfrog`), and the Metropolis test min(1, exp(H(q, p) - H(q', p'))),
    H = -log p(q) + p^T M^-1 p / 2, all chains at once. log_prob (x -> log p(x), shape (B,)) or energy (U = -log p);
    its gradient by autograd. step_size: a number or one per chain (B,). mass: a diagonal, one for all chains
    (event-shaped) or one per chain (B, *event), or a number; with ``dense_mass`` a matrix (n, n) or one per chain
    (B, n, n) over the flattened event (run as the identity on w = C^-1 q, C C^T = M^-1).

    During the first ``adapt_steps`` transitions the step size is tuned by dual averaging toward ``target_accept``
    (from Stan's initial search: step_size doubled or halved until one leapfrog step's acceptance crosses 0.8; Stan's
    constants; restarted, as Stan's windows do, after the first quarter, which the chains spend approaching
    the typical set), then frozen at its average; the next ``n_steps`` transitions are kept. ``adapt="shared"``
    (default) feeds every chain's step size the mean acceptance over the chains (many chains make the signal nearly
    noiseless, and the adapted value lands on the target), "per_chain" each its own (chains with different masses
    or targets). With ``adapt_mass`` the mass is estimated too (the diagonal, or with ``dense_mass`` the full
    covariance), in Stan's windows (an initial 15% of the warm-up for the step size alone, slow windows doubling in
    length, a final 10%): at each slow window's end M^-1 becomes the draws' covariance over the window (Welford,
    pooled over the chains when shared, regularized as Stan: n / (n + 5) S + 1e-3 * 5 / (n + 5) I) and the
    step-size adaptation restarts; ``mass`` is then the starting point. Each transition uses its chain's step size
    times a uniform factor in [1 - jitter, 1 + jitter] (Neal 2011's randomized step size: with a fixed trajectory
    length the acceptance is not monotone in the step size on a Gaussian, which misleads the adaptation).

    With ``adapt_length`` (ChEES-HMC, Hoffman, Radul & Sountsov 2021; needs adapt="shared") the trajectory length
    T starts at n_leapfrog x step_size and is tuned during the warm-up by Adam on the ChEES criterion, estimated over
    the chains; every transition runs ceil(h_t T / eps) leapfrog steps, h_t the van der Corput sequence (the jitter
    replaces the step-size jitter). Its warm-up reads two host values per transition (eps and the gradient).
    Noise: fastgen's counter-based stream under `seed`.

    A trajectory whose energy error exceeds 1000 or is not finite (a NaN or -inf log p on the way) is rejected: the
    chain stays, never NaN, and it counts as a divergence. The start must have finite log p for every chain.

    ``energy=`` a :class:`~fastgen.targets.GaussianMixture` (dimension and components <= 64) with the identity mass
    and no mass or length adaptation runs each transition as one launch of :func:`fastgen.ops.gmm_hmc_` (the
    trajectory with the exact gradient, and the Metropolis test), on the same noise as the general path."""
    n_leapfrog = _check_steps(n_leapfrog, "n_leapfrog")
    if n_leapfrog < 1:
        raise ValueError("n_leapfrog must be an int >= 1, got 0")
    if isinstance(jitter, bool) or not isinstance(jitter, (int, float)) or not 0.0 <= jitter < 1.0:
        raise ValueError(f"jitter must be a number in [0, 1), got {jitter!r}")
    if adapt_length and adapt != "shared":
        raise ValueError("adapt_length (ChEES) tunes one trajectory length for all chains: it needs adapt='shared'")
    fused = (isinstance(energy, GaussianMixture) and mass is None and not adapt_mass and not adapt_length
             and isinstance(x0, torch.Tensor) and x0.dim() == 2 and x0.shape[-1] == energy.dim
             and x0.dtype != torch.float64 and energy.dim <= MAX_GMM_DIM and energy.n_components <= MAX_GMM_COMPONENTS)
    kernel = _HMC(n_leapfrog, jitter, bool(adapt_length), energy if fused else None)
    return _run(kernel, x0, log_prob, energy, n_steps=n_steps, step_size=step_size, mass=mass, dense_mass=dense_mass,
                seed=seed, generator=generator, adapt_steps=adapt_steps, target_accept=target_accept, adapt=adapt,
                adapt_mass=adapt_mass, name="hmc")
