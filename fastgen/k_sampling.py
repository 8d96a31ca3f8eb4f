"""k-diffusion-style samplers (same signatures as k_diffusion.sampling) whose
steps are fused ops. ``model(x, sigma * s_in, **extra_args)`` returns the
denoised x0 for x = x0 + sigma eps; ``sigmas`` is decreasing and ends in 0.

Noise comes from fastgen's stream (one seed drawn from torch's global RNG per
call) unless ``noise_sampler(sigma, sigma_next)`` is given.
"""

from __future__ import annotations

import math

import torch

from .constants import Coef
from .ops import diffusion as ops
from .rng import resolve_seed
from .sde import get_sigmas_karras

__all__ = ["get_sigmas_karras", "sample_dpmpp_2m", "sample_euler", "sample_euler_ancestral", "sample_heun"]


class _Loop:
    """Host copy of the sigmas (read once), device sigmas, the noise stream, and the callback."""

    def __init__(self, model, x, sigmas, extra_args, callback, disable, noise_sampler=None):
        if not isinstance(x, torch.Tensor) or x.dim() < 1:
            raise ValueError("x must be a tensor of shape (B, ...)")
        self.levels = [float(s) for s in torch.as_tensor(sigmas).tolist()]
        if len(self.levels) < 2 or self.levels[-1] != 0.0 and any(b >= a for a, b in zip(self.levels, self.levels[1:])):
            raise ValueError("sigmas must be a decreasing sequence of at least 2 noise levels")
        self.device_sigmas = torch.as_tensor(sigmas, dtype=torch.float32).to(x.device)
        self.model, self.extra = model, extra_args or {}
        self.callback, self.noise_sampler = callback, noise_sampler
        self.x = x.clone(memory_format=torch.contiguous_format)
        self.batch = x.shape[0]
        self.seed, self.offset = resolve_seed(), 0
        self.disable = disable

    def denoise(self, x, sigma_index: int | None = None, sigma: float | None = None):
        s = self.device_sigmas[sigma_index].expand(self.batch) if sigma is None else \
            torch.full((self.batch,), sigma, device=x.device)
        out = self.model(x, s, **self.extra)
        if not isinstance(out, torch.Tensor) or out.shape != x.shape:
            raise ValueError(f"model must return the denoised x of shape {tuple(x.shape)}")
        return out.to(x.dtype)

    def noise(self, sigma: float, sigma_next: float) -> dict:
        if self.noise_sampler is not None:
            return dict(noise=self.noise_sampler(torch.tensor(sigma), torch.tensor(sigma_next)).float().contiguous())
        args = dict(seed=self.seed, offset=self.offset)
        self.offset += self.x.numel()
        return args

    def report(self, i, sigma, sigma_hat, denoised):
        if self.callback is not None:
            self.callback({"x": self.x, "i": i, "sigma": self.levels[i], "sigma_hat": sigma_hat, "denoised": denoised})


def _churn(loop: _Loop, i: int, s_churn, s_tmin, s_tmax, s_noise) -> float:
    """Karras et al.'s stochastic churn: raise the noise level to sigma (1 + gamma) by adding noise."""
    sigma = loop.levels[i]
    gamma = min(s_churn / (len(loop.levels) - 1), 2**0.5 - 1) if s_tmin <= sigma <= s_tmax else 0.0
    sigma_hat = sigma * (gamma + 1)
    if gamma > 0:
        scale = s_noise * math.sqrt(sigma_hat**2 - sigma**2)
        ops.add_noise_(loop.x, ops.noise_row(scale, keep=1.0, device=loop.x.device), **loop.noise(sigma, sigma_hat))
    return sigma_hat


