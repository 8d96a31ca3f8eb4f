"""The Gaussian reparameterization of a VAE's posterior with its log-density, in one fused op."""

from __future__ import annotations

import torch

from ._common import check_like, check_rng_ints, check_state, rng_args
from ._registry import Loop
from .rng import normal

__all__ = ["gaussian_rsample"]  # re-exported by fastgen.ops

loop = Loop("vae")


def _gaussian_rsample_shapes(a):
    check_state(a.mean, "mean")
    check_like(a.log_std, "log_std", a.mean, "mean")
    check_rng_ints(a.seed, a.offset)
    return torch.empty_like(a.mean), a.mean.new_empty((a.mean.shape[0],), dtype=torch.float32)


def _gaussian_rsample_setup(ctx, inputs, output) -> None:
    _, log_std, seed, offset, path_derivative = inputs
    ctx.save_for_backward(log_std)
    ctx.seed, ctx.offset, ctx.path_derivative = seed, offset, path_derivative


def _gaussian_rsample_backward(ctx, grad_z, grad_log_prob):
    """z = mean + sigma eps, log q = sum(-eps^2 / 2 - log sigma) - c with eps redrawn from the stream:

    * total derivative (eps fixed): d z / d mean = 1, d z / d log_std = sigma eps, d log q / d log_std = -1;
    * path derivative (``path_derivative``, sticking the landing: log q's parameters held fixed, only its
      argument z moves): d log q / d z = -eps / sigma, so d log q / d mean = -eps / sigma and
      d log q / d log_std = -eps^2."""
    (log_std,) = ctx.saved_tensors
    sigma = log_std.float().exp()
    eps = normal(log_std.shape, ctx.seed, ctx.offset, device=log_std.device)
    shape = (-1,) + (1,) * (log_std.dim() - 1)
    g_z = torch.zeros_like(sigma) if grad_z is None else grad_z.float()
    g_lp = torch.zeros(log_std.shape[0], device=log_std.device) if grad_log_prob is None else grad_log_prob.float()
    g_lp = g_lp.view(shape)
    if ctx.path_derivative:
        grad_mean = g_z - g_lp * eps / sigma
        grad_log_std = g_z * sigma * eps - g_lp * eps.square()
    else:
        grad_mean = g_z
        grad_log_std = g_z * sigma * eps - g_lp.expand_as(sigma)
    return grad_mean.to(log_std.dtype), grad_log_std.to(log_std.dtype), None, None, None


_gaussian_rsample = loop.op(
    "gaussian_rsample(Tensor mean, Tensor log_std, int seed, int offset=0, bool path_derivative=False) "
    "-> (Tensor z, Tensor log_prob)",
    shapes=_gaussian_rsample_shapes, backward=_gaussian_rsample_backward, setup_context=_gaussian_rsample_setup)


def gaussian_rsample(
    mean: torch.Tensor,  # (B, ...) posterior mean
    log_std: torch.Tensor,  # (B, ...) posterior log standard deviation
    seed: int,
    offset: int = 0,
    *,
    path_derivative: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """z ~ N(mean, exp(log_std)^2) by reparameterization, and its log-density, in one pass:

        eps_i = normal at stream position offset + i,   z = mean + exp(log_std) eps,
        log q(z)_b = sum_i (-eps_i^2 / 2 - log_std_i) - D log(2 pi) / 2.

    Returns (z in mean's dtype, log_prob (B,) float32), differentiable in mean and log_std; the backward
    redraws eps from the stream rather than storing it. ``path_derivative=True`` gives log_prob the
    sticking-the-landing gradient (Roeder et al. 2017): through z only, q's parameters held fixed.
    Reserves ``mean.numel()`` stream positions."""
    seed, offset, state = rng_args(seed, offset, mean)
    if state is not None:
        raise ValueError("seed must be an int here (the backward redraws the noise from (seed, offset))")
    return _gaussian_rsample(mean=mean, log_std=log_std, seed=seed, offset=offset,
                             path_derivative=bool(path_derivative))
