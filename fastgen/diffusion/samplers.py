"""fastgen.sample: whole diffusion / score-SDE sampling loops over the fused step op.

Each loop is planned on the host once: the time grid, every step's coefficient
row (fastgen.ops.diffusion's rules) as one device table, and the noise
offsets. The loop then makes one model call and one fused op per stage, with
no host-device sync; on CUDA the whole loop (model included) is captured in a
CUDA graph whose noise comes from a device-resident RNG state.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import numbers
import sys
import warnings
from collections.abc import Callable
from typing import NamedTuple

import torch

from ..core.constants import COEF_WIDTH, Coef
from ..core.rng import RNGState, resolve_seed
from ..ops import REGISTRY
from ..ops import diffusion as ops
from ..ops._common import STATE_DTYPES, backend_for, positive_float
from ..reference.diffusion import guided
from .processes import SDE, VESDE, VPSDE, AffinePath, ConsistencyProcess, DDPMSchedule, get_sigmas_karras

SAMPLERS = ("euler_maruyama", "pc", "ode_euler", "ode_heun", "ddpm", "ddim", "euler_ancestral", "dpmpp_2m")
SIGMA_SAMPLERS = ("euler_ancestral", "dpmpp_2m")
DISCRETE_SAMPLERS = ("ddpm", "ddim")
FLOW_SAMPLERS = ("ode_euler", "ode_heun", "ode_midpoint", "euler_maruyama")  # on a flow path (fastgen.flows.LinearPath)
CONSISTENCY_SAMPLERS = ("consistency",)  # on a consistency process (fastgen.diffusion.EDMConsistency, TrigFlow...)


@dataclasses.dataclass
class Stage:
    time: int  # index into the plan's times (the model's t) and scales (x_model = scale x)
    row: int  # index into the plan's coefficient table
    kind: str = "step"  # "step", or the pc corrector: "noise_level" (a step row) or "per_sample" (langevin_correct_)
    aux_store: str | None = None
    uses_aux: bool = False
    noise: bool = True  # whether the stage draws noise (reserves stream positions)
    lands: tuple[float, float] | None = None  # (keep, std) of the level a step's result is at (inpainting)


@dataclasses.dataclass
class Plan:
    times: torch.Tensor  # (S,) model times (float32, or int64 timesteps)
    scales: list[float]  # model input scale per time (1: the state itself)
    coef: torch.Tensor  # (R, 8) float64
    stages: list[Stage]
    prior_std: float
    prediction: str
    start: tuple[float, float] | None = None  # img2img: the first state is keep * data + std * xi
    level: tuple[float, float] = (0.0, 1.0)  # (keep, std) of the first state's level


DATA = (1.0, 0.0)  # the level of a finished sample: the data itself


def _level(process, sampler: str, t) -> tuple[float, float]:
    """(keep, std) of the sampler's state at model time t: x = keep x0 + std xi in the sampler's space (x_m / alpha
    for the sigma samplers), DATA past the last timestep (t = -1)."""
    t = torch.as_tensor(t)
    if not t.is_floating_point() and int(t) < 0:
        return DATA
    alpha, sigma = (float(v) for v in process.marginal(t))
    return (1.0, sigma / alpha) if sampler in SIGMA_SAMPLERS else (alpha, sigma)


def spacings(sampler: str, process) -> tuple[str, ...]:
    """The step spacings `sampler` takes on `process`, its default first: "karras" (Karras et al. 2022's rho = 7
    noise levels, as k-diffusion spaces its sigma samplers), "quadratic" (quadratic in time, t_i = eps +
    (T - eps) (1 - i/N)^2 or its discrete timesteps: the DDIM paper's spacing for CIFAR-10, DPM-Solver's
    time_quadratic), "uniform" in time, diffusers' "leading" and "trailing" timesteps. The defaults put enough steps
    at low noise that, with an exact score, narrow modes keep their width (tests/test_samplers_diffusion.py)."""
    if isinstance(process, DDPMSchedule):
        return ("quadratic", "leading", "trailing")
    if isinstance(process, AffinePath):
        return ("uniform",)
    return ("karras", "quadratic", "uniform") if sampler in SIGMA_SAMPLERS else ("quadratic", "uniform")


def _time_grid(sde: SDE, steps: int, spacing: str) -> torch.Tensor:
    """steps + 1 times from T down to eps."""
    u = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
    return sde.eps + (sde.T - sde.eps) * ((1 - u) ** 2 if spacing == "quadratic" else 1 - u)


@dataclasses.dataclass(frozen=True)
class Settings:
    """What a plan is computed from: the sampler, its step count and spacing, and its own options."""

    sampler: str
    steps: int
    prediction: str
    spacing: str | torch.Tensor  # a name, or a flow path's time grid
    eta: float = 0.0  # ddim
    denoise: bool = True  # the SDE samplers' noise-free last step
    corrector: str = "noise_level"  # pc
    snr: float = 0.16  # pc


def _plan(process, settings: Settings, skip: int = 0) -> Plan:
    """Model times, input scales, all coefficient rows (computed at once) and the stage list. ``skip`` > 0 drops
    the first ``skip`` steps of the time grid (img2img) and records where the remaining run starts."""
    grid = _grid_of(process, settings.sampler, settings.steps, settings.spacing)[skip:] if skip else None
    rule = _plan_flow if isinstance(process, AffinePath) else PLANS[settings.sampler]
    plan = rule(process, dataclasses.replace(settings, steps=settings.steps - skip), grid)
    if not isinstance(process, ConsistencyProcess):  # (a consistency plan's model times are c_noise's)
        plan.level = _level(process, settings.sampler, plan.times[0])
    if skip:
        plan.start = plan.level
    return plan


def _grid_of(process, sampler: str, steps: int, spacing: str) -> torch.Tensor:
    """The step times of a full run: DDPM timesteps, the sigma samplers' model times, or the SDE or flow path's time
    grid (with its end point)."""
    if isinstance(process, AffinePath):
        return spacing if isinstance(spacing, torch.Tensor) else torch.linspace(1, 0, steps + 1, dtype=torch.float64)
    if isinstance(process, ConsistencyProcess):
        return spacing if isinstance(spacing, torch.Tensor) else process.levels(steps)
    if sampler in DISCRETE_SAMPLERS or (sampler in SIGMA_SAMPLERS and isinstance(process, DDPMSchedule)):
        return torch.tensor(process.timesteps(steps, spacing))
    if sampler in SIGMA_SAMPLERS:
        if spacing == "karras":
            lo, hi = float(process.sigma_ratio(process.eps)), float(process.sigma_ratio(process.T))
            return process.time_of_sigma_ratio(get_sigmas_karras(steps, lo, hi).double()[:-1])
        return _time_grid(process, steps, spacing)[:-1]
    return _time_grid(process, steps, spacing)


def _plan_discrete(process: DDPMSchedule, s: Settings, grid) -> Plan:
    """ddpm, ddim: one step per timestep, to the previous timestep (-1: the data)."""
    ts = torch.tensor(process.timesteps(s.steps, s.spacing)) if grid is None else grid
    prev = torch.cat([ts[1:], torch.tensor([-1])])
    coef = ops.ddpm_coefficients(process, ts, prev) if s.sampler == "ddpm" else \
        ops.ddim_coefficients(process, ts, prev, s.eta)
    noisy = (coef[:, Coef.C_NOISE] != 0).tolist()
    stages = [Stage(i, i, noise=noisy[i], lands=_level(process, s.sampler, prev[i])) for i in range(s.steps)]
    return Plan(ts, [1.0] * s.steps, coef, stages, 1.0, s.prediction)


def _plan_sigma(process, s: Settings, grid) -> Plan:
    """euler_ancestral, dpmpp_2m: steps in sigma = sigma(t) / alpha(t), the model fed x_m = alpha x."""
    ts = _grid_of(process, s.sampler, s.steps, s.spacing) if grid is None else grid
    lands = [_level(process, s.sampler, t) for t in ts[1:]] + [DATA]
    alphas, sigmas = process.marginal(ts)
    ratios = torch.cat([sigmas / alphas, torch.zeros(1, dtype=torch.float64)])
    if s.sampler == "euler_ancestral":
        coef = ops.euler_ancestral_coefficients(ratios[:-1], ratios[1:], eta=1.0, alpha=alphas)
        stages = [Stage(i, i, noise=bool(ratios[i + 1] > 0), lands=lands[i]) for i in range(len(ts))]
    else:
        coef = ops.dpmpp_2m_coefficients(ratios, alphas)
        stages = [Stage(i, i, aux_store="x0", uses_aux=True, noise=False, lands=lands[i]) for i in range(len(ts))]
    prior = float(process.prior_std() if isinstance(process, SDE) else 1.0) / float(alphas[0])
    return Plan(ts, alphas.tolist(), coef, stages, prior, s.prediction)


def _sde_grid(process: SDE, s: Settings, grid):
    """(t, t_next, the levels the steps land on) of the SDE samplers' time grid."""
    grid = _time_grid(process, s.steps, s.spacing) if grid is None else grid
    t, t_next = grid[:-1], grid[1:]
    return t, t_next, [_level(process, s.sampler, tn) for tn in t_next[:-1]] + [DATA]