@torch.no_grad()
def sample_euler(model, x, sigmas, extra_args=None, callback=None, disable=None, s_churn=0.0, s_tmin=0.0,
                 s_tmax=float("inf"), s_noise=1.0):
    """Euler (Karras et al. 2022, Algorithm 2 with churn): x <- x + (sigma_next - sigma_hat) (x - x0) / sigma_hat."""
    loop = _Loop(model, x, sigmas, extra_args, callback, disable)
    for i in range(len(loop.levels) - 1):
        sigma_hat = _churn(loop, i, s_churn, s_tmin, s_tmax, s_noise)
        denoised = loop.denoise(loop.x, i if sigma_hat == loop.levels[i] else None,
                                None if sigma_hat == loop.levels[i] else sigma_hat)
        loop.report(i, loop.levels[i], sigma_hat, denoised)
        row = ops.euler_coefficients(sigma_hat, loop.levels[i + 1]).to(loop.x.device)
        ops.diffusion_step_(loop.x, denoised, row, prediction="x0")
    return loop.x


@torch.no_grad()
def sample_euler_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0,
                           noise_sampler=None):
    """Euler ancestral: step to sigma_down deterministically, then add s_noise sigma_up noise."""
    loop = _Loop(model, x, sigmas, extra_args, callback, disable, noise_sampler)
    for i in range(len(loop.levels) - 1):
        sigma, sigma_next = loop.levels[i], loop.levels[i + 1]
        denoised = loop.denoise(loop.x, i)
        loop.report(i, sigma, sigma, denoised)
        row = ops.euler_ancestral_coefficients(sigma, sigma_next, eta, s_noise).to(loop.x.device)
        noise = loop.noise(sigma, sigma_next) if sigma_next > 0 else {}
        if sigma_next == 0:
            row[:, Coef.C_NOISE] = 0.0
        ops.diffusion_step_(loop.x, denoised, row, prediction="x0", **noise)
    return loop.x


@torch.no_grad()
def sample_heun(model, x, sigmas, extra_args=None, callback=None, disable=None, s_churn=0.0, s_tmin=0.0,
                s_tmax=float("inf"), s_noise=1.0):
    """Heun (Karras et al. 2022, Algorithm 2): Euler to sigma_next, then average the two slopes (Euler at the end)."""
    loop = _Loop(model, x, sigmas, extra_args, callback, disable)
    aux = torch.zeros(loop.x.shape, device=loop.x.device, dtype=torch.float32)
    for i in range(len(loop.levels) - 1):
        sigma_hat = _churn(loop, i, s_churn, s_tmin, s_tmax, s_noise)
        sigma_next = loop.levels[i + 1]
        denoised = loop.denoise(loop.x, i if sigma_hat == loop.levels[i] else None,
                                None if sigma_hat == loop.levels[i] else sigma_hat)
        loop.report(i, loop.levels[i], sigma_hat, denoised)
        euler = ops.euler_coefficients(sigma_hat, sigma_next).to(loop.x.device)
        if sigma_next == 0:
            ops.diffusion_step_(loop.x, denoised, euler, prediction="x0")
            continue
        ops.diffusion_step_(loop.x, denoised, euler, prediction="x0", aux=aux, aux_store="increment")
        denoised_next = loop.denoise(loop.x, i + 1)
        row = ops.heun_correction_coefficients(sigma_hat, sigma_next).to(loop.x.device)
        ops.diffusion_step_(loop.x, denoised_next, row, prediction="x0", aux=aux)
    return loop.x


@torch.no_grad()
def sample_dpmpp_2m(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """DPM-Solver++(2M) (Lu et al. 2022): second-order multistep in log-sigma, x0 history in a fused buffer."""
    loop = _Loop(model, x, sigmas, extra_args, callback, disable)
    table = ops.dpmpp_2m_coefficients(torch.tensor(loop.levels, dtype=torch.float64)).float().to(loop.x.device)
    old = torch.zeros(loop.x.shape, device=loop.x.device, dtype=torch.float32)
    for i in range(len(loop.levels) - 1):
        denoised = loop.denoise(loop.x, i)
        loop.report(i, loop.levels[i], loop.levels[i], denoised)
        ops.diffusion_step_(loop.x, denoised, table[i:i + 1], prediction="x0", aux=old, aux_store="x0")
    return loop.x
