"""Log-likelihoods of data under a diffusion model through its probability-flow ODE (Song et al. 2021, sec. 4.3):

    dx/dt = f(t) x - g(t)^2 s(x, t) / 2  on t in [eps, T],
    log p_eps(x(eps)) = log p_T(x(T)) + int_eps^T div_x (f(t) x - g^2 s / 2) dt,

with the divergence exact or Hutchinson's (one probe per solve, from the noise stream), solved on the device by
:func:`fastgen.ode.odeint`."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch

from ..core.rng import reserve, resolve_seed
from ..flows.divergence import divergence_terms
from ..flows.ode import METHODS, odeint
from ..ops import uniform
from .processes import SDE, VESDE

__all__ = ["Likelihood", "likelihood", "score_from_prediction"]


class Likelihood(NamedTuple):
    """Per-sample results: ``log_prob`` in nats (a lower bound on log P(x) with dequantization),
    ``bits_per_dim`` = -log_prob / (D ln 2), the prior point ``z`` = x(T), and the solver's ``nfe``."""
    log_prob: torch.Tensor
    bits_per_dim: torch.Tensor
    z: torch.Tensor
    nfe: int


def score_from_prediction(out: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor,
                          prediction: str) -> torch.Tensor:
    """grad log p_t(x) from a model's prediction at x = alpha x0 + sigma eps: score itself, eps (-eps / sigma),
    x0 ((alpha x0 - x) / sigma^2) or v = alpha eps - sigma x0 (eps = (sigma x + alpha v) / (alpha^2 + sigma^2)).
    alpha and sigma are (B,) tensors."""
    a, s = (v.to(x.dtype).reshape(-1, *[1] * (x.dim() - 1)) for v in (alpha, sigma))
    if prediction == "score":
        return out
    if prediction == "eps":
        return -out / s
    if prediction == "x0":
        return (a * out - x) / s.square()
    if prediction == "v":
        return -(s * x + a * out) / ((a.square() + s.square()) * s)
    raise ValueError(f"prediction must be score, eps, x0 or v, got {prediction!r}")


def _check_likelihood(sde, x, *, prediction, method, solver, eps, dequantize) -> None:
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be a continuous process (VPSDE, SubVPSDE, VESDE), got {type(sde).__name__}")
    if prediction not in ("score", "eps", "x0", "v"):
        raise ValueError(f"prediction must be score, eps, x0 or v, got {prediction!r}")
    if prediction == "v" and isinstance(sde, VESDE):
        raise ValueError("prediction 'v' needs a variance-preserving process, not VESDE")
    if method not in ("exact", "hutchinson"):
        raise ValueError(f"method must be 'exact' or 'hutchinson', got {method!r}")
    if solver not in METHODS:
        raise ValueError(f"solver must be one of {METHODS}, got {solver!r}")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 2:
        raise ValueError("x must be a floating-point tensor (B, ...) with at least one data dimension")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < sde.T:
        raise ValueError(f"eps must be in (0, T={sde.T}), got {eps!r}")
    if dequantize is not None and (isinstance(dequantize, bool) or not isinstance(dequantize, int)
                                   or dequantize < 2):
        raise ValueError(f"dequantize must be None or the number of levels K >= 2, got {dequantize!r}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x must be finite")
    if dequantize is not None and not bool((x.abs() <= 1).all()):
        raise ValueError(f"dequantize={dequantize} is for data on {dequantize} levels over [-1, 1]; x has values "
                         f"outside, up to {float(x.abs().max()):.4g} in magnitude")