def _plan_heun(process: SDE, s: Settings, grid) -> Plan:
    """ode_heun: stage 2i is Euler at t_i (keeping its increment), 2i + 1 Heun's correction at t_{i+1}."""
    t, t_next, lands = _sde_grid(process, s, grid)
    coef = torch.stack([ops.ode_euler_coefficients(process, t, t_next),
                        ops.ode_heun_correction_coefficients(process, t, t_next)], dim=1).reshape(-1, COEF_WIDTH)
    model_times = torch.stack([t, t_next], dim=1).reshape(-1)
    stages = [Stage(2 * i, 2 * i, aux_store="increment", uses_aux=True, noise=False) if j == 0 else
              Stage(2 * i + 1, 2 * i + 1, uses_aux=True, noise=False, lands=lands[i])
              for i in range(s.steps) for j in (0, 1)]
    return Plan(model_times, [1.0] * (2 * s.steps), coef, stages, process.prior_std(), s.prediction)


def _predictor_rows(process: SDE, s: Settings, t, t_next) -> torch.Tensor:
    rule = {"euler_maruyama": ops.euler_maruyama_coefficients, "pc": ops.reverse_diffusion_coefficients,
            "ode_euler": ops.ode_euler_coefficients}[s.sampler]
    coef = rule(process, t, t_next).clone()
    if s.denoise:
        coef[-1, 7] = 0.0  # the last step returns the mean (score_sde's noise removal)
    return coef


def _plan_sde(process: SDE, s: Settings, grid) -> Plan:
    """euler_maruyama, ode_euler: one step per interval of the time grid."""
    t, t_next, lands = _sde_grid(process, s, grid)
    coef = _predictor_rows(process, s, t, t_next)
    noisy = (coef[:, Coef.C_NOISE] != 0).tolist()
    stages = [Stage(i, i, noise=noisy[i], lands=lands[i]) for i in range(s.steps)]
    return Plan(t, [1.0] * s.steps, coef, stages, process.prior_std(), s.prediction)


def _plan_pc(process: SDE, s: Settings, grid) -> Plan:
    """pc: stage 2i is the Langevin corrector at t_i (rows steps + i), 2i + 1 the reverse-diffusion predictor."""
    t, t_next, lands = _sde_grid(process, s, grid)
    coef = _predictor_rows(process, s, t, t_next)
    noisy = (coef[:, Coef.C_NOISE] != 0).tolist()
    corrector = ops.langevin_noise_level_coefficients(process, t, t_next, s.snr) if s.corrector == "noise_level" \
        else ops.langevin_corrector_coefficients(process, t, t_next)
    coef = torch.cat([coef, corrector])
    stages = [Stage(i, s.steps + i, kind=s.corrector) if j == 0 else Stage(i, i, noise=noisy[i], lands=lands[i])
              for i in range(s.steps) for j in (0, 1)]
    times = torch.tensor(t.tolist(), dtype=torch.float64)
    return Plan(times, [1.0] * s.steps, coef, stages, process.prior_std(), s.prediction)


def _plan_flow(path: AffinePath, s: Settings, grid) -> Plan:
    """ode_euler, ode_heun, ode_midpoint, euler_maruyama on a flow path, from t = 1 to 0 (the model's output, a
    velocity by default, read as the path's velocity through the rows' alpha', sigma'). Heun and midpoint: stage 2i
    an Euler step keeping its increment, 2i + 1 the second stage; Heun's correction at t = 0 only where the path's
    derivative is finite there (the VP path's last step is Euler's)."""
    grid = _grid_of(path, s.sampler, s.steps, s.spacing) if grid is None else grid
    t, t_next = grid[:-1], grid[1:]
    lands = [_level(path, s.sampler, tn) for tn in t_next[:-1]] + [DATA]
    if s.sampler in ("ode_euler", "euler_maruyama"):
        coef = ops.flow_euler_coefficients(path, t, t_next) if s.sampler == "ode_euler" else \
            ops.flow_sde_coefficients(path, t, t_next, s.eta)
        if s.denoise:
            coef[-1, Coef.C_NOISE] = 0.0  # the last step returns the mean
        noisy = (coef[:, Coef.C_NOISE] != 0).tolist()
        stages = [Stage(i, i, noise=noisy[i], lands=lands[i]) for i in range(len(t))]
        return Plan(t, [1.0] * len(t), coef, stages, 1.0, s.prediction)
    if s.sampler == "ode_heun":
        first = ops.flow_euler_coefficients(path, t, t_next)
        second = ops.flow_heun_correction_coefficients(path, t, t_next)
        times = torch.stack([t, t_next], dim=1).reshape(-1)
    else:
        first, second = ops.flow_midpoint_coefficients(path, t, t_next)
        times = torch.stack([t, (t + t_next) / 2], dim=1).reshape(-1)
    coef = torch.stack([first, second], dim=1).reshape(-1, COEF_WIDTH)
    stages = []
    for i, finite in enumerate(torch.isfinite(second.float()).all(1).tolist()):
        stages += [Stage(2 * i, 2 * i, aux_store="increment", uses_aux=True, noise=False),
                   Stage(2 * i + 1, 2 * i + 1, uses_aux=True, noise=False, lands=lands[i])] if finite else \
            [Stage(2 * i, 2 * i, noise=False, lands=lands[i])]
    return Plan(times, [1.0] * len(times), coef, stages, 1.0, s.prediction)


