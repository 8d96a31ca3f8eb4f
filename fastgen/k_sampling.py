"""k-diffusion's samplers (same signatures and conventions as k_diffusion.sampling) whose steps are fused ops.
``model(x, sigma * s_in, **extra_args)`` returns the denoised x0 for x = x0 + sigma eps; ``sigmas`` is
decreasing and ends in 0.

As k-diffusion: the model gets sigma as a contiguous (B,) tensor of x's dtype; the callback gets
``{"x", "i", "sigma", "sigma_hat", "denoised"}`` with sigma and sigma_hat 0-d tensors and x the state before the
step (a tensor of its own: keeping it is safe); ``disable`` turns off the progress bar (tqdm); a float64 x
stays float64 (its steps run the op's reference in float64; the fused kernels take float32, float16 and
bfloat16). Noise: ``noise_sampler(sigma, sigma_next)`` when given (k-diffusion's BrownianTreeNoiseSampler
included), else fastgen's counter-based stream under one seed drawn from torch's global RNG per call (where
k-diffusion draws torch.randn_like each step, or, for the SDE samplers, a Brownian tree).
"""

from __future__ import annotations

import math

import torch

from .constants import AuxStore, Coef, Prediction
from .ops import diffusion as ops
from .reference import diffusion as reference
from .rng import resolve_seed
from .sde import get_sigmas_karras

__all__ = ["CFGDenoiser", "get_sigmas_karras", "sample_dpm_2", "sample_dpm_2_ancestral", "sample_dpmpp_2m",
           "sample_dpmpp_2m_sde", "sample_dpmpp_2s_ancestral", "sample_euler", "sample_euler_ancestral", "sample_heun"]


class CFGDenoiser(torch.nn.Module):
    """Classifier-free guidance for the samplers here, as k-diffusion's Stable Diffusion scripts wrap a denoiser:
    ``CFGDenoiser(model)(x, sigma, uncond=..., cond=..., cond_scale=w)`` runs ``model(x, sigma, cond=...)`` once on
    the doubled batch [x; x] with [uncond; cond] and returns u + w (c - u). Pass ``uncond``, ``cond`` and
    ``cond_scale`` in ``extra_args``; ``cond_key`` names the model's conditioning argument."""

    def __init__(self, model, cond_key: str = "cond"):
        super().__init__()
        self.inner_model, self.cond_key = model, cond_key

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, uncond, cond, cond_scale):
        if isinstance(uncond, torch.Tensor) and isinstance(cond, torch.Tensor) and uncond.shape[0] != cond.shape[0]:
            uncond = uncond.expand(cond.shape[0], *uncond.shape[1:])
        both = self.inner_model(torch.cat([x, x]), torch.cat([sigma, sigma]),
                                **{self.cond_key: torch.cat([uncond, cond])})
        uncond_out, cond_out = both.chunk(2)
        return uncond_out + (cond_out - uncond_out) * cond_scale


def _steps(n: int, disable):
    try:
        from tqdm.auto import trange
    except ImportError:  # pragma: no cover - tqdm comes with diffusers and torchsde
        return range(n)
    return trange(n, disable=disable)