def _probability_flow(model, sde: SDE, prediction: str, trace: dict):
    """The augmented probability-flow ODE: d/dt (x, l) = (f x - g^2 s / 2, div of that drift), so that
    log p(x) = log p_T(x(T)) + l(T); the divergence by ``trace`` (divergence_terms' method, probes, noise, seed,
    offset: one probe set for the whole solve)."""

    def probability_flow(t: torch.Tensor, state):
        xt = state[0]
        alpha, sigma = (v.to(xt.device) for v in sde.marginal(t.double()))
        f = sde.drift_coef(t.double()).to(xt.device, xt.dtype).reshape(-1, *[1] * (xt.dim() - 1))
        g2 = sde.diffusion(t.double()).square().to(xt.device, xt.dtype).reshape(-1, *[1] * (xt.dim() - 1))

        def drift(v):
            out = model(v, t)
            if not isinstance(out, torch.Tensor) or out.shape != v.shape:
                raise ValueError(f"model must return a {prediction} of shape {tuple(v.shape)}, got "
                                 f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}")
            return f * v - 0.5 * g2 * score_from_prediction(out, v, alpha, sigma, prediction)

        dx, div, _ = divergence_terms(drift, xt, **trace, create_graph=False, frobenius=False)
        return dx.detach(), div.detach().to(xt.dtype)

    return probability_flow


def likelihood(
    model: Callable,
    x: torch.Tensor,
    *,
    sde: SDE,
    prediction: str = "score",
    method: str = "hutchinson",
    probes: int = 1,
    noise: str = "rademacher",
    solver: str = "dopri5",
    steps: int | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    control: str = "sample",
    eps: float = 1e-5,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    dequantize: int | None = None,
    prior: Callable | None = None,
    check_finite: bool = False,
    stats: dict | None = None,
) -> Likelihood:
    """log p(x) per sample under the diffusion model ``model(x_t, t) -> prediction`` of the process ``sde``.

    method: "exact" (D vector-Jacobian products per evaluation; flat (B, D) data) or "hutchinson" (``probes``
        probes of ``noise``, fixed for the solve, from the noise stream at ``seed``): an unbiased estimate.
    solver, steps, rtol, atol, control, check_finite, stats: :func:`fastgen.ode.odeint`'s method and options;
        the solve runs from ``eps`` to sde.T (with control="sample", a step size per sample, so that a sample's
        likelihood does not depend on the rest of its batch).
    dequantize: None for continuous data; K for data on K evenly spaced levels over [-1, 1] (K = 256 for 8-bit
        images): x + Delta (u - 1/2), u ~ U(0,1)^D from the noise stream, Delta = 2 / (K - 1), and
        log P(x) >= log p(x + Delta (u - 1/2)) + D log Delta, so bits/dim are those of the discrete data.
    prior: log p_T as a callable (B, ...) -> (B,); default the process's prior N(0, prior_std^2 I), which differs
        from the data's law at T by about alpha(T) |mean| |x(T)| / sigma(T)^2 nats (0.01 to 0.05 for data of unit
        scale under score_sde's VP and VE settings): pass the exact p_T where it is known."""
    _check_likelihood(sde, x, prediction=prediction, method=method, solver=solver, eps=eps, dequantize=dequantize)
    seed = resolve_seed(seed, generator)
    batch, dims = x.shape[0], math.prod(x.shape[1:])
    if batch == 0:  # an empty batch: no densities, no solve
        empty = x.new_zeros(0)
        return Likelihood(empty, empty.clone(), x.detach().clone(), 0)
    offset = 0
    x = x.detach()
    if dequantize is not None:
        delta = 2.0 / (dequantize - 1)
        x = x + delta * (uniform(x.shape, seed, 0, device=x.device).to(x.dtype) - 0.5)
        offset = reserve(x.numel())  # the probes come after the dequantization draws

    probability_flow = _probability_flow(model, sde, prediction, dict(method=method, probes=probes, noise=noise,
                                                                      seed=seed, offset=offset))
    solve_stats = {} if stats is None else stats
    z, delta_logp = odeint(probability_flow, (x, x.new_zeros(batch)), eps, sde.T, method=solver, steps=steps,
                           rtol=rtol, atol=atol, control=control, check_finite=check_finite,
                           stats=solve_stats)
    if prior is None:
        std = sde.prior_std()
        prior_logp = (-0.5 * z.reshape(batch, -1).square().sum(1) / std ** 2
                      - dims * (math.log(std) + 0.5 * math.log(2 * math.pi)))
    else:
        prior_logp = prior(z)
    log_prob = prior_logp + delta_logp
    if dequantize is not None:
        log_prob = log_prob + dims * math.log(delta)
    return Likelihood(log_prob, -log_prob / (dims * math.log(2)), z, solve_stats["nfe"])