def _plan_consistency(process: ConsistencyProcess, s: Settings, grid) -> Plan:
    """consistency: at each level t_i one model call, x0 = f(x, t_i), and one fused step putting x0 back at the
    next level (gamma = eta: fresh noise at 1, TCD-style gamma-sampling below), the last returning x0. With
    prediction "raw" the model is the network F, called at (c_in x, c_noise) with f = c_skip x + c_out F applied in
    the step; with "x0" the model is f itself, called at (x, t)."""
    levels = _grid_of(process, s.sampler, s.steps, s.spacing) if grid is None else grid
    n = len(levels)
    t_next = torch.cat([levels[1:], torch.full((1,), float("nan"), dtype=torch.float64)])
    raw = s.prediction == "raw"
    coef = ops.consistency_coefficients(process, levels, t_next, s.eta, raw)
    _, _, c_in, c_noise = process.scalings(levels)
    keep, std = process.renoise(levels)
    stages = [Stage(i, i, noise=i < n - 1, lands=(float(keep[i + 1]), float(std[i + 1])) if i < n - 1 else DATA)
              for i in range(n)]
    plan = Plan(c_noise if raw else levels, c_in.tolist() if raw else [1.0] * n, coef, stages, float(std[0]),
                "v" if raw else "x0")
    plan.level = (float(keep[0]), float(std[0]))
    return plan


PLANS = {  # sampler -> plan(process, settings, grid or None); on a flow path, _plan_flow
    "euler_maruyama": _plan_sde, "pc": _plan_pc, "ode_euler": _plan_sde, "ode_heun": _plan_heun,
    "ddpm": _plan_discrete, "ddim": _plan_discrete, "euler_ancestral": _plan_sigma, "dpmpp_2m": _plan_sigma,
    "consistency": _plan_consistency,
}


class _Progress:
    def __init__(self, total: int, enabled: bool):
        self.total, self.enabled, self.every = total, enabled, max(1, total // 50)

    def update(self, done: int) -> None:
        if self.enabled and (done % self.every == 0 or done == self.total):
            width = 30
            filled = width * done // self.total
            end = "\n" if done == self.total or not sys.stderr.isatty() else ""
            print(f"\rsampling [{'#' * filled}{'.' * (width - filled)}] {done}/{self.total}", end=end, file=sys.stderr,
                  flush=True)


def _own_kwargs(model_kwargs, batch: int, device) -> dict:
    """The sampler's copy of ``model_kwargs``: tensors batched along dim 0 (first dimension = the batch) are copied
    onto the device into buffers the loop owns; 0-d tensors, tensors with a first dimension of 1 (broadcast) and
    other values are passed as given."""
    if model_kwargs is None:
        return {}
    if not isinstance(model_kwargs, dict) or not all(isinstance(k, str) for k in model_kwargs):
        raise TypeError(f"model_kwargs must be a dict of keyword arguments, got {type(model_kwargs).__name__}")
    own = {}
    for key, value in model_kwargs.items():
        if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == batch:
            value = value.to(device, copy=True).contiguous()
        elif isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] != 1:
            raise ValueError(f"model_kwargs[{key!r}] must be batched along dim 0 with the samples' batch size "
                             f"{batch} (or have a first dimension of 1 to broadcast), got shape {tuple(value.shape)}")
        own[key] = value
    return own


def _guided_kwargs(own: dict, uncond_kwargs, batch: int, device) -> tuple[dict, dict]:
    """The keyword arguments of the guided call on the doubled batch [x; x]: per key, the conditional and the
    unconditional values as (B, ...) halves of one (2B, ...) buffer (broadcast values expanded), or one value the
    two share; and the conditional kwargs as views of the first halves (so a refill reaches both calls)."""
    if not isinstance(uncond_kwargs, dict) or set(uncond_kwargs) != set(own):
        raise ValueError(f"uncond_kwargs must give the unconditional value of every model_kwargs key {sorted(own)} "
                         f"(e.g. a null label), got "
                         + (f"{sorted(uncond_kwargs)}" if isinstance(uncond_kwargs, dict)
                            else type(uncond_kwargs).__name__))
    guided, cond = {}, {}
    for key, c in own.items():
        u = uncond_kwargs[key]
        if not isinstance(c, torch.Tensor) and not isinstance(u, torch.Tensor):
            if u is not c and u != c:
                raise ValueError(f"uncond_kwargs[{key!r}] differs from model_kwargs[{key!r}] and is not a tensor: "
                                 "the guided call takes one value for both halves")
            guided[key] = cond[key] = c
            continue
        halves = []
        for name, v in (("model_kwargs", c), ("uncond_kwargs", u)):
            if not isinstance(v, torch.Tensor) or (v.dim() > 0 and v.shape[0] not in (1, batch)):
                raise ValueError(f"{name}[{key!r}] must be a tensor batched along dim 0 ({batch}) or broadcast "
                                 f"(first dimension 1, or 0-d), got "
                                 f"{tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__}")
            v = v.to(device)
            v = v.reshape(1, 1) if v.dim() == 0 else v
            halves.append(v.expand(batch, *v.shape[1:]))
        if halves[0].shape[1:] != halves[1].shape[1:] or halves[0].dtype != halves[1].dtype:
            raise ValueError(f"model_kwargs[{key!r}] and uncond_kwargs[{key!r}] must agree in shape past the batch "
                             f"dimension and in dtype, got {tuple(halves[0].shape)} {halves[0].dtype} and "
                             f"{tuple(halves[1].shape)} {halves[1].dtype}")
        guided[key] = torch.cat(halves).contiguous()
        cond[key] = guided[key][:batch]
    return guided, cond


def _refill_kwargs(own: dict, new: dict, batch: int) -> None:
    if not isinstance(new, dict) or set(new) != set(own):
        raise ValueError(f"model_kwargs must have the keys the sampler was built with, {sorted(own)}, got "
                         f"{sorted(new) if isinstance(new, dict) else type(new).__name__}")
    for key, value in new.items():
        mine = own[key]
        if isinstance(mine, torch.Tensor) and mine.dim() > 0 and mine.shape[0] == batch:
            if not isinstance(value, torch.Tensor) or value.shape != mine.shape:
                raise ValueError(f"model_kwargs[{key!r}] must have shape {tuple(mine.shape)} as when the sampler was "
                                 f"built, got {tuple(value.shape) if isinstance(value, torch.Tensor) else value!r}")
            mine.copy_(value)
        elif value is not mine:
            raise ValueError(f"model_kwargs[{key!r}] is not batched: it was bound when the sampler was built and "
                             "cannot change between draws (build another sampler)")


@dataclasses.dataclass(frozen=True)
class Guidance:
    """Classifier-free guidance (see :func:`sample`): the step reads u + w (c - u), w = ``scale`` (a number or a
    (B,) tensor), with the model's unconditional values ``uncond_kwargs``; only at model times in ``interval``
    (low, high) when given; ``rescale`` phi in [0, 1] (Lin et al. 2024)."""

    scale: float | torch.Tensor
    uncond_kwargs: dict
    interval: tuple[float, float] | None = None
    rescale: float = 0.0


