"""Langevin samplers for any PyTorch model: ULA, MALA and annealed Langevin (NCSN).

The loops hold no host-device sync: offsets into the noise stream are Python
ints, step sizes are floats or device tensors, and each step is one model call
plus one fused op.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable

import torch

from ..core.checks import check_finite
from ..core.rng import reserve, resolve_seed
from ..ops import gmm_langevin_, mala_accept_, mala_propose, ula_step_
from ..ops._common import check_state
from ..targets import GaussianMixture


def _check_steps(n_steps, name: str = "n_steps") -> int:
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 0:
        raise ValueError(f"{name} must be an int >= 0, got {n_steps!r}")
    return n_steps


def _checked_step_size(step_size, x: torch.Tensor):
    """Validate step_size once, before any loop (one host read for a device tensor)."""
    if isinstance(step_size, torch.Tensor):
        if step_size.numel() not in (1, x.shape[0]):
            raise ValueError(f"step_size must be a float or a tensor of shape () or ({x.shape[0]},), "
                             f"got {tuple(step_size.shape)}")
        if not bool(torch.isfinite(step_size).all()) or bool((step_size <= 0).any()):
            raise ValueError("step_size must be finite and > 0 for every chain")
        return step_size.to(device=x.device, dtype=torch.float32)
    if isinstance(step_size, bool) or not isinstance(step_size, (int, float)) or not math.isfinite(step_size) \
            or step_size <= 0:
        raise ValueError(f"step_size must be finite and > 0, got {step_size!r}")
    return float(step_size)


def _start(x0: torch.Tensor) -> torch.Tensor:
    check_state(x0, "x0") if x0.is_contiguous() else check_state(x0.contiguous(), "x0")
    check_finite((x0, "x0"))
    return x0.detach().clone(memory_format=torch.contiguous_format)


def _check_output(value, x: torch.Tensor, name: str, shape) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must return a torch.Tensor, got {type(value).__name__}")
    if tuple(value.shape) != tuple(shape):
        raise ValueError(f"{name} must return a tensor of shape {tuple(shape)} for x of shape {tuple(x.shape)}, "
                         f"got {tuple(value.shape)}")
    return value


def _energy_grad(energy: Callable, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(U(x), grad U(x)) by autograd."""
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        u = _check_output(energy(xg), x, "energy", (x.shape[0],))
        (grad,) = torch.autograd.grad(u.sum(), xg)
    return u.detach(), grad


def _score_fn(score, energy) -> Callable[[torch.Tensor], torch.Tensor]:
    if (score is None) == (energy is None):
        raise ValueError("give exactly one of score= (x -> grad log p(x)) and energy= (x -> U(x) of shape (B,))")
    if score is not None:
        if not callable(score):
            raise TypeError(f"score must be callable, got {type(score).__name__}")
        return lambda x: _check_output(score(x), x, "score", x.shape)
    if not callable(energy) and not isinstance(energy, GaussianMixture):
        raise TypeError(f"energy must be callable or a GaussianMixture, got {type(energy).__name__}")
    fn = energy.energy if isinstance(energy, GaussianMixture) else energy
    return lambda x: _energy_grad(fn, x)[1].neg_()


def langevin(
    x0: torch.Tensor,  # (B, ...) initial chains
    *,
    score: Callable | None = None,
    energy: Callable | GaussianMixture | None = None,
    n_steps: int,
    step_size,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    clamp: tuple[float | None, float | None] | None = None,
    grad_clip: float | None = None,
    thin: int | None = None,
    callback: Callable | None = None,
):
    """Unadjusted Langevin algorithm for a batch of chains:

        x_{t+1} = x_t + h grad log p(x_t) + sqrt(2h) xi_t,   xi_t ~ N(0, I).

    Args:
        x0: initial states, shape (B, ...), float32/float16/bfloat16 (not modified).
        score: x -> grad log p(x), same shape as x. Or:
        energy: x -> U(x) = -log p(x) + const, shape (B,); its gradient comes by
            autograd. A :class:`~fastgen.targets.GaussianMixture` runs the fused
            in-register kernel instead (without clamp/grad_clip).
        n_steps: number of steps.
        step_size: h, a float or a tensor of shape () or (B,) (one per chain).
        seed, generator: the noise stream's seed (an int) or a generator to draw it from.
        clamp: (lo, hi) bounds applied after every step (e.g. (-1, 1) for images).
        grad_clip: clip each chain's score to this norm before the step.
        thin: also return every thin-th state as a trajectory (T, B, ...).
        callback: called as callback(step, x) after each step.

    Returns:
        samples (B, ...), or (samples, trajectory) when thin is given.
    """
    score_of = _score_fn(score, energy)
    n_steps = _check_steps(n_steps)
    x = _start(x0)
    h = _checked_step_size(step_size, x)
    if thin is not None and (isinstance(thin, bool) or not isinstance(thin, int) or thin < 1):
        raise ValueError(f"thin must be an int >= 1, got {thin!r}")
    if callback is not None and not callable(callback):
        raise TypeError("callback must be callable")
    seed = resolve_seed(seed, generator)
    trajectory = []
    fused = isinstance(energy, GaussianMixture) and clamp is None and grad_clip is None
    if fused and (x.dim() != 2 or x.shape[1] != energy.dim):
        raise ValueError(f"x0 must have shape (B, {energy.dim}) for this mixture, got {tuple(x.shape)}")
    chunk = 1 if callback is not None else (thin or max(n_steps, 1))
    step = 0
    while step < n_steps:
        if fused:
            count = min(chunk, n_steps - step)
            gmm_langevin_(x, energy, count, h, seed, step * x.numel())
        else:
            count = 1
            ula_step_(x, score_of(x), h, seed, step * x.numel(), clamp=clamp, grad_clip=grad_clip)
        step += count
        if callback is not None:
            callback(step, x)
        if thin is not None and step % thin == 0:
            trajectory.append(x.clone())
    if thin is None:
        return x
    traj = torch.stack(trajectory) if trajectory else x.new_empty((0,) + tuple(x.shape))
    return x, traj


