"""Variational autoencoders: the reparameterized posterior sample with its log-density (one fused op), the ELBO
with the analytic Gaussian KL, decoder likelihoods, the importance-weighted bound, and the sticking-the-landing
gradient. Functions, not trainers:

    mean, log_std = encoder(x).chunk(2, dim=1)
    loss = -fastgen.vae.elbo(x, mean, log_std, decoder, likelihood="bernoulli", beta=1.0).mean()
    loss.backward()
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..core.checks import check_batch, check_finite
from ..core.rng import resolve_seed
from ..ops import gaussian_rsample

__all__ = ["LIKELIHOODS", "elbo", "gaussian_kl", "iwae_bound", "log_likelihood", "rsample"]

LIKELIHOODS = ("bernoulli", "gaussian")


def rsample(mean: torch.Tensor, log_std: torch.Tensor, *, samples: int = 1, seed: int | None = None,
            generator: torch.Generator | None = None,
            path_derivative: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``samples`` reparameterized draws z ~ N(mean, exp(log_std)^2) per row and log q(z), from one fused op:
    z (samples, B, ...) and log_prob (samples, B); with samples=1 the leading dimension is dropped.
    ``path_derivative=True``: log q gets the sticking-the-landing gradient (through z only)."""
    _check_posterior(mean, log_std)
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be an int >= 1, got {samples!r}")
    seed = resolve_seed(seed, generator)
    if samples == 1:  # the op takes contiguous tensors; what .chunk() returns is copied (autograd keeps it)
        return gaussian_rsample(mean.contiguous(), log_std.contiguous(), seed, path_derivative=path_derivative)
    shape = (samples,) + tuple(mean.shape)
    flat_mean = mean.unsqueeze(0).expand(shape).reshape((-1,) + tuple(mean.shape[1:]))
    flat_log_std = log_std.unsqueeze(0).expand(shape).reshape((-1,) + tuple(mean.shape[1:]))
    z, log_prob = gaussian_rsample(flat_mean, flat_log_std, seed, path_derivative=path_derivative)
    return z.view(shape), log_prob.view(samples, mean.shape[0])


def _check_posterior(mean, log_std) -> None:
    if not isinstance(mean, torch.Tensor) or not isinstance(log_std, torch.Tensor):
        raise TypeError("mean and log_std must be tensors")
    if mean.shape != log_std.shape or mean.dim() < 1:
        raise ValueError(f"mean and log_std must have one shape (B, ...), got {tuple(mean.shape)} and "
                         f"{tuple(log_std.shape)}")


def gaussian_kl(mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(log_std)^2) || N(0, I)) per row: sum (mean^2 + sigma^2 - 1) / 2 - log sigma."""
    _check_posterior(mean, log_std)
    terms = 0.5 * (mean.square() + (2 * log_std).exp() - 1) - log_std
    return terms.reshape(mean.shape[0], -1).sum(1)


def log_likelihood(x: torch.Tensor, decoded: torch.Tensor, likelihood: str = "bernoulli",
                   std: float = 1.0) -> torch.Tensor:
    """log p(x | z) per row from the decoder's output: "bernoulli" (decoded = logits, x in [0, 1]) or
    "gaussian" (decoded = mean, fixed ``std``). Broadcasts over leading sample dimensions of ``decoded``."""
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
    if decoded.shape[decoded.dim() - x.dim():] != x.shape:
        raise ValueError(f"the decoder's output must end with x's shape {tuple(x.shape)}, got {tuple(decoded.shape)}")
    lead = decoded.dim() - x.dim() + 1  # sample dimensions and the batch
    x = x.expand_as(decoded)
    if likelihood == "bernoulli":
        if not bool(((x >= 0) & (x <= 1)).all()):  # (one host read: outside [0, 1] the "log-likelihood" can be > 0)
            raise ValueError("x must lie in [0, 1] for likelihood='bernoulli' (scale it, or use 'gaussian')")
        terms = -F.binary_cross_entropy_with_logits(decoded, x, reduction="none")
    else:
        if not std > 0:
            raise ValueError(f"std must be > 0, got {std!r}")
        terms = -0.5 * ((x - decoded) / std).square() - math.log(std) - 0.5 * math.log(2 * math.pi)
    return terms.reshape(tuple(decoded.shape[:lead]) + (-1,)).sum(-1)


def elbo(x: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor, decoder: Callable, *,
         likelihood: str = "bernoulli", beta: float = 1.0, std: float = 1.0, seed: int | None = None,
         generator: torch.Generator | None = None) -> torch.Tensor:
    """The (beta-weighted) evidence lower bound per row, one reparameterized sample, analytic KL:

        E_q[log p(x | z)] - beta KL(q(z | x) || N(0, I))."""
    check_batch(mean, "mean", finite=False)
    check_batch(log_std, "log_std", finite=False)
    check_finite((mean, "mean"), (log_std, "log_std"))  # one host read for both
    if mean.shape[0] != x.shape[0]:
        raise ValueError(f"mean must have x's batch size {x.shape[0]}, got {mean.shape[0]}")
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or beta < 0:
        raise ValueError(f"beta must be a number >= 0, got {beta!r}")
    z, _ = rsample(mean, log_std, seed=seed, generator=generator)
    return log_likelihood(x, decoder(z), likelihood, std) - beta * gaussian_kl(mean, log_std)


def iwae_bound(x: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor, decoder: Callable, *, k: int,
               likelihood: str = "bernoulli", std: float = 1.0, seed: int | None = None,
               generator: torch.Generator | None = None, path_derivative: bool = False) -> torch.Tensor:
    """The importance-weighted bound (Burda et al. 2016) per row with k samples:

        log (1/k) sum_j p(x, z_j) / q(z_j | x),   z_j ~ q(z | x);

    k = 1 is the ELBO with a sampled KL; it increases with k towards log p(x). ``path_derivative=True`` uses
    the sticking-the-landing gradient for log q. The decoder takes z of shape (k * B, ...)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    if mean.shape[0] != x.shape[0]:
        raise ValueError(f"mean must have x's batch size {x.shape[0]}, got {mean.shape[0]}")
    z, log_q = rsample(mean, log_std, samples=k, seed=seed, generator=generator, path_derivative=path_derivative)
    if k == 1:
        z, log_q = z.unsqueeze(0), log_q.unsqueeze(0)
    batch = x.shape[0]
    decoded = decoder(z.reshape((k * batch,) + tuple(z.shape[2:])))
    decoded = decoded.reshape((k, batch) + tuple(decoded.shape[1:]))
    log_prior = (-0.5 * z.square() - 0.5 * math.log(2 * math.pi)).reshape(k, batch, -1).sum(-1)
    log_weights = log_likelihood(x, decoded, likelihood, std) + log_prior - log_q
    return torch.logsumexp(log_weights, dim=0) - math.log(k)