@dataclasses.dataclass(frozen=True)
class Inpainting:
    """Inpainting by replacement: where ``mask`` is True the state is the data ``known`` at each step's level."""

    known: torch.Tensor
    mask: torch.Tensor


@dataclasses.dataclass(frozen=True)
class Noise:
    """Where the loop's noise comes from: the stream under ``seed``, or each sample's own seed."""

    seed: int
    per_sample_seeds: torch.Tensor | None = None


@dataclasses.dataclass(frozen=True)
class Options:
    """How a planned loop runs (every field checked by :func:`make_sampler`)."""

    device: torch.device
    dtype: torch.dtype
    noise: Noise
    clip: float | None = None
    snr: float = 0.16
    callback: Callable | None = None
    progress: bool = False
    check_finite: bool = False
    model_kwargs: dict | None = None
    guidance: Guidance | None = None
    init: torch.Tensor | None = None  # img2img: the data the plan's first state is noised from
    inpainting: Inpainting | None = None


class BoundStage(NamedTuple):
    """One stage of a built loop: what it passes that does not change between runs."""

    t: torch.Tensor  # (B,) model times
    scale: float  # model input scale (x_model = scale x)
    call: functools.partial  # the op with its row and options bound
    draw: int | None  # the stage's noise draw (None: the stored prior noise)
    uses_aux: bool
    guide: tuple | None  # (w, doubled times) under guidance, else None