def _log_prob_fn(log_prob, energy) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """x -> (log p(x) as float32 (B,), grad log p(x)), one model call with autograd."""
    if (log_prob is None) == (energy is None):
        raise ValueError("give exactly one of log_prob= (x -> log p(x), shape (B,)) and energy= (x -> U(x))")
    if log_prob is not None:
        if not callable(log_prob):
            raise TypeError(f"log_prob must be callable, got {type(log_prob).__name__}")

        def evaluate(x):
            with torch.enable_grad():
                xg = x.detach().requires_grad_(True)
                lp = _check_output(log_prob(xg), x, "log_prob", (x.shape[0],))
                (grad,) = torch.autograd.grad(lp.sum(), xg)
            return lp.detach().float().contiguous(), grad.to(x.dtype)

        return evaluate
    fn = energy.energy if isinstance(energy, GaussianMixture) else energy
    if not callable(fn):
        raise TypeError(f"energy must be callable or a GaussianMixture, got {type(energy).__name__}")

    def evaluate_energy(x):
        u, grad = _energy_grad(fn, x)
        return u.neg().float().contiguous(), grad.neg().to(x.dtype)

    return evaluate_energy


class DualAveraging:
    """Per-chain step-size adaptation by dual averaging (Hoffman & Gelman 2014, Stan's constants gamma = 0.05,
    t0 = 10, kappa = 0.75, mu = log(10 h0)), on the device: ``update(accept_prob)`` returns the next step sizes, and
    with ``final=True`` the averaged ones to keep."""

    def __init__(self, h0: torch.Tensor, target_accept: float):
        self.mu, self.target, self.m = torch.log(10.0 * h0), float(target_accept), 0
        self.h_bar_log, self.running = torch.zeros_like(h0), torch.zeros_like(h0)

    def update(self, accept_prob: torch.Tensor, final: bool = False) -> torch.Tensor:
        self.m += 1
        m = self.m
        self.running.mul_(1.0 - 1.0 / (m + 10.0)).add_((self.target - accept_prob) / (m + 10.0))
        log_h = self.mu - math.sqrt(m) / 0.05 * self.running
        eta = m ** -0.75
        self.h_bar_log.mul_(1.0 - eta).add_(eta * log_h)
        return torch.exp(self.h_bar_log if final else log_h)


