"""Forward processes with closed-form marginals x_t = alpha(t) x_0 + sigma(t) eps.

Continuous SDEs dx = f(t) x dt + g(t) dW on t in [0, T=1] (Song et al. 2021):
:class:`VPSDE`, :class:`SubVPSDE`, :class:`VESDE`; the discrete DDPM chain
(Ho et al. 2020) :class:`DDPMSchedule`; Karras (EDM) sigma schedules; and the
flow-matching paths (Lipman et al. 2022) :class:`LinearPath`, :class:`PolynomialPath`,
:class:`CosinePath`, :class:`VPPath`, data at t = 0 and noise at t = 1, which also give
``derivative(t) -> (alpha', sigma')`` (the velocity u = alpha' x_0 + sigma' eps).
Every sampler in fastgen reads a process through ``marginal(t) -> (alpha, sigma)``
(its step coefficients follow from it), plus ``drift_coef`` and ``diffusion``
for the SDE samplers and ``derivative`` on a path.
"""

from __future__ import annotations

import abc
import math

import torch

from ..core.rng import resolve_seed


def _as_tensor(t) -> torch.Tensor:
    return t.double() if isinstance(t, torch.Tensor) else torch.tensor(t, dtype=torch.float64)


class SDE(abc.ABC):
    """Base of the continuous processes: subclasses give the marginal, f(t), g(t) and the inverse noise level."""

    T = 1.0
    eps = 1e-3  # smallest time the samplers reach

    @abc.abstractmethod
    def marginal(self, t) -> tuple[torch.Tensor, torch.Tensor]:
        """(alpha(t), sigma(t)) in float64: x_t = alpha x_0 + sigma eps."""

    def marginal_prob(self, x0: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std of p(x_t | x_0), as score_sde's SDE.marginal_prob."""
        alpha, sigma = self.marginal(t)
        alpha = alpha.to(x0).reshape(-1, *[1] * (x0.dim() - 1)) if alpha.dim() else alpha.to(x0)
        return alpha * x0, sigma.to(x0)

    @abc.abstractmethod
    def drift_coef(self, t) -> torch.Tensor:
        """f(t) with the drift f(x, t) = f(t) x."""

    @abc.abstractmethod
    def diffusion(self, t) -> torch.Tensor:
        """g(t)."""

    def drift(self, x: torch.Tensor, t) -> torch.Tensor:
        f = self.drift_coef(t).to(x)
        return (f.reshape(-1, *[1] * (x.dim() - 1)) if f.dim() else f) * x

    def prior_std(self) -> float:
        return float(self.marginal(self.T)[1]) if isinstance(self, VESDE) else 1.0

    def prior_sample(self, shape, seed=None, generator=None, device=None, dtype=torch.float32) -> torch.Tensor:
        """Draws from the prior N(0, prior_std^2 I)."""
        g = torch.Generator().manual_seed(resolve_seed(seed, generator))
        return (self.prior_std() * torch.randn(shape, generator=g, dtype=torch.float64)).to(device=device, dtype=dtype)

    def reverse_drift(self, x, t, score, probability_flow: bool = False) -> torch.Tensor:
        """Drift of the reverse-time SDE, f - g^2 s (or of the probability-flow ODE, f - g^2 s / 2)."""
        g2 = self.diffusion(t).square().to(x)
        g2 = g2.reshape(-1, *[1] * (x.dim() - 1)) if g2.dim() else g2
        return self.drift(x, t) - (0.5 if probability_flow else 1.0) * g2 * score

    def sigma_ratio(self, t) -> torch.Tensor:
        """sigma(t) / alpha(t): the noise level of x_t / alpha(t) = x_0 + (sigma/alpha) eps."""
        alpha, sigma = self.marginal(t)
        return sigma / alpha

    @abc.abstractmethod
    def time_of_sigma_ratio(self, ratio) -> torch.Tensor:
        """The time t where sigma(t) / alpha(t) = ratio."""


class VPSDE(SDE):
    """Variance preserving: dx = -beta(t) x / 2 dt + sqrt(beta(t)) dW; alpha^2 + sigma^2 = 1.

    schedule "linear": beta(t) = beta_min + t (beta_max - beta_min);
    "cosine": alpha(t)^2 = cos^2((t + s) / (1 + s) pi/2) / cos^2(s / (1 + s) pi/2), s = 0.008,
    with alpha^2 kept >= 1e-5 near t = 1.
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, schedule: str = "linear"):
        if schedule not in ("linear", "cosine"):
            raise ValueError(f"schedule must be 'linear' or 'cosine', got {schedule!r}")
        if not 0 < beta_min < beta_max:
            raise ValueError(f"need 0 < beta_min < beta_max, got {beta_min}, {beta_max}")
        self.beta_min, self.beta_max, self.schedule = float(beta_min), float(beta_max), schedule
        self._s = 0.008

    def log_alpha(self, t) -> torch.Tensor:
        t = _as_tensor(t)
        if self.schedule == "linear":
            return -0.25 * t.square() * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min
        s = self._s
        f = torch.cos((t + s) / (1 + s) * math.pi / 2).square() / math.cos(s / (1 + s) * math.pi / 2) ** 2
        return 0.5 * torch.log(f.clamp(min=1e-5))

    def beta(self, t) -> torch.Tensor:
        t = _as_tensor(t)
        if self.schedule == "linear":
            return self.beta_min + t * (self.beta_max - self.beta_min)
        s = self._s
        return (math.pi / (1 + s) * torch.tan((t + s) / (1 + s) * math.pi / 2)).clamp(max=self.beta_max * 50)

    def marginal(self, t):
        alpha = torch.exp(self.log_alpha(t))
        return alpha, torch.sqrt((1 - alpha.square()).clamp(min=0))

    def drift_coef(self, t):
        return -0.5 * self.beta(t)

    def diffusion(self, t):
        return torch.sqrt(self.beta(t))

    def time_of_alpha(self, alpha) -> torch.Tensor:
        log_alpha = torch.log(_as_tensor(alpha))
        if self.schedule == "linear":  # solve a t^2 + b t + log_alpha = 0
            a, b = 0.25 * (self.beta_max - self.beta_min), 0.5 * self.beta_min
            return (-b + torch.sqrt(b * b - 4 * a * log_alpha)) / (2 * a)
        s = self._s
        c = math.cos(s / (1 + s) * math.pi / 2)
        return torch.arccos((torch.exp(log_alpha) * c).clamp(max=1.0)) * 2 / math.pi * (1 + s) - s

    def time_of_sigma_ratio(self, ratio):
        r = _as_tensor(ratio)
        return self.time_of_alpha(1 / torch.sqrt(1 + r.square()))


class SubVPSDE(VPSDE):
    """Sub-VP: dx = -beta x / 2 dt + sqrt(beta (1 - alpha^4)) dW; sigma(t) = 1 - alpha(t)^2."""

    def marginal(self, t):
        alpha = torch.exp(self.log_alpha(t))
        return alpha, 1 - alpha.square()

    def diffusion(self, t):
        alpha = torch.exp(self.log_alpha(t))
        return torch.sqrt(self.beta(t) * (1 - alpha.pow(4)))

    def time_of_sigma_ratio(self, ratio):
        r = _as_tensor(ratio)
        return self.time_of_alpha((-r + torch.sqrt(r.square() + 4)) / 2)


class VESDE(SDE):
    """Variance exploding: dx = sqrt(d sigma^2 / dt) dW, sigma(t) = sigma_min (sigma_max / sigma_min)^t, alpha = 1."""

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0):
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)

    def marginal(self, t):
        t = _as_tensor(t)
        return torch.ones_like(t), self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def drift_coef(self, t):
        return torch.zeros_like(_as_tensor(t))

    def diffusion(self, t):
        sigma = self.marginal(t)[1]
        return sigma * math.sqrt(2 * math.log(self.sigma_max / self.sigma_min))

    def time_of_sigma_ratio(self, ratio):
        return torch.log(_as_tensor(ratio) / self.sigma_min) / math.log(self.sigma_max / self.sigma_min)


class DDPMSchedule:
    """The discrete DDPM chain: q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I), t = 0 .. N-1.

    beta_schedule "linear": betas = linspace(beta_start, beta_end, N);
    "cosine": betas from abar(t) = cos^2((t/N + s)/(1 + s) pi/2), clipped at 0.999 (Nichol & Dhariwal).
    """

    def __init__(self, num_train_timesteps: int = 1000, beta_schedule: str = "linear", beta_start: float = 1e-4,
                 beta_end: float = 0.02):
        n = int(num_train_timesteps)
        if n < 2:
            raise ValueError(f"num_train_timesteps must be >= 2, got {num_train_timesteps}")
        if beta_schedule == "linear":
            betas = torch.linspace(beta_start, beta_end, n, dtype=torch.float64)
        elif beta_schedule == "cosine":
            abar = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
            betas = torch.tensor([min(1 - abar((i + 1) / n) / abar(i / n), 0.999) for i in range(n)],
                                 dtype=torch.float64)
        else:
            raise ValueError(f"beta_schedule must be 'linear' or 'cosine', got {beta_schedule!r}")
        self.num_train_timesteps = n
        self.betas = betas
        self.alphas_cumprod = torch.cumprod(1 - betas, 0)
        self._tables = {torch.device("cpu"): self.alphas_cumprod}

    def marginal(self, t) -> tuple[torch.Tensor, torch.Tensor]:
        """(sqrt(abar_t), sqrt(1 - abar_t)); t = -1 means x_0 itself."""
        t = torch.as_tensor(t).long()
        table = self._table(t.device)
        abar = torch.where(t >= 0, table[t.clamp(min=0)], torch.ones((), dtype=torch.float64, device=t.device))
        return abar.sqrt(), (1 - abar).sqrt()

    def _table(self, device) -> torch.Tensor:
        if device not in self._tables:
            self._tables[device] = self.alphas_cumprod.to(device)
        return self._tables[device]

    def timesteps(self, steps: int, spacing: str = "leading") -> list[int]:
        """`steps` decreasing timesteps: "leading" (diffusers' default), (steps-1, ..., 0) * (N // steps);
        "trailing", N - 1, N - 1 - N/steps, ... (Lin et al. 2024); "quadratic", round((N - 1) (1 - i/(steps-1))^2),
        kept distinct (the DDIM paper's spacing for CIFAR-10)."""
        n = self.num_train_timesteps
        if not 1 <= steps <= n:
            raise ValueError(f"steps must be in 1 .. {n}, got {steps}")
        if spacing == "leading":
            return [i * (n // steps) for i in range(steps - 1, -1, -1)]
        if spacing == "trailing":
            return [round(n - i * n / steps) - 1 for i in range(steps)]
        if spacing == "quadratic":
            out = []
            for i in range(steps):
                t = round((n - 1) * (1 - i / max(steps - 1, 1)) ** 2)
                out.append(max(min(t, out[-1] - 1) if out else t, steps - 1 - i))
            return out
        raise ValueError(f"spacing must be leading, trailing or quadratic, got {spacing!r}")

    def prior_sample(self, shape, seed=None, generator=None, device=None, dtype=torch.float32) -> torch.Tensor:
        g = torch.Generator().manual_seed(resolve_seed(seed, generator))
        return torch.randn(shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)


def get_sigmas_karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0, device="cpu") -> torch.Tensor:
    """Karras et al. (2022) noise levels, n of them from sigma_max down to sigma_min, then a final 0."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)]).float().to(device)


# ---------------------------------------------------------------------------------------------- flow-matching paths


class AffinePath(abc.ABC):
    """x_t = alpha(t) x0 + sigma(t) eps on t in [0, 1], alpha(0) = 1, sigma(0) = 0, alpha(1) = 0, sigma(1) = 1.
    Subclasses give ``_marginal(t) -> (alpha, sigma)`` and ``_derivative(t) -> (alpha', sigma')`` of float64 times
    already checked; ``marginal`` and ``derivative`` check them (one host read for a tensor)."""

    def marginal(self, t) -> tuple[torch.Tensor, torch.Tensor]:
        """(alpha(t), sigma(t)) in float64."""
        return self._marginal(_time(t))

    def derivative(self, t) -> tuple[torch.Tensor, torch.Tensor]:
        """(alpha'(t), sigma'(t)) in float64."""
        return self._derivative(_time(t))

    def coefficients(self, t: torch.Tensor) -> torch.Tensor:
        """(B, 4) float32 rows (alpha, sigma, alpha', sigma') at per-sample times t in [0, 1], unchecked (no host
        read): the fused interpolation's ``coef``."""
        t = t.double()
        return torch.stack([*self._marginal(t), *self._derivative(t)], dim=1).float()

    @abc.abstractmethod
    def _marginal(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(alpha, sigma) at checked float64 times."""

    @abc.abstractmethod
    def _derivative(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(alpha', sigma') at checked float64 times."""

    def interpolate(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_t, u_t): the point of the path at per-sample times t (B,) and its velocity."""
        alpha, sigma = (per_sample(v, x0) for v in self.marginal(t))
        d_alpha, d_sigma = (per_sample(v, x0) for v in self.derivative(t))
        return alpha * x0 + sigma * eps, d_alpha * x0 + d_sigma * eps

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class LinearPath(AffinePath):
    """The conditional-OT (rectified-flow) path: alpha = 1 - t, sigma = t; u = eps - x0."""

    def _marginal(self, t):
        return 1 - t, t.clone()

    def _derivative(self, t):
        return -torch.ones_like(t), torch.ones_like(t)


class PolynomialPath(AffinePath):
    """alpha = (1 - t)^n, sigma = 1 - (1 - t)^n: flow_matching's PolynomialConvexScheduler (alpha = s^n at its time
    s = 1 - t, data at s = 1); n = 1 is the linear path."""

    def __init__(self, n: float = 2.0):
        if isinstance(n, bool) or not isinstance(n, (int, float)) or not math.isfinite(n) or n <= 0:
            raise ValueError(f"n must be a finite number > 0, got {n!r}")
        self.n = float(n)

    def _marginal(self, t):
        a = (1 - t) ** self.n
        return a, 1 - a

    def _derivative(self, t):
        d = self.n * (1 - t) ** (self.n - 1)
        return -d, d

    def __repr__(self) -> str:
        return f"PolynomialPath(n={self.n:g})"


class CosinePath(AffinePath):
    """alpha = cos(pi t / 2), sigma = sin(pi t / 2) (variance preserving, alpha^2 + sigma^2 = 1)."""

    def _marginal(self, t):
        return torch.cos(0.5 * math.pi * t), torch.sin(0.5 * math.pi * t)

    def _derivative(self, t):
        return -0.5 * math.pi * torch.sin(0.5 * math.pi * t), 0.5 * math.pi * torch.cos(0.5 * math.pi * t)


class VPPath(AffinePath):
    """The variance-preserving path of score_sde's VP SDE: alpha = exp(-B(t) / 2), sigma = sqrt(1 - alpha^2),
    B(t) = beta_min t + (beta_max - beta_min) t^2 / 2. alpha(1) is exp(-5.03) at the defaults, not 0: the
    prior N(0, I) at t = 1 is then the path's end up to that much."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0):
        if not 0 <= beta_min < beta_max or not math.isfinite(beta_max):
            raise ValueError(f"need 0 <= beta_min < beta_max (finite), got {beta_min}, {beta_max}")
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)

    def _marginal(self, t):
        alpha = torch.exp(-0.5 * (self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t.square()))
        return alpha, torch.sqrt(1 - alpha.square())

    def _derivative(self, t):
        alpha, sigma = self._marginal(t)
        d_alpha = -0.5 * (self.beta_min + (self.beta_max - self.beta_min) * t) * alpha
        return d_alpha, -alpha * d_alpha / sigma.clamp_min(1e-300)


def shift_time(t, shift: float | None = None, mu: float | None = None) -> torch.Tensor:
    """SD3's timestep shift t' = shift t / (1 + (shift - 1) t), or Flux's resolution-dependent one
    t' = e^mu / (e^mu + 1/t - 1) (the same map with shift = e^mu); both keep 0 and 1 fixed."""
    if (shift is None) == (mu is None):
        raise ValueError("give shift or mu (shift = exp(mu)), one of them")
    if mu is not None:
        if isinstance(mu, bool) or not isinstance(mu, (int, float)) or not math.isfinite(mu):
            raise ValueError(f"mu must be a finite number, got {mu!r}")
        shift = math.exp(mu)
    if isinstance(shift, bool) or not isinstance(shift, (int, float)) or not math.isfinite(shift) or shift <= 0:
        raise ValueError(f"shift must be a finite number > 0, got {shift!r}")
    t = _time(t)
    return shift * t / (1 + (shift - 1) * t)


def time_grid(steps: int, shift: float | None = None, mu: float | None = None) -> torch.Tensor:
    """steps + 1 times from 1 down to 0, uniform, or shifted (:func:`shift_time`) when shift or mu is given."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    grid = torch.linspace(1, 0, steps + 1, dtype=torch.float64)
    return grid if shift is None and mu is None else shift_time(grid, shift, mu)


def _time(t) -> torch.Tensor:
    t = t.double() if isinstance(t, torch.Tensor) else torch.tensor(t, dtype=torch.float64)
    if not bool(((t >= 0) & (t <= 1)).all()):
        raise ValueError(f"t must lie in [0, 1], got {t}")
    return t


def per_sample(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A float64 time coefficient, 0-d or per sample (B,), as like's dtype and device, broadcast over a sample."""
    v = v.to(like.device, like.dtype)
    return v.reshape(-1, *[1] * (like.dim() - 1)) if v.dim() else v


# ------------------------------------------------------------------------------------- consistency models' processes


class ConsistencyProcess(abc.ABC):
    """A forward process x_t = alpha(t) x0 + sigma(t) z with a consistency parametrization f(x, t) = c_skip(t) x +
    c_out(t) F(c_in(t) x, c_noise(t)), f(x, t_min) = x. Times run from t_max (noise) down to t_min (data)."""

    t_min: float
    t_max: float

    @abc.abstractmethod
    def marginal(self, t) -> tuple[torch.Tensor, torch.Tensor]:
        """(alpha(t), sigma(t)), float64."""

    @abc.abstractmethod
    def scalings(self, t) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(c_skip, c_out, c_in, c_noise) at t, float64."""

    @abc.abstractmethod
    def levels(self, steps: int) -> torch.Tensor:
        """The default `steps` model times of a multistep sampler, from t_max down (float64)."""

    def renoise(self, t) -> tuple[torch.Tensor, torch.Tensor]:
        """(keep, std) with which multistep sampling puts a clean sample back at level t: the marginal."""
        return self.marginal(t)

    @abc.abstractmethod
    def time_of_sigma(self, sigma) -> torch.Tensor:
        """The time whose variance-exploding noise level sigma(t) / alpha(t) is sigma."""

    # the range of the variance-exploding noise levels the training losses discretize (Karras et al.'s grid)
    sigma_min_ve: float
    sigma_max_ve: float

    def check_times(self, t, name: str = "t") -> torch.Tensor:
        """t as float64, each in [t_min, t_max] (else a ValueError naming `name`); a float32 time within its
        rounding of an end (pi/2 rounds up) is clamped to it."""
        low_precision = isinstance(t, torch.Tensor) and t.dtype in (torch.float32, torch.float16, torch.bfloat16)
        t = _as_tensor(t)
        slack = torch.finfo(torch.float32).eps * max(1.0, abs(self.t_max)) if low_precision else 0.0
        if not bool(torch.isfinite(t).all()) or not bool(((t >= self.t_min - slack) & (t <= self.t_max + slack)).all()):
            shown = t.tolist() if t.numel() <= 8 else f"values from {float(t.min())} to {float(t.max())}"
            raise ValueError(f"{name} must lie in [{self.t_min}, {self.t_max}] ({type(self).__name__}'s times), "
                             f"got {shown}")
        return t.clamp(self.t_min, self.t_max)

    def noise(self, x0: torch.Tensor, t, z: torch.Tensor) -> torch.Tensor:
        """x_t = alpha(t) x0 + sigma(t) z (t a number or one time per sample)."""
        alpha, sigma = self.marginal(self.check_times(t))
        return per_sample(alpha, x0) * x0 + per_sample(sigma, x0) * z


def _positive(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


class EDMConsistency(ConsistencyProcess):
    """The variance-exploding process x = x0 + sigma z, sigma in [sigma_min, sigma_max], with the consistency
    parametrization of Song et al. (2023) on EDM's preconditioning: c_skip = sigma_d^2 / ((sigma - sigma_min)^2 +
    sigma_d^2), c_out = sigma_d (sigma - sigma_min) / sqrt(sigma^2 + sigma_d^2), c_in = 1 / sqrt(sigma^2 +
    sigma_d^2), c_noise = log(sigma) / 4 (the times are the sigmas). Multistep levels: Karras et al.'s rho grid."""

    def __init__(self, sigma_data: float = 0.5, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0):
        self.sigma_data = _positive(sigma_data, "sigma_data")
        self.t_min, self.t_max = _positive(sigma_min, "sigma_min"), _positive(sigma_max, "sigma_max")
        self.rho = _positive(rho, "rho")
        if self.t_min >= self.t_max:
            raise ValueError(f"need sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.sigma_min_ve, self.sigma_max_ve = self.t_min, self.t_max

    def time_of_sigma(self, sigma):
        return _as_tensor(sigma)

    def marginal(self, t):
        t = _as_tensor(t)
        return torch.ones_like(t), t

    def renoise(self, t):
        """(1, sqrt(t^2 - sigma_min^2)): openai/consistency_models' noise for level t, exactly 0 at sigma_min."""
        t = _as_tensor(t)
        return torch.ones_like(t), (t**2 - self.t_min**2).clamp(min=0).sqrt()

    def scalings(self, t):
        t, d = _as_tensor(t), self.sigma_data
        c_skip = d**2 / ((t - self.t_min) ** 2 + d**2)
        c_out = d * (t - self.t_min) / (t**2 + d**2).sqrt()
        return c_skip, c_out, 1 / (t**2 + d**2).sqrt(), t.log() / 4

    def karras(self, steps: int) -> torch.Tensor:
        """`steps` Karras levels from sigma_max down to sigma_min (the discretization of the CD and CT losses, and
        openai/consistency_models' grid of 40 for its ``ts``)."""
        ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
        lo, hi = self.t_min ** (1 / self.rho), self.t_max ** (1 / self.rho)
        return (hi + ramp * (lo - hi)) ** self.rho

    def levels(self, steps: int) -> torch.Tensor:
        """Levels at evenly spaced indices of the Karras grid of 40 (openai's ``ts`` = round(linspace(0, 39,
        steps + 1))): sigma_max first; two steps: [80, 2.0] at the defaults."""
        return self.openai_levels(torch.linspace(0, 39, steps + 1).round().long().tolist(), 40)

    def openai_levels(self, ts, steps: int = 40) -> torch.Tensor:
        """The model times of openai/consistency_models' stochastic_iterative_sampler for its ``ts`` (increasing
        indices into a Karras grid of `steps` levels, the last one `steps - 1`: the sampler's output is the last
        evaluation's x0): the levels of ts[:-1]."""
        ts = [int(i) for i in ts]
        if len(ts) < 2 or any(b <= a for a, b in zip(ts, ts[1:], strict=False)) or ts[0] < 0 or ts[-1] != steps - 1:
            raise ValueError(f"ts must be increasing indices into the grid of {steps} levels, from >= 0 to "
                             f"{steps - 1} (openai's convention: index 0 is sigma_max), got {ts}")
        return self.karras(steps)[ts[:-1]]


class TrigFlowConsistency(ConsistencyProcess):
    """TrigFlow (Lu & Song 2024): x_t = cos(t) x0 + sin(t) sigma_d z, t in [0, pi/2], f(x, t) = cos(t) x - sin(t)
    sigma_d F(x / sigma_d, t) (c_skip = cos t, c_out = -sigma_d sin t, c_in = 1 / sigma_d, c_noise = t).
    Multistep levels: pi/2, then uniform in t. sigma_min, sigma_max: the variance-exploding levels sigma_d tan t
    the training losses discretize."""

    def __init__(self, sigma_data: float = 0.5, sigma_min: float = 0.002, sigma_max: float = 80.0):
        self.sigma_data = _positive(sigma_data, "sigma_data")
        self.t_min, self.t_max = 0.0, math.pi / 2
        self.sigma_min_ve, self.sigma_max_ve = _positive(sigma_min, "sigma_min"), _positive(sigma_max, "sigma_max")
        if self.sigma_min_ve >= self.sigma_max_ve:
            raise ValueError(f"need sigma_min < sigma_max, got {sigma_min}, {sigma_max}")

    def time_of_sigma(self, sigma):
        return torch.atan(_as_tensor(sigma) / self.sigma_data)

    def marginal(self, t):
        t = _as_tensor(t)
        return torch.cos(t), self.sigma_data * torch.sin(t)

    def scalings(self, t):
        t = _as_tensor(t)
        return torch.cos(t), -self.sigma_data * torch.sin(t), torch.full_like(t, 1 / self.sigma_data), t

    def levels(self, steps: int) -> torch.Tensor:
        return torch.linspace(self.t_max, self.t_min, steps + 1, dtype=torch.float64)[:-1]