class Sampler:
    """A planned sampling loop for a fixed model, shape and settings (see :func:`sample`).

    ``run()`` executes it eagerly; on CUDA ``capture()`` records it in a CUDA graph,
    after which every ``replay()`` draws fresh noise (the RNG state lives on the device).
    ``draw(per_sample_seeds)`` does whichever applies, with new per-sample seeds copied into
    the sampler's seed buffer first, so one sampler (one capture) serves many batches.
    """

    def __init__(self, model, shape, plan: Plan, options: Options):
        self.model, self.shape, self.plan, self.options = model, tuple(shape), plan, options
        device, dtype = self.device, self.dtype = torch.device(options.device), options.dtype
        self.init = None if options.init is None else options.init.to(device, dtype, copy=True).contiguous()
        guidance, inpainting = options.guidance, options.inpainting
        self.guidance_rescale = 0.0 if guidance is None else guidance.rescale
        self.known = None if inpainting is None else inpainting.known.to(device, torch.float32, copy=True).contiguous()
        self.known_mask = None if inpainting is None else inpainting.mask.to(device, copy=True).contiguous()
        self.model_kwargs = _own_kwargs(options.model_kwargs, shape[0], device)
        self.guided_kwargs = None
        if guidance is not None:
            self.guided_kwargs, self.model_kwargs = _guided_kwargs(self.model_kwargs, guidance.uncond_kwargs,
                                                                   shape[0], device)
        self.seed, seeds = options.noise.seed, options.noise.per_sample_seeds
        self.clip, self.snr, self.callback = options.clip, options.snr, options.callback
        self.check_finite, self.progress = options.check_finite, options.progress
        self.sample_seeds = None if seeds is None else seeds.to(device, torch.int64, copy=True).contiguous()
        self.coef = plan.coef.to(device, torch.float32)
        self.times = plan.times.to(device, torch.float32 if plan.times.is_floating_point() else torch.int64)
        self.numel = math.prod(self.shape)
        self.sample_size = self.numel // self.shape[0] if self.shape[0] else 0
        self.unit_row = ops.noise_row(1.0, device=device)
        self.prior_row = ops.noise_row(plan.prior_std, device=device) if plan.start is None else \
            ops.noise_row(plan.start[1], keep=plan.start[0], device=device)
        self.graph = None
        # Arguments are checked once here; the loop calls the registered ops' keyword calls directly,
        # on the backend chosen here.
        self.backend = backend_for(torch.empty((1,), device=device, dtype=dtype))
        self.prediction = ops.prediction_code(plan.prediction)
        self.stages = self._bind_stages()

    def _bind_stages(self) -> list[BoundStage]:
        """Everything a stage passes that does not change between runs, bound once."""
        plan, step_op = self.plan, REGISTRY["diffusion_step_"].on(self.backend)
        correct_op = self.correct_op = REGISTRY["langevin_correct_"].on(self.backend)
        stored = self.known is not None and self.device.type == "cpu" and any(
            s.lands is not None and not s.noise for s in plan.stages)
        self.prior_noise = torch.empty(self.shape, device=self.device) if stored else None
        self.prior_draw = None if stored else 0  # None: the stored prior noise
        stages, draw = [], 1
        for stage in plan.stages:
            row = self.coef[stage.row:stage.row + 1]
            if stage.kind == "per_sample":
                call = functools.partial(correct_op, coef=row, prediction=self.prediction, snr=self.snr)
            elif stage.kind == "noise_level":
                call = functools.partial(step_op, coef=row, prediction=self.prediction)
            else:
                call = functools.partial(step_op, coef=row, prediction=self.prediction, clip=self.clip,
                                         aux_store=int(ops.AUX_STORE[stage.aux_store]), **self._known(stage.lands))
            # A stage without noise of its own re-noises a known region with the prior draw's noise (the same
            # xi at every step: the data's deterministic path; on the CPU read from a buffer filled once per run,
            # cheaper there than drawing it again); a noisy stage with its own (fresh xi every step).
            own = stage.noise or stage.kind != "step"
            stages.append(BoundStage(t=self.times[stage.time].expand(self.shape[0]), scale=plan.scales[stage.time],
                                     call=call, draw=draw if own else self.prior_draw, uses_aux=stage.uses_aux,
                                     guide=self._guide(self.options.guidance, stage)))
            draw += own
        return stages

    def _known(self, level) -> dict:
        """The op's inpainting arguments for a state at `level` (none without inpainting or off a step's end)."""
        if self.known is None or level is None:
            return {}
        return dict(known=self.known, known_mask=self.known_mask, known_keep=level[0], known_std=level[1])

    def _guide(self, guidance: Guidance | None, stage: Stage):
        """The stage's guidance: (w as a (1,) or (B,) float32 device tensor, the doubled times), or None where the
        conditional model alone runs (no guidance, or t outside its interval)."""
        if guidance is None:
            return None
        scale, interval = guidance.scale, guidance.interval
        t = float(self.plan.times[stage.time])
        if interval is not None and not interval[0] <= t <= interval[1]:
            return None
        w = scale.to(self.device, torch.float32).reshape(-1).contiguous() if isinstance(scale, torch.Tensor) else \
            torch.full((1,), float(scale), device=self.device)
        return w, self.times[stage.time].expand(2 * self.shape[0])

    def _model(self, x: torch.Tensor, t: torch.Tensor, guide):
        """The model output at x (the conditional one under guidance), and the unconditional one under guidance:
        one call on the doubled batch [x; x]."""
        if guide is None:
            out = self.model(x, t, **self.model_kwargs)
            expect = x.shape
        else:
            out = self.model(torch.cat([x, x]), guide[1], **self.guided_kwargs)
            expect = (2 * x.shape[0],) + x.shape[1:]
        if not isinstance(out, torch.Tensor) or out.shape != expect or out.device != x.device:
            got = f"{tuple(out.shape)} on {out.device}" if isinstance(out, torch.Tensor) else type(out).__name__
            what = "the state's shape" if guide is None else "shape"
            doubled = "" if guide is None else " (the state's, doubled for the guided call)"
            raise ValueError(f"model must return a tensor of {what} {tuple(expect)} on {x.device}{doubled}, got {got}")
        out = out.to(x.dtype)
        if guide is None:
            return out.contiguous(), None
        return out[:x.shape[0]].contiguous(), out[x.shape[0]:].contiguous()

    def counters(self) -> int:
        """Counters one run reserves from the stream (per sample with per-sample seeds)."""
        draws = 1 + sum(s.noise or s.kind != "step" for s in self.plan.stages)
        return draws * (self.sample_size if self.sample_seeds is not None else self.numel)

    def _noise(self, draw: int | None, rng_state) -> dict:
        """The op's noise arguments for noise draw `draw` (None: the stored prior noise)."""
        if draw is None:
            return dict(noise=self.prior_noise)
        if self.sample_seeds is not None:
            return dict(sample_seeds=self.sample_seeds, sample_offset=draw * self.sample_size)
        return dict(seed=self.seed, offset=draw * self.numel, rng_state=rng_state)

    def run(self, x: torch.Tensor | None = None, rng_state=None) -> torch.Tensor:
        """The loop, into x (allocated if None); noise from rng_state (a device state) or the seed."""
        x = torch.empty(self.shape, device=self.device, dtype=self.dtype) if x is None else x
        if self.init is not None:
            x.copy_(self.init)  # img2img: x <- alpha(t_start) init + sigma(t_start) xi (in the sampler's space)
        ops.add_noise_(x, self.prior_row, backend=self.backend, **self._noise(0, rng_state),
                       **self._known(self.plan.level))  # x <- prior_std xi (the known region: at its level)
        if self.prior_noise is not None:  # the prior draw's xi, for the known region of the deterministic stages
            ops.add_noise_(self.prior_noise, self.unit_row, backend=self.backend, **self._noise(0, rng_state))
        aux = torch.zeros(self.shape, device=self.device, dtype=torch.float32) if any(
            s.uses_aux for s in self.plan.stages) else None
        bad_step = torch.full((), -1, device=self.device, dtype=torch.int64) if self.check_finite else None
        progress = _Progress(len(self.stages), self.progress)
        for i, stage in enumerate(self.stages):
            out, uncond = self._model(x if stage.scale == 1.0 else x * stage.scale, stage.t, stage.guide)
            extra = {} if stage.guide is None else dict(uncond_out=uncond, guidance=stage.guide[0],
                                                        guidance_rescale=self.guidance_rescale)
            if uncond is not None and stage.call.func is self.correct_op:  # the corrector's op takes no guidance
                out, extra = guided(out, uncond, stage.guide[0].to(x.dtype), self.guidance_rescale), {}
            if stage.uses_aux:
                extra["aux"] = aux
            stage.call(x=x, model_out=out, **extra, **self._noise(stage.draw, rng_state))
            if bad_step is not None:
                bad = ~torch.isfinite(x).all()
                bad_step = torch.where(bad & (bad_step < 0), torch.full_like(bad_step, i), bad_step)
            if self.callback is not None:
                self.callback(i, x)
            progress.update(i + 1)
        if bad_step is not None and self.graph is None:
            self._raise_if_bad(bad_step)
        self._bad_step = bad_step
        return x

    @staticmethod
    def _raise_if_bad(bad_step: torch.Tensor) -> None:
        step = int(bad_step)  # one host read, after the loop
        if step >= 0:
            raise FloatingPointError(f"fastgen.sample: the state went non-finite at step {step}")

    def capture(self) -> Sampler:
        """Record the loop, model included, in a CUDA graph (raises if the model cannot be captured)."""
        self.rng = RNGState(self.seed, self.device)
        self.static_x = torch.empty(self.shape, device=self.device, dtype=self.dtype)
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):  # warm-up outside the capture (lazy inits, Triton compiles)
            self.run(self.static_x, self.rng.state)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.run(self.static_x, self.rng.state)
            self.rng.advance_(self.counters())
        return self

    def replay(self) -> torch.Tensor:
        """One more run of the captured loop, with fresh noise; returns a new tensor."""
        self.graph.replay()
        if self._bad_step is not None:
            self._raise_if_bad(self._bad_step)
        return self.static_x.clone()

    def prepare(self, graph) -> Sampler:
        """Capture the loop when `graph` asks for it and it can be (see :func:`sample`); else run eagerly."""
        use_graph = self.device.type == "cuda" and graph in ("auto", True) and self.callback is None
        if graph is True and not use_graph:
            raise ValueError("graph=True needs a CUDA device and no callback")
        if use_graph:
            try:
                self.capture()
            except FloatingPointError:
                raise
            except Exception as err:
                if graph is True:
                    raise
                warnings.warn(f"fastgen.sample: running without a CUDA graph: the loop could not be captured "
                              f"({type(err).__name__}: {err})", RuntimeWarning, stacklevel=3)
                self.graph = None
        return self

    def draw(self, per_sample_seeds: torch.Tensor | None = None, model_kwargs: dict | None = None,
             known: torch.Tensor | None = None) -> torch.Tensor:
        """One run of the loop (a replay when captured) into a new tensor; with `per_sample_seeds` (B,)
        those seeds replace the sampler's (it must have been built with per-sample seeds); with `model_kwargs`
        the per-sample conditioning tensors are copied into the sampler's (same keys and shapes), and with
        `known` the inpainting data (the mask stays), so a captured loop replays with the new conditioning."""
        if known is not None:
            if self.known is None:
                raise ValueError("known: this sampler was built without inpainting (known=, known_mask=)")
            _check_known(known, self.known_mask, self.shape)
            self.known.copy_(known)
        if model_kwargs is not None:
            _refill_kwargs(self.model_kwargs, model_kwargs, self.shape[0])
        if per_sample_seeds is not None:
            if self.sample_seeds is None or per_sample_seeds.shape != self.sample_seeds.shape:
                raise ValueError(f"per_sample_seeds must have shape ({self.shape[0]},) and the sampler must be built "
                                 "with per-sample seeds")
            if per_sample_seeds.dtype not in (torch.int64, torch.int32, torch.int16):
                raise TypeError(f"per_sample_seeds must be an int64, int32 or int16 tensor, got "
                                f"{per_sample_seeds.dtype}")
            if per_sample_seeds.device.type == "cpu":  # (a device tensor is not read back: no sync per draw)
                _check_nonnegative(per_sample_seeds)
            self.sample_seeds.copy_(per_sample_seeds)
        if self.graph is not None:
            return self.replay()
        return self.run()