class _Loop:
    """The state (a copy of x, updated in place), the sigmas (on the host once, and as given), the noise, and the
    model and callback calls as k-diffusion makes them."""

    def __init__(self, model, x, sigmas, extra_args, callback, disable, noise_sampler=None):
        if not isinstance(x, torch.Tensor) or x.dim() < 1:
            raise ValueError("x must be a tensor of shape (B, ...)")
        if x.dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
            raise TypeError(f"x must be float32, float16, bfloat16 or float64, got {x.dtype}")
        if callback is not None and not callable(callback):
            raise TypeError(f"callback must be callable, got {type(callback).__name__}")
        self.sigmas = sigmas if isinstance(sigmas, torch.Tensor) else torch.as_tensor(sigmas, device=x.device)
        self.levels = [float(s) for s in self.sigmas.tolist()]
        if len(self.levels) < 2 or any(b >= a for a, b in zip(self.levels, self.levels[1:])) or self.levels[-1] < 0:
            raise ValueError("sigmas must be a decreasing sequence of at least 2 noise levels >= 0")
        self.model, self.extra = model, extra_args or {}
        self.callback, self.noise_sampler, self.disable = callback, noise_sampler, disable
        self.x = x.clone(memory_format=torch.contiguous_format)
        self.s_in = x.new_ones([x.shape[0]])
        self.exact = x.dtype == torch.float64  # float64: the reference step, in float64
        self.seed, self.offset = resolve_seed(), 0

    def steps(self):
        return _steps(len(self.levels) - 1, self.disable)

    def denoise(self, sigma: torch.Tensor) -> torch.Tensor:
        out = self.model(self.x, sigma * self.s_in, **self.extra)
        if not isinstance(out, torch.Tensor) or out.shape != self.x.shape:
            raise ValueError(f"model must return the denoised x of shape {tuple(self.x.shape)}")
        return out.to(self.x.dtype).contiguous()

    def report(self, i: int, sigma_hat: torch.Tensor, denoised: torch.Tensor) -> None:
        if self.callback is not None:
            self.callback({"x": self.x.clone(), "i": i, "sigma": self.sigmas[i], "sigma_hat": sigma_hat,
                           "denoised": denoised})

    def noise(self, i: int, sigma: float, sigma_next: float) -> dict:
        if self.noise_sampler is not None:
            return {"noise": self.noise_sampler(self.sigmas[i].new_tensor(sigma), self.sigmas[i].new_tensor(
                sigma_next)).to(self.x.device, torch.float64 if self.exact else torch.float32).contiguous()}
        args = {"seed": self.seed, "offset": self.offset}
        self.offset += self.x.numel()
        return args

    def step(self, denoised: torch.Tensor, row: torch.Tensor, aux=None, aux_store: str | None = None, **noise):
        """x <- the row's affine update, the model output being x0."""
        if not self.exact:
            ops.diffusion_step_(self.x, denoised, row.to(self.x.device), prediction="x0", aux=aux,
                                aux_store=aux_store, **noise)
            return
        store = AuxStore.NONE if aux_store is None else AuxStore.X0 if aux_store == "x0" else AuxStore.INCREMENT
        reference.diffusion_step_(self.x, denoised, row.to(self.x.device, torch.float64), None, int(Prediction.X0),
                                  None, True, aux, int(store), noise.get("noise"), noise.get("seed", 0),
                                  noise.get("offset", 0), None, None, 0)

    def buffer(self) -> torch.Tensor:
        return torch.zeros(self.x.shape, device=self.x.device, dtype=torch.float64 if self.exact else torch.float32)


def _churn_and_denoise(loop: _Loop, i: int, s_churn, s_tmin, s_tmax, s_noise):
    """(sigma_hat, x0): Karras et al.'s stochastic churn, raising the noise level to sigma_hat = sigma (1 + gamma)
    by adding noise, then the model at sigma_hat and the callback."""
    sigma = loop.levels[i]
    gamma = min(s_churn / (len(loop.levels) - 1), 2**0.5 - 1) if s_tmin <= sigma <= s_tmax else 0.0
    sigma_hat = loop.sigmas[i] * (gamma + 1)
    if gamma > 0:
        scale = s_noise * math.sqrt((sigma * (gamma + 1)) ** 2 - sigma**2)
        loop.step(loop.x, ops.noise_row(scale, keep=1.0), **loop.noise(i, sigma, sigma * (gamma + 1)))
    denoised = loop.denoise(sigma_hat)
    loop.report(i, sigma_hat, denoised)
    return sigma_hat, denoised


@torch.no_grad()
def sample_euler(model, x, sigmas, extra_args=None, callback=None, disable=None, s_churn=0.0, s_tmin=0.0,
                 s_tmax=float("inf"), s_noise=1.0):
    """Euler (Karras et al. 2022, Algorithm 2 with churn): x <- x + (sigma_next - sigma_hat) (x - x0) / sigma_hat."""
    loop = _Loop(model, x, sigmas, extra_args, callback, disable)
    for i in loop.steps():
        sigma_hat, denoised = _churn_and_denoise(loop, i, s_churn, s_tmin, s_tmax, s_noise)
        loop.step(denoised, ops.euler_coefficients(float(sigma_hat), loop.levels[i + 1]))
    return loop.x


