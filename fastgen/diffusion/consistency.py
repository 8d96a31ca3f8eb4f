"""Consistency models (Song et al. 2023; Song & Dhariwal 2023; Lu & Song 2024): the parametrized consistency
function, the consistency distillation and consistency training losses (pieces for a training loop of your own:
sample with ``fastgen.sample(f_or_net, shape, sde=process, sampler="consistency", ...)``, keep the target network
with ``fastgen.diffusion.EMA``), and the exact consistency function of an exact denoiser.

The processes are :class:`~fastgen.diffusion.processes.EDMConsistency` (x = x0 + sigma z) and
:class:`~fastgen.diffusion.processes.TrigFlowConsistency` (x = cos t x0 + sin t sigma_d z). Both discretize on
Karras et al.'s grid of noise levels in the variance-exploding form sigma = sigma(t) / alpha(t) (TrigFlow's time
of sigma is arctan(sigma / sigma_d)).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..core.constants import Coef
from ..ops import diffusion as ops
from .processes import ConsistencyProcess, per_sample

__all__ = ["ConsistencyFunction", "consistency_distillation_loss", "consistency_training_loss", "ct_steps",
           "ode_consistency_function", "pseudo_huber"]


def _times(t, x: torch.Tensor, process: ConsistencyProcess) -> torch.Tensor:
    """t as a float64 (B,) tensor on x's device; checked against the process's range unless it already lives on an
    accelerator (checking it there would read it back: a sync per call)."""
    if isinstance(t, torch.Tensor) and t.device.type != "cpu":
        t = t.to(torch.float64)
    else:
        t = process.check_times(t).to(x.device)
    return t.reshape(-1).expand(x.shape[0]) if t.numel() == 1 else t.reshape(-1)


class ConsistencyFunction(torch.nn.Module):
    """f(x, t) = c_skip(t) x + c_out(t) net(c_in(t) x, c_noise(t), **kwargs) for a consistency process (t a number
    or one time per sample; the network gets c_noise as a (B,) tensor of x's dtype). f(x, t_min) = x exactly.
    ``fastgen.sample(f, shape, sde=process, sampler="consistency", prediction="x0")`` samples with it; passing the
    network itself with prediction "raw" applies the parametrization inside the fused step instead."""

    def __init__(self, net: Callable, process: ConsistencyProcess):
        super().__init__()
        if not isinstance(process, ConsistencyProcess):
            raise TypeError(f"process must be EDMConsistency or TrigFlowConsistency, got {type(process).__name__}")
        self.net, self.process = net, process

    def forward(self, x: torch.Tensor, t, **kwargs) -> torch.Tensor:
        t = _times(t, x, self.process)
        c_skip, c_out, c_in, c_noise = self.process.scalings(t)
        out = self.net(per_sample(c_in, x) * x, c_noise.to(x.dtype), **kwargs)
        return per_sample(c_skip, x) * x + per_sample(c_out, x) * out


def pseudo_huber(a: torch.Tensor, b: torch.Tensor, c: float | None = None) -> torch.Tensor:
    """Per sample sqrt(|a - b|^2 + c^2) - c (Song & Dhariwal 2023), c = 0.00054 sqrt(d) by default (d the
    elements per sample)."""
    d = math.prod(a.shape[1:])
    c = 0.00054 * math.sqrt(d) if c is None else c
    return ((a - b).flatten(1).square().sum(1) + c * c).sqrt() - c


def ct_steps(k: int, total: int, s0: int = 10, s1: int = 1280) -> int:
    """The improved-CT discretization curriculum: N(k) = min(s0 2^floor(k / K'), s1) + 1 levels at training step k
    of `total`, K' = floor(total / (log2 floor(s1 / s0) + 1))."""
    if not 0 <= k < total:
        raise ValueError(f"k must lie in [0, total = {total}), got {k}")
    period = max(total // (int(math.log2(s1 // s0)) + 1), 1)
    return min(s0 * 2 ** (k // period), s1) + 1


class _Grid:
    """A discretization's levels on a device, built once per (process, steps, device): the Karras grid of
    variance-exploding sigmas sigma_1 < ... < sigma_N, the process's times, alpha and sigma there (float32), and
    the teacher's step tables from level i + 1 to i (rows indexed per sample by the fused step)."""

    def __init__(self, process: ConsistencyProcess, steps: int, device):
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
            raise ValueError(f"steps (the discretization's levels) must be an int >= 2, got {steps!r}")
        ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
        lo, hi = process.sigma_min_ve ** (1 / 7), process.sigma_max_ve ** (1 / 7)
        self.sigmas = (lo + ramp * (hi - lo)) ** 7  # float64, on the host
        times = process.time_of_sigma(self.sigmas)
        alpha, sigma = process.marginal(times)
        self.device = device
        self.times, self.alpha, self.sigma = (v.to(device, torch.float32) for v in (times, alpha, sigma))
        self.teacher: dict = {}

    @staticmethod
    def of(process: ConsistencyProcess, steps: int, device) -> _Grid:
        grids = process.__dict__.setdefault("_consistency_grids", {})
        key = (steps, torch.device(device))
        if key not in grids:
            grids[key] = _Grid(process, steps, device)
        return grids[key]

    def tables(self, solver: str) -> tuple[torch.Tensor, ...]:
        """The fused step's rows of `solver` from sigma_{i+1} to sigma_i, one per i (float32 on the device)."""
        if solver not in self.teacher:
            s, s_next = self.sigmas[1:], self.sigmas[:-1]
            if solver == "euler":
                rows = (ops.euler_coefficients(s, s_next),)
            elif solver == "heun":
                rows = (ops.euler_coefficients(s, s_next), ops.heun_correction_coefficients(s, s_next))
            else:  # DPM-Solver++(2S), the log-midpoint; its noise column unused
                mid = (s * s_next).sqrt()
                first, second = ops.dpmpp_2s_coefficients(s, mid, s_next)
                second[:, Coef.C_NOISE] = 0.0
                rows = (first, second, mid[:, None])
            self.teacher[solver] = tuple(r.to(self.device, torch.float32).contiguous() for r in rows)
        return self.teacher[solver]

    def noise(self, x0: torch.Tensor, level: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """alpha x0 + sigma z at each sample's level (indices on the device)."""
        return per_sample(self.alpha[level], x0) * x0 + per_sample(self.sigma[level], x0) * z


def _draws(x0: torch.Tensor, high: int, generator: torch.Generator | None, weights: torch.Tensor | None = None):
    """(level index per sample on x0's device, standard normal noise like x0), from `generator` (on its device)."""
    device = generator.device if generator is not None else x0.device
    if weights is None:
        index = torch.randint(0, high, (x0.shape[0],), generator=generator, device=device)
    else:
        index = torch.multinomial(weights.to(device), x0.shape[0], replacement=True, generator=generator)
    z = torch.randn(x0.shape, generator=generator, device=device, dtype=torch.float32)
    return index.to(x0.device), z.to(x0.device, x0.dtype)


def _metric(metric, a, b) -> torch.Tensor:
    if callable(metric):
        return metric(a, b)
    if metric == "pseudo_huber":
        return pseudo_huber(a, b)
    if metric == "l2":
        return (a - b).flatten(1).square().sum(1)
    raise ValueError(f"metric must be 'l2', 'pseudo_huber' or a callable (a, b) -> per-sample distance, got {metric!r}")


def consistency_training_loss(model: Callable, x0: torch.Tensor, process: ConsistencyProcess, *, steps: int,
                              target: Callable | None = None, metric="pseudo_huber", p_mean: float = -1.1,
                              p_std: float = 2.0, generator: torch.Generator | None = None,
                              model_kwargs: dict | None = None) -> torch.Tensor:
    """Consistency training without a teacher (improved CT, Song & Dhariwal 2023): levels sigma_1 < ... < sigma_N
    on the Karras grid of N = `steps` (see :func:`ct_steps` for the curriculum), level i drawn with probability
    proportional to erf((log sigma_{i+1} - P_mean) / (sqrt 2 P_std)) - erf((log sigma_i - P_mean) / (sqrt 2 P_std)),
    x_i = x0 + sigma_i z and x_{i+1} = x0 + sigma_{i+1} z with the same z (in the process's form), and the loss
    mean of d(f(x_{i+1}, t_{i+1}), f^-(x_i, t_i)) / (sigma_{i+1} - sigma_i): f^- is `target` (an EMA copy) or, by
    default, `model` itself without gradient (improved CT's choice). d: pseudo-Huber by default."""
    grid = _Grid.of(process, steps, x0.device)
    key = ("ct", p_mean, p_std)
    if key not in grid.teacher:  # the level distribution, and the weights 1 / (sigma_{i+1} - sigma_i)
        edges = torch.erf((grid.sigmas.log() - p_mean) / (math.sqrt(2) * p_std))
        grid.teacher[key] = ((edges[1:] - edges[:-1]).clamp(min=0).float(),
                             (1 / (grid.sigmas[1:] - grid.sigmas[:-1])).to(x0.device, torch.float32))
    levels, weights = grid.teacher[key]
    index, z = _draws(x0, steps - 1, generator, levels)
    kwargs = model_kwargs or {}
    with torch.no_grad():
        ref = (target or model)(grid.noise(x0, index, z), grid.times[index], **kwargs)
    distance = _metric(metric, model(grid.noise(x0, index + 1, z), grid.times[index + 1], **kwargs), ref)
    return (weights[index].to(distance.dtype) * distance).mean()


def consistency_distillation_loss(model: Callable, x0: torch.Tensor, process: ConsistencyProcess,
                                  teacher: Callable, *, steps: int = 18, solver: str = "heun",
                                  target: Callable | None = None, metric="l2",
                                  generator: torch.Generator | None = None,
                                  model_kwargs: dict | None = None) -> torch.Tensor:
    """Consistency distillation (Song et al. 2023, Algorithm 2): level n uniform on the Karras grid of `steps`,
    x_{n+1} = x0 + sigma_{n+1} z (in the process's form), the teacher's one ODE step back to sigma_n, and the loss
    mean of d(f(x_{n+1}, t_{n+1}), f^-(x_hat_n, t_n)), f^- = `target` (the EMA copy of the model, e.g.
    ``EMA(...).averaged(model)``) or the model without gradient. The teacher is a denoiser
    ``teacher(x, sigma) -> E[x0 | x]`` in the variance-exploding form x = x0 + sigma z (k-diffusion's
    convention; sigma a (B,) tensor), stepped by the fused diffusion step on per-sample rows of a table built once:
    "euler" (DPM-Solver's first order there), "heun" (Karras et al.'s second-order step) or "dpm_solver_2"
    (DPM-Solver++(2S), midpoint in log-sigma). d: squared L2 by default."""
    if solver not in ("euler", "heun", "dpm_solver_2"):
        raise ValueError(f"solver must be 'euler', 'heun' or 'dpm_solver_2', got {solver!r}")
    grid = _Grid.of(process, steps, x0.device)
    n, z = _draws(x0, steps - 1, generator)
    kwargs = model_kwargs or {}
    x_hi = grid.noise(x0, n + 1, z)
    with torch.no_grad():
        x = (x_hi / per_sample(grid.alpha[n + 1], x_hi)).float().contiguous()  # the variance-exploding form
        _teacher_step(teacher, x, grid, n, solver)
        ref = (target or model)((x * per_sample(grid.alpha[n], x)).to(x0.dtype), grid.times[n], **kwargs)
    return _metric(metric, model(x_hi, grid.times[n + 1], **kwargs), ref).mean()


def _teacher_step(teacher: Callable, x: torch.Tensor, grid: _Grid, n: torch.Tensor, solver: str) -> None:
    """One ODE step of the probability-flow ODE dx/dsigma = (x - D(x, sigma)) / sigma from each sample's level
    n + 1 to n, in place on x (float32, variance-exploding form): the fused step reads row n of the solver's
    table."""
    tables = grid.tables(solver)
    sigmas = grid.sigmas.to(x.device, torch.float32)

    def denoise(level):
        return teacher(x, level.to(x.dtype)).float().contiguous()

    if solver == "euler":
        ops.diffusion_step_(x, denoise(sigmas[n + 1]), tables[0], index=n, prediction="x0")
        return
    increment = torch.empty_like(x)
    ops.diffusion_step_(x, denoise(sigmas[n + 1]), tables[0], index=n, prediction="x0", aux=increment,
                        aux_store="increment")
    second = sigmas[n] if solver == "heun" else tables[2][n, 0]
    ops.diffusion_step_(x, denoise(second), tables[1], index=n, prediction="x0", aux=increment)


_FAR = 1e4  # a noise level above which the probability-flow ODE is x / sigma = const to 1 / _FAR of the data's scale


def ode_consistency_function(denoiser: Callable, process: ConsistencyProcess, steps: int = 200) -> Callable:
    """The exact consistency function of a process given its exact denoiser ``denoiser(x, sigma) -> E[x0 | x0 +
    sigma z]`` (variance-exploding form, sigma a (B,) tensor): f(x, t) is the probability-flow ODE's solution at
    t_min from (x, t), solved in float64 with Heun's method on `steps` Karras levels (k-diffusion's sample_heun);
    f(x, t_min) = x. t a number or one time per sample (solved per distinct time)."""
    from ..integrations.k_diffusion import sample_heun

    def f(x: torch.Tensor, t) -> torch.Tensor:
        t = _times(t, x, process).cpu()
        out = torch.empty(x.shape, dtype=torch.float64, device=x.device)
        alpha_end, sigma_end = (float(v) for v in process.marginal(process.t_min))
        end = sigma_end / alpha_end
        for value in torch.unique(t).tolist():
            rows = (t == value).to(x.device)
            alpha, sigma = (float(v) for v in process.marginal(value))
            level = sigma / alpha
            if value == process.t_min or level <= end:
                out[rows] = x[rows].double()
                continue
            start = x[rows].double() / alpha
            if level > _FAR:  # (TrigFlow's pi/2): the ODE keeps x / sigma there; solve from _FAR
                start, level = start * (_FAR / level), _FAR
            ramp = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
            lo = max(end, 1e-4) ** (1 / 7)
            sigmas = (level ** (1 / 7) + ramp * (lo - level ** (1 / 7))) ** 7
            if end == 0:
                sigmas = torch.cat([sigmas, sigmas.new_zeros(1)])
            y = sample_heun(lambda v, s: denoiser(v, s).double(), start, sigmas.to(x.device), disable=True)
            out[rows] = y * alpha_end
        return out.to(x.dtype)

    return f