def _check_guidance(scale, uncond_kwargs, interval, model_kwargs, batch: int, rescale) -> Guidance | None:
    """The guidance options, checked together."""
    if scale is None:
        if uncond_kwargs is not None or interval is not None or rescale is not None:
            raise ValueError("uncond_kwargs, guidance_interval and guidance_rescale are for classifier-free guidance: "
                             "give guidance_scale")
        return None
    if rescale is not None and (isinstance(rescale, bool) or not isinstance(rescale, (int, float)) or
                                not 0 <= rescale <= 1):
        raise ValueError(f"guidance_rescale must be a number in [0, 1], got {rescale!r}")
    if isinstance(scale, torch.Tensor):
        if not scale.is_floating_point() or scale.shape not in ((batch,), (1,), ()):
            raise ValueError(f"guidance_scale must be a number or a floating-point tensor of shape ({batch},) (one "
                             f"per sample), got {scale.dtype} {tuple(scale.shape)}")
        if not bool(torch.isfinite(scale).all()):
            raise ValueError("guidance_scale must be finite")
    elif isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"guidance_scale must be a finite number or a (B,) tensor, got {scale!r}")
    if not model_kwargs or uncond_kwargs is None:
        raise ValueError("guidance_scale needs model_kwargs (the conditioning) and uncond_kwargs (its unconditional "
                         "values, e.g. a null label)")
    if interval is not None and (not isinstance(interval, (tuple, list)) or len(interval) != 2 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v) for v in interval)
            or interval[0] > interval[1]):
        raise ValueError(f"guidance_interval must be (low, high) model times with low <= high, got {interval!r}")
    return Guidance(scale, uncond_kwargs, None if interval is None else tuple(interval), float(rescale or 0.0))


def _check_known(known, known_mask, shape) -> Inpainting | None:
    if known is None and known_mask is None:
        return None
    if known is None or known_mask is None:
        raise ValueError("known and known_mask go together: inpainting needs the data and where it is known")
    if not isinstance(known, torch.Tensor) or tuple(known.shape) != tuple(shape) or not known.is_floating_point():
        raise ValueError(f"known must be a floating-point tensor of the samples' shape {tuple(shape)}, got "
                         f"{tuple(known.shape) if isinstance(known, torch.Tensor) else type(known).__name__}")
    if not bool(torch.isfinite(known).all()):
        raise ValueError("known must be finite")
    if not isinstance(known_mask, torch.Tensor) or known_mask.dtype != torch.bool or \
            tuple(known_mask.shape) not in (tuple(shape), tuple(shape[1:])):
        raise ValueError(f"known_mask must be a bool tensor (True where the data is known) of shape {tuple(shape)} or "
                         f"{tuple(shape[1:])} (one mask for every sample), got "
                         f"{known_mask.dtype if isinstance(known_mask, torch.Tensor) else type(known_mask).__name__} "
                         f"{tuple(known_mask.shape) if isinstance(known_mask, torch.Tensor) else ''}")
    return Inpainting(known, known_mask)


def _check_init(init, strength, shape, steps: int) -> int:
    """The steps an img2img run skips (diffusers' rule: it runs int(steps * strength) of the steps' schedule)."""
    if init is None:
        if strength is not None:
            raise ValueError("strength is for img2img: give init (the data to start from)")
        return 0
    if not isinstance(init, torch.Tensor) or tuple(init.shape) != tuple(shape) or not init.is_floating_point():
        raise ValueError(f"init must be a floating-point tensor of the samples' shape {tuple(shape)}, got "
                         f"{tuple(init.shape) if isinstance(init, torch.Tensor) else type(init).__name__}")
    if not bool(torch.isfinite(init).all()):
        raise ValueError("init must be finite")
    if strength is None or isinstance(strength, bool) or not isinstance(strength, (int, float)) or \
            not 0 < strength <= 1:
        raise ValueError(f"strength must be a number in (0, 1], got {strength!r}")
    run = min(int(steps * strength), steps)
    if run < 1:
        raise ValueError(f"strength={strength} runs int(steps * strength) = 0 of steps={steps}: raise one of them")
    return steps - run


def _check_call(model, shape, sampler: str, prediction: str, steps, callback) -> tuple[int, ...]:
    """The arguments every sampler takes; the shape as a tuple of ints."""
    names = SAMPLERS + FLOW_SAMPLERS + CONSISTENCY_SAMPLERS
    if sampler not in names:
        raise ValueError(f"sampler must be one of {', '.join(dict.fromkeys(names))}, got {sampler!r}")
    if prediction != "raw":  # (raw: a consistency model's network, checked with its process)
        ops.prediction_code(prediction)
    if not callable(model):
        raise TypeError(f"model must be callable (x, t) -> prediction, got {type(model).__name__}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    if not isinstance(shape, (tuple, list, torch.Size)) or not all(
            isinstance(s, numbers.Integral) and not isinstance(s, bool) and s >= 1 for s in shape):
        raise ValueError(f"shape must be a tuple of ints >= 1, (B, ...), got {shape!r}")
    if not shape:
        raise ValueError("shape must be (B, ...), got ()")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable (stage, x), got {type(callback).__name__}")
    return tuple(int(s) for s in shape)


def _check_sampler_options(sampler: str, process, eta, snr, corrector) -> tuple[float, float, str]:
    """(eta, snr, corrector): each only where its sampler takes it."""
    flow_sde = sampler == "euler_maruyama" and isinstance(process, AffinePath)
    if eta is not None and sampler not in ("ddim", "consistency") and not flow_sde:
        raise ValueError(f"eta is DDIM's noise scale, euler_maruyama's on a flow path and the consistency sampler's "
                         f"gamma: it does not apply to sampler {sampler!r} on {type(process).__name__}")
    eta = (1.0 if flow_sde or sampler == "consistency" else 0.0) if eta is None else eta
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not math.isfinite(eta) or eta < 0:
        raise ValueError(f"eta must be a finite number >= 0, got {eta!r}")
    if sampler == "consistency" and eta > 1:
        raise ValueError(f"eta (the consistency sampler's gamma) must lie in [0, 1], got {eta!r}")
    if snr is not None and sampler != "pc":
        raise ValueError(f"snr is the pc corrector's signal-to-noise ratio: it does not apply to sampler {sampler!r}")
    if corrector is not None and sampler != "pc":
        raise ValueError(f"corrector is the pc sampler's: it does not apply to sampler {sampler!r}")
    if corrector not in (None, "noise_level", "per_sample"):
        raise ValueError(f"corrector must be 'noise_level' or 'per_sample', got {corrector!r}")
    return eta, positive_float(0.16 if snr is None else snr, "snr"), corrector or "noise_level"