@torch.no_grad()
def sample_euler_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0,
                           noise_sampler=None):
    """Euler ancestral: step to sigma_down deterministically, then add s_noise sigma_up noise."""
    loop = _Loop(model, x, sigmas, extra_args, callback, disable, noise_sampler)
    for i in loop.steps():
        sigma, sigma_next = loop.levels[i], loop.levels[i + 1]
        denoised = loop.denoise(loop.sigmas[i])
        loop.report(i, loop.sigmas[i], denoised)
        row = ops.euler_ancestral_coefficients(sigma, sigma_next, eta, s_noise)
        if sigma_next == 0:
            row[:, Coef.C_NOISE] = 0.0
        loop.step(denoised, row, **(loop.noise(i, sigma, sigma_next) if sigma_next > 0 else {}))
    return loop.x


@torch.no_grad()
def sample_heun(model, x, sigmas, extra_args=None, callback=None, disable=None, s_churn=0.0, s_tmin=0.0,
                s_tmax=float("inf"), s_noise=1.0):
    """Heun (Karras et al. 2022, Algorithm 2): Euler to sigma_next, then average the two slopes (Euler at the end)."""
    loop = _Loop(model, x, sigmas, extra_args, callback, disable)
    aux = loop.buffer()
    for i in loop.steps():
        sigma_hat, denoised = _churn_and_denoise(loop, i, s_churn, s_tmin, s_tmax, s_noise)
        sigma_next = loop.levels[i + 1]
        euler = ops.euler_coefficients(float(sigma_hat), sigma_next)
        if sigma_next == 0:
            loop.step(denoised, euler)
            continue
        loop.step(denoised, euler, aux=aux, aux_store="increment")
        loop.step(loop.denoise(loop.sigmas[i + 1]), ops.heun_correction_coefficients(float(sigma_hat), sigma_next),
                  aux=aux)
    return loop.x


@torch.no_grad()
def sample_dpm_2(model, x, sigmas, extra_args=None, callback=None, disable=None, s_churn=0.0, s_tmin=0.0,
                 s_tmax=float("inf"), s_noise=1.0):
    """k-diffusion's DPM-Solver-2: Euler to the log-midpoint sigma_mid, then the full step with the slope there
    (Euler at the end); two fused passes and two model calls per step."""
    loop = _Loop(model, x, sigmas, extra_args, callback, disable)
    aux = loop.buffer()
    for i in loop.steps():
        sigma_hat, denoised = _churn_and_denoise(loop, i, s_churn, s_tmin, s_tmax, s_noise)
        sigma_next = loop.levels[i + 1]
        if sigma_next == 0:
            loop.step(denoised, ops.euler_coefficients(float(sigma_hat), sigma_next))
            continue
        sigma_mid = sigma_hat.log().lerp(loop.sigmas[i + 1].log(), 0.5).exp()  # as k-diffusion computes it
        loop.step(denoised, ops.euler_coefficients(float(sigma_hat), float(sigma_mid)), aux=aux,
                  aux_store="increment")
        loop.step(loop.denoise(sigma_mid), ops.dpm_2_correction_coefficients(float(sigma_hat), float(sigma_mid),
                                                                              sigma_next), aux=aux)
    return loop.x


def _ancestral_levels(sigma: torch.Tensor, sigma_next: torch.Tensor, eta: float):
    """(sigma_down, sigma_up) as k-diffusion's get_ancestral_step computes them, in the sigmas' dtype."""
    if not eta:
        return sigma_next, sigma_next.new_zeros(())
    up = torch.minimum(sigma_next, eta * (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2) ** 0.5)
    return (sigma_next**2 - up**2) ** 0.5, up