def mala(
    x0: torch.Tensor,  # (B, ...) initial chains
    *,
    log_prob: Callable | None = None,
    energy: Callable | GaussianMixture | None = None,
    n_steps: int,
    step_size,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    adapt_steps: int = 0,
    target_accept: float = 0.574,
    thin: int | None = None,
):
    """Metropolis-adjusted Langevin: propose y = x + h grad log p(x) + sqrt(2h) xi, accept with

        min(1, p(y) q(x | y) / (p(x) q(y | x))),   q(y | x) = N(y; x + h grad log p(x), 2h I),

    one model evaluation (log p and its gradient) per transition. During the
    first ``adapt_steps`` transitions each chain's h is tuned on the device by
    dual averaging (Hoffman & Gelman 2014) toward ``target_accept``, then frozen
    at its averaged value; then ``n_steps`` transitions are made.

    With ``thin``, every thin-th kept state is returned too, as a trajectory (T, B, ...) (``traj.transpose(0, 1)``
    is the (chains, draws, ...) layout of fastgen.mcmc.ess and rhat).

    Returns:
        (samples (B, ...), acceptance rate per chain (B,) over the n_steps transitions), and the trajectory when
        thin is given.
    """
    evaluate = _log_prob_fn(log_prob, energy)
    n_steps = _check_steps(n_steps)
    adapt_steps = _check_steps(adapt_steps, "adapt_steps")
    if not 0.0 < float(target_accept) < 1.0:
        raise ValueError(f"target_accept must be in (0, 1), got {target_accept!r}")
    if thin is not None and (isinstance(thin, bool) or not isinstance(thin, int) or thin < 1):
        raise ValueError(f"thin must be an int >= 1, got {thin!r}")
    x = _start(x0)
    chains, numel = x.shape[0], x.numel()
    trajectory = []
    h = _checked_step_size(step_size, x)
    h = h.expand(chains).clone() if isinstance(h, torch.Tensor) else torch.full((chains,), h, device=x.device)
    seed = resolve_seed(seed, generator)
    log_p, grad = evaluate(x)
    accepted_total = torch.zeros(chains, device=x.device)
    adaptation = DualAveraging(h, target_accept)
    offset = 0
    for t in range(adapt_steps + n_steps):
        y = mala_propose(x, grad, h, seed, offset)
        offset += reserve(numel)
        log_p_y, grad_y = evaluate(y)
        accepted, prob = mala_accept_(x, log_p, grad, y, log_p_y, grad_y, h, seed, offset, return_prob=True)
        offset += reserve(chains)
        if t < adapt_steps:
            h = adaptation.update(prob, final=t == adapt_steps - 1)
        else:
            accepted_total += accepted
            if thin is not None and (t - adapt_steps + 1) % thin == 0:
                trajectory.append(x.clone())
    rate = accepted_total / max(n_steps, 1)
    stuck = ~torch.isfinite(log_p)
    count = int(stuck.sum())  # one host read, after the chains
    if count:
        warnings.warn(f"fastgen.mala: log_prob is not finite (NaN or -inf) at the state of {count} of {chains} "
                      f"chain(s), the first chain {int(stuck.nonzero()[0, 0])}: such a chain rejects every proposal "
                      "and stays where it is", RuntimeWarning, stacklevel=2)
    if thin is None:
        return x, rate
    return x, rate, torch.stack(trajectory) if trajectory else x.new_empty((0,) + tuple(x.shape))


def annealed_langevin(
    x0: torch.Tensor,  # (B, ...) initial chains
    *,
    score: Callable,  # (x, sigma (B,)) -> grad log p_sigma(x)
    sigmas,  # decreasing noise levels sigma_1 > ... > sigma_L
    n_steps_each: int,
    eps: float,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    denoise: bool = True,
):
    """Annealed Langevin dynamics (NCSN, Song & Ermon 2019): for each noise level i,

        x <- x + a_i s(x, sigma_i) + sqrt(2 a_i) xi,   a_i = eps sigma_i^2 / sigma_L^2,

    n_steps_each times; then, with ``denoise``, x <- x + sigma_L^2 s(x, sigma_L).
    ``score`` receives sigma as a (B,) tensor on x's device.
    """
    if not callable(score):
        raise TypeError(f"score must be callable, got {type(score).__name__}")
    if isinstance(sigmas, torch.Tensor):
        sigmas = sigmas.tolist() if sigmas.dim() == 1 else None
    if not isinstance(sigmas, (list, tuple)) or not all(isinstance(s, (int, float)) for s in sigmas):
        raise TypeError("sigmas must be a sequence (or 1-d tensor) of noise levels, e.g. [1.0, 0.5, 0.1]")
    levels = [float(s) for s in sigmas]
    if not levels or any(not math.isfinite(s) or s <= 0 for s in levels):
        raise ValueError("sigmas must be a non-empty sequence of finite values > 0")
    if any(b >= a for a, b in itertools.pairwise(levels)):
        raise ValueError(f"sigmas must decrease (sigma_1 > ... > sigma_L: annealing goes from coarse to fine), "
                         f"got {levels}")
    n_steps_each = _check_steps(n_steps_each, "n_steps_each")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps <= 0:
        raise ValueError(f"eps must be a finite number > 0, got {eps!r}")
    x = _start(x0)
    seed = resolve_seed(seed, generator)
    sigma_last = levels[-1]
    sigma_tensors = torch.tensor(levels, dtype=torch.float32, device=x.device)[:, None].expand(-1, x.shape[0])

    def score_at(i):
        return _check_output(score(x, sigma_tensors[i]), x, "score", x.shape)

    offset = 0
    for i, sigma in enumerate(levels):
        alpha = eps * sigma * sigma / (sigma_last * sigma_last)
        for _ in range(n_steps_each):
            ula_step_(x, score_at(i), alpha, seed, offset)
            offset += x.numel()
    if denoise:
        x.add_(sigma_last * sigma_last * score_at(len(levels) - 1).to(x.dtype))
    return x