def _check_process(sampler: str, sde, schedule, spacing, prediction: str, steps: int):
    """(the process the sampler runs on, its spacing)."""
    if isinstance(sde, ConsistencyProcess) or sampler in CONSISTENCY_SAMPLERS:
        return _check_consistency(sampler, sde, schedule, spacing, prediction, steps)
    if prediction == "raw":
        raise ValueError("prediction 'raw' is a consistency model's network F (sde=fastgen.diffusion."
                         "EDMConsistency() or TrigFlowConsistency(), sampler='consistency')")
    if isinstance(sde, AffinePath):
        if schedule is not None:
            raise ValueError("give sde (here a flow path) or schedule, not both")
        if sampler not in FLOW_SAMPLERS:
            raise ValueError(f"sampler {sampler!r} does not run on a flow path: {', '.join(FLOW_SAMPLERS)} do")
        if prediction == "v":
            raise ValueError("prediction 'v' is the variance-preserving v of diffusion models; a flow path's model "
                             "predicts 'velocity' (or eps, x0, score)")
        return sde, _check_flow_spacing(spacing, steps)
    if sampler == "ode_midpoint":
        raise ValueError("sampler 'ode_midpoint' runs on a flow path (sde=fastgen.flows.LinearPath(), ...)")
    if prediction == "velocity":
        raise ValueError(f"prediction 'velocity' is a flow path's (sde=fastgen.flows.LinearPath(), ...), not "
                         f"{type(sde or schedule).__name__}'s")
    if isinstance(spacing, torch.Tensor):
        raise ValueError("a time grid as spacing is for the flow paths; on SDEs and schedules spacing is a name")
    if schedule is not None and not isinstance(schedule, DDPMSchedule):
        raise ValueError(f"schedule must be a DDPMSchedule (step spacing: spacing=...), got {schedule!r}")
    if schedule is not None and sde is not None:
        raise ValueError("give sde or schedule (a DDPMSchedule), not both")
    if sampler in DISCRETE_SAMPLERS:
        if sde is not None:
            raise ValueError(f"sampler {sampler!r} runs on a DDPMSchedule (schedule=...), not an SDE")
        process = schedule or DDPMSchedule()
    else:
        process = sde or schedule or VPSDE()
        if sampler not in SIGMA_SAMPLERS and not isinstance(process, SDE):
            raise ValueError(f"sampler {sampler!r} needs an SDE (sde=VPSDE(), SubVPSDE() or VESDE())")
    allowed = spacings(sampler, process)
    if spacing is not None and spacing not in allowed:
        raise ValueError(f"spacing for {sampler} on {type(process).__name__} must be one of {', '.join(allowed)}, "
                         f"got {spacing!r}")
    if prediction == "v" and isinstance(process, VESDE):
        raise ValueError("prediction 'v' needs a variance-preserving process, not VESDE")
    return process, spacing or allowed[0]


def _check_consistency(sampler: str, sde, schedule, spacing, prediction: str, steps: int):
    """The consistency sampler's process and levels: spacing None (the process's levels) or a tensor of `steps`
    strictly decreasing model times inside the process's range."""
    if not isinstance(sde, ConsistencyProcess) or sampler not in CONSISTENCY_SAMPLERS or schedule is not None:
        raise ValueError("sampler 'consistency' runs on a consistency process (sde=fastgen.diffusion.EDMConsistency() "
                         f"or TrigFlowConsistency()), and only it does; got sampler {sampler!r} on "
                         f"{type(sde or schedule).__name__}")
    if prediction not in ("raw", "x0"):
        raise ValueError(f"prediction on a consistency process must be 'raw' (the model is the network F of f = "
                         f"c_skip x + c_out F) or 'x0' (the model is f itself), got {prediction!r}")
    if spacing is None:
        return sde, None
    if not isinstance(spacing, torch.Tensor):
        raise ValueError(f"spacing for the consistency sampler must be a tensor of the model times, from t_max down "
                         f"(e.g. EDMConsistency().openai_levels([0, 22, 39])), got {spacing!r}")
    levels = sde.check_times(spacing.detach().to("cpu", torch.float64).reshape(-1), "spacing")
    if levels.numel() != steps or not bool((levels[1:] < levels[:-1]).all()):
        raise ValueError(f"spacing must hold steps = {steps} strictly decreasing times (noise to data), got "
                         f"{levels.tolist()}")
    return sde, levels


def _check_flow_spacing(spacing, steps: int):
    """"uniform" (the default), or a time grid: steps + 1 decreasing times from 1 to 0 (e.g.
    fastgen.flows.time_grid(steps, shift=3.0), SD3's shift; ``mu=`` for Flux's)."""
    if spacing is None or (isinstance(spacing, str) and spacing == "uniform"):
        return "uniform"
    if not isinstance(spacing, torch.Tensor):
        raise ValueError(f"spacing on a flow path must be 'uniform' or a tensor of steps + 1 times from 1 to 0 "
                         f"(fastgen.flows.time_grid(steps, shift=...)), got {spacing!r}")
    grid = spacing.detach().to("cpu", torch.float64).reshape(-1)
    if grid.numel() != steps + 1 or float(grid[0]) != 1.0 or float(grid[-1]) != 0.0 or \
            not bool((grid[1:] < grid[:-1]).all()):
        raise ValueError(f"spacing (a time grid) must hold steps + 1 = {steps + 1} decreasing times from 1 to 0, got "
                         f"{grid.tolist()}")
    return grid


def _check_noise(seed, generator, per_sample_seeds, batch: int) -> Noise:
    if per_sample_seeds is not None and (not isinstance(per_sample_seeds, torch.Tensor) or
                                         per_sample_seeds.shape != (batch,)):
        raise ValueError(f"per_sample_seeds must be an int tensor of shape ({batch},)")
    if per_sample_seeds is not None and per_sample_seeds.dtype not in (torch.int64, torch.int32, torch.int16):
        raise TypeError(f"per_sample_seeds must be an int64, int32 or int16 tensor, got {per_sample_seeds.dtype}")
    if per_sample_seeds is not None:
        if seed is not None or generator is not None:
            raise ValueError("give seed (or generator) or per_sample_seeds, not both: with per-sample seeds every "
                             "sample's noise comes from its own seed")
        _check_nonnegative(per_sample_seeds)
    return Noise(resolve_seed(seed, generator), per_sample_seeds)


def _check_nonnegative(seeds: torch.Tensor) -> None:
    """Seeds are in [0, 2**63 - 1], as seed= takes them (one host read, when the sampler is built or drawn from)."""
    if bool((seeds < 0).any()):
        raise ValueError(f"per_sample_seeds must be >= 0 (0 to 2**63 - 1, as seed=), got {int(seeds.min())}")


def make_sampler(
    model: Callable,
    shape,
    *,
    sde: SDE | None = None,
    schedule: DDPMSchedule | None = None,
    sampler: str = "euler_maruyama",
    spacing: str | None = None,
    steps: int,
    prediction: str | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    per_sample_seeds: torch.Tensor | None = None,
    graph="auto",
    denoise: bool = True,
    callback: Callable | None = None,
    progress: bool = False,
    dtype: torch.dtype | None = None,
    device=None,
    eta: float | None = None,
    snr: float | None = None,
    corrector: str | None = None,
    clip: float | None = None,
    check_finite: bool = False,
    model_kwargs: dict | None = None,
    guidance_scale=None,
    uncond_kwargs: dict | None = None,
    guidance_interval=None,
    init: torch.Tensor | None = None,
    strength: float | None = None,
    guidance_rescale: float | None = None,
    known: torch.Tensor | None = None,
    known_mask: torch.Tensor | None = None,
) -> Sampler:
    """The planned (and, on CUDA, captured) sampling loop of :func:`sample`, to draw from many times:
    ``make_sampler(...).draw(per_sample_seeds)`` equals ``sample(..., per_sample_seeds=...)``, with one
    plan and one CUDA-graph capture for every draw. Arguments as :func:`sample`'s; every one is checked here,
    once, and the options that travel together are gathered (:class:`Settings`, :class:`Options`,
    :class:`Guidance`, :class:`Inpainting`, :class:`Noise`)."""
    prediction = prediction or ("velocity" if isinstance(sde, AffinePath) else
                                "raw" if isinstance(sde, ConsistencyProcess) else "score")
    shape = _check_call(model, shape, sampler, prediction, steps, callback)
    process, spacing = _check_process(sampler, sde, schedule, spacing, prediction, steps)
    eta, snr, corrector = _check_sampler_options(sampler, process, eta, snr, corrector)
    dtype = dtype or torch.float32
    if dtype not in STATE_DTYPES:
        raise TypeError(f"dtype must be float32, float16 or bfloat16, got {dtype}")
    options = Options(
        device=torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")),
        dtype=dtype, noise=_check_noise(seed, generator, per_sample_seeds, shape[0]),
        clip=None if clip is None else positive_float(clip, "clip"), snr=snr, callback=callback, progress=progress,
        check_finite=check_finite, model_kwargs=model_kwargs,
        guidance=_check_guidance(guidance_scale, uncond_kwargs, guidance_interval, model_kwargs, shape[0],
                                 guidance_rescale),
        init=init, inpainting=_check_known(known, known_mask, shape))
    skip = _check_init(init, strength, shape, steps)
    settings = Settings(sampler, steps, prediction, spacing, eta=eta, denoise=denoise, corrector=corrector, snr=snr)
    return Sampler(model, shape, _plan(process, settings, skip), options).prepare(graph)