@torch.no_grad()
def sample_dpm_2_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0,
                           noise_sampler=None):
    """k-diffusion's DPM-Solver-2 ancestral: DPM-Solver-2 from sigma to the ancestral step's sigma_down (its
    midpoint model call at the log-midpoint), then s_noise sigma_up noise, in the correction's fused pass; Euler
    where sigma_down = 0."""
    loop = _Loop(model, x, sigmas, extra_args, callback, disable, noise_sampler)
    aux = loop.buffer()
    for i in loop.steps():
        sigma = loop.levels[i]
        denoised = loop.denoise(loop.sigmas[i])
        loop.report(i, loop.sigmas[i], denoised)
        down, up = _ancestral_levels(loop.sigmas[i], loop.sigmas[i + 1], eta)
        if float(down) == 0:
            loop.step(denoised, ops.euler_coefficients(sigma, 0.0))
            continue
        sigma_mid = loop.sigmas[i].log().lerp(down.log(), 0.5).exp()  # as k-diffusion computes it
        loop.step(denoised, ops.euler_coefficients(sigma, float(sigma_mid)), aux=aux, aux_store="increment")
        row = ops.dpm_2_correction_coefficients(sigma, float(sigma_mid), float(down))
        row[:, Coef.C_NOISE] = s_noise * float(up)
        loop.step(loop.denoise(sigma_mid), row, aux=aux, **loop.noise(i, sigma, loop.levels[i + 1]))
    return loop.x


@torch.no_grad()
def sample_dpmpp_2s_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0,
                              noise_sampler=None):
    """k-diffusion's DPM-Solver++(2S) ancestral: DPM-Solver++(2S) from sigma to the ancestral step's sigma_down
    (model calls at sigma and at the log-midpoint), then s_noise sigma_up noise, in the second stage's fused pass;
    Euler where sigma_down = 0."""
    loop = _Loop(model, x, sigmas, extra_args, callback, disable, noise_sampler)
    aux = loop.buffer()
    for i in loop.steps():
        sigma, sigma_next = loop.levels[i], loop.levels[i + 1]
        denoised = loop.denoise(loop.sigmas[i])
        loop.report(i, loop.sigmas[i], denoised)
        down, up = _ancestral_levels(loop.sigmas[i], loop.sigmas[i + 1], eta)
        noise = loop.noise(i, sigma, sigma_next) if sigma_next > 0 else {}
        if float(down) == 0:
            row = ops.euler_coefficients(sigma, 0.0)
            row[:, Coef.C_NOISE] = s_noise * float(up) if noise else 0.0
            loop.step(denoised, row, **noise)
            continue
        t, t_next = loop.sigmas[i].log().neg(), down.log().neg()  # as k-diffusion computes them
        sigma_mid = (t + (t_next - t) / 2).neg().exp()
        first, second = ops.dpmpp_2s_coefficients(sigma, float(sigma_mid), float(down),
                                                  s_noise * float(up) if noise else 0.0)
        loop.step(denoised, first[None], aux=aux, aux_store="increment")
        loop.step(loop.denoise(sigma_mid), second[None], aux=aux, **noise)
    return loop.x


@torch.no_grad()
def sample_dpmpp_2m(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """DPM-Solver++(2M) (Lu et al. 2022): second-order multistep in log-sigma, x0 history in a fused buffer."""
    loop = _Loop(model, x, sigmas, extra_args, callback, disable)
    table = ops.dpmpp_2m_coefficients(torch.tensor(loop.levels, dtype=torch.float64))
    old = loop.buffer()
    for i in loop.steps():
        denoised = loop.denoise(loop.sigmas[i])
        loop.report(i, loop.sigmas[i], denoised)
        loop.step(denoised, table[i:i + 1], aux=old, aux_store="x0")
    return loop.x


@torch.no_grad()
def sample_dpmpp_2m_sde(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0,
                        noise_sampler=None, solver_type="midpoint"):
    """DPM-Solver++(2M) SDE (k-diffusion's): the 2M update with e^(-eta h) damping and
    s_noise sigma_next sqrt(1 - e^(-2 eta h)) noise per step, one fused pass each (see dpmpp_2m_sde_coefficients).
    Noise: noise_sampler (e.g. k-diffusion's BrownianTreeNoiseSampler) or fastgen's stream."""
    loop = _Loop(model, x, sigmas, extra_args, callback, disable, noise_sampler)
    table = ops.dpmpp_2m_sde_coefficients(torch.tensor(loop.levels, dtype=torch.float64), eta, s_noise, solver_type)
    old = loop.buffer()
    for i in loop.steps():
        denoised = loop.denoise(loop.sigmas[i])
        loop.report(i, loop.sigmas[i], denoised)
        noisy = bool(table[i, Coef.C_NOISE] != 0)
        loop.step(denoised, table[i:i + 1], aux=old, aux_store="x0",
                  **(loop.noise(i, loop.levels[i], loop.levels[i + 1]) if noisy else {}))
    return loop.x