def sample(model: Callable, shape, **options) -> torch.Tensor:
    """Draw samples of `shape` by integrating a diffusion model's reverse process.

    Args:
        model: callable (x, t, **model_kwargs) -> prediction, with t a (B,) tensor: continuous time for an SDE,
            integer timesteps for a DDPMSchedule.
        shape: (B, ...) of the samples.
        sde: VPSDE (default), SubVPSDE or VESDE for the SDE/ODE and sigma samplers; or a flow-matching path
            (fastgen.flows.LinearPath, PolynomialPath, CosinePath, VPPath: data at t = 0, noise at t = 1) for
            ode_euler, ode_heun, ode_midpoint (the ODE dx/dt = u(x, t) from t = 1 to 0) and euler_maruyama (its
            reverse SDE with g(t)^2 = 2 eta sigma(t), which keeps the path's marginals; eta default 1).
        schedule: a DDPMSchedule for "ddpm"/"ddim" (default: DDPMSchedule()), or for the sigma samplers.
        sampler: euler_maruyama (reverse SDE), pc (reverse-diffusion predictor + Langevin corrector),
            ode_euler / ode_heun (probability-flow ODE), ddpm, ddim (eta), euler_ancestral, dpmpp_2m; on a flow
            path also ode_midpoint.
        steps: number of steps (Heun and PC make two model calls per step).
        spacing: where the steps go (see :func:`spacings`); default: "karras" for euler_ancestral and dpmpp_2m
            on an SDE, "uniform" on a flow path, else "quadratic" in time. On a flow path also a tensor of
            steps + 1 times from 1 to 0, e.g. ``fastgen.flows.time_grid(steps, shift=3.0)`` (SD3's shift; mu=
            for Flux's). An option that does not apply to the sampler is an error.
        prediction: what the model returns: score, eps, x0 or v (v needs a variance-preserving process), or on a
            flow path "velocity" (its default; u = alpha'(t) x0 + sigma'(t) eps, converted inside the fused step);
            default "score" elsewhere.
        seed, generator: the noise stream's seed, or a generator to draw it from.
        per_sample_seeds: (B,) int64; sample b's noise depends on its own seed only, so a sample
            is the same at any batch size or position (for a model that treats samples independently).
        graph: "auto" captures model and steps in one CUDA graph on CUDA (falls back, with one warning
            naming the reason, when the model cannot be captured); False never; True requires it.
        denoise: return the last step's mean (no noise in the last SDE step).
        callback: callback(stage, x) after every stage (runs eagerly).
        progress: a progress bar on stderr.
        dtype: state dtype (float32 default; float16/bfloat16 keep float32 arithmetic).
        device: where to sample (default: CUDA when available).
        eta: DDIM's noise scale (default 0); on a flow path euler_maruyama's (default 1).
        snr: the pc corrector's signal-to-noise ratio (default 0.16).
        corrector: the pc corrector's step h: "noise_level" (default), h = 2 a (snr sigma_t)^2, the same for every
            sample; "per_sample", score_sde's h = 2 a (snr |xi_b| / |s_b|)^2 from each sample's norms, which
            biases the stationary law in low dimension (the norms fluctuate with position).
        clip: clamp x0 to [-clip, clip].
        check_finite: find on the device the first stage whose state went non-finite, and raise
            FloatingPointError naming it (one host read after the loop).
        model_kwargs: keyword arguments for every model call (class labels, embeddings, ...): tensors whose
            first dimension is the batch size go with their samples (copied once into buffers the loop owns, so
            a CUDA graph reads them; ``make_sampler(...).draw(model_kwargs=...)`` refills them), tensors with a
            first dimension of 1, 0-d tensors and other values are passed as given.
        guidance_scale: classifier-free guidance w (a number, or a (B,) tensor, one per sample; diffusers'
            convention: 1 is the conditional model alone, 0 the unconditional one): the model runs once per stage
            on the doubled batch [x; x] with model_kwargs then uncond_kwargs, and the step reads u + w (c - u),
            combined inside the fused step (the pc corrector's stages combine it before their op).
        uncond_kwargs: the unconditional values of model_kwargs' keys (a null label, an empty embedding).
        guidance_interval: (low, high): guide only the stages whose model time t is in [low, high]; the others
            run the conditional model alone, on the batch itself.
        guidance_rescale: phi in [0, 1] (Lin et al. 2024; diffusers' ``guidance_rescale``): the guided output g is
            read as g (phi std(c) / std(g) + 1 - phi), standard deviations over each sample, in the same fused pass.
        init, strength: img2img / SDEdit (Meng et al. 2022): start from the data ``init`` (the samples' shape)
            noised to the time where the last int(steps * strength) steps of the schedule begin,
            x = alpha(t) init + sigma(t) xi with xi from the stream (as the prior draw), and run those steps;
            strength 1 runs the whole schedule from the noised data. Every sampler (each is a schedule of
            steps; for dpmpp_2m the first kept step is its first-order one).
        known, known_mask: inpainting by replacement (score_sde's imputation; RePaint without resampling): where
            ``known_mask`` (bool, the samples' shape or one sample's) is True, the state after every step is the
            data ``known`` re-noised to the level the step lands on, keep(t) known + std(t) xi, inside the fused
            step; the prior draw starts it at its level, and the returned samples equal ``known`` there exactly.
            xi is fresh at every step for the stochastic samplers (the stream's, as RePaint) and the prior draw's
            at every step for the deterministic ones (the data's noised path, as diffusers' inpainting pipelines).
            Every sampler (Heun and pc replace after a whole step). Replacement is an approximation: the model
            sees the known region noised, not the data. The unknown region follows the exact conditional law when
            it is independent of the known one; when the known coordinates decide before the unknown ones (in
            noise level), the stochastic samplers come close, while the deterministic ones keep what the noised
            data misled at high noise (tests/test_conditional.py measures both).
    """
    return make_sampler(model, shape, **options).draw()


sample.__signature__ = inspect.signature(make_sampler).replace(return_annotation=torch.Tensor)
