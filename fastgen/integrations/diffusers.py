"""Drop-in replacements for diffusers' DDPMScheduler, DDIMScheduler,
EulerAncestralDiscreteScheduler, EulerDiscreteScheduler,
FlowMatchEulerDiscreteScheduler, DPMSolverMultistepScheduler,
UniPCMultistepScheduler, HeunDiscreteScheduler, LCMScheduler and TCDScheduler
whose ``step`` is one fused pass (plus one small kernel per extra multistep
history entry or second output; each class says how many).

They subclass diffusers' classes, so configuration, ``from_config``,
``set_timesteps``, ``timesteps``, ``init_noise_sigma``, ``order``,
``scale_model_input`` and ``add_noise`` are diffusers' own. ``set_timesteps``
also builds a device table of step coefficients indexed by timestep, and
``step`` reads its row on the device: with a tensor timestep it does no host
sync. Noise: with ``generator=`` (or DDIM's ``variance_noise=``) step draws it
exactly as diffusers does, so both give the same samples; without, it comes
from fastgen's counter-based stream under a seed drawn from torch's global RNG
at each step, so ``torch.manual_seed`` before a run reproduces it; a
deterministic step (DDIM at eta = 0, Euler, FlowMatchEuler, DPM-Solver's ODE solvers) draws nothing.
Configurations that need per-sample statistics (dynamic thresholding) or learned
variances run diffusers' own step.

    from fastgen.integrations.diffusers import DDPMScheduler
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    pipe.scheduler = scheduler
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers

import torch

try:
    import diffusers
    from diffusers.utils.torch_utils import randn_tensor
except ImportError as err:  # pragma: no cover - exercised only without diffusers
    raise ImportError("fastgen.diffusers needs diffusers: pip install diffusers") from err

from ..core.constants import COEF_WIDTH, Coef
from ..core.rng import resolve_seed
from ..diffusion.processes import LinearPath
from ..ops import diffusion as ops

_PREDICTIONS = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}


class _FusedStep:
    """Coefficient tables and the fused call shared by the drop-ins. No __init__ of its own: diffusers' config
    machinery reads the constructor's signature (from_config, save_config, compatibles, deprecated kwargs), so
    each drop-in keeps its diffusers class's constructor unchanged."""

    def __init_subclass__(cls, **kwargs):
        """Each drop-in's set_timesteps has its diffusers class's signature (pipelines read it to see whether
        custom ``timesteps`` or ``sigmas`` are accepted): the class's own, wrapped to check num_inference_steps
        and to drop the tables built for the previous schedule."""
        super().__init_subclass__(**kwargs)
        owner = next((b for b in cls.__mro__[1:] if b.__module__.startswith("diffusers") and "set_timesteps" in
                      vars(b)), None)
        if owner is None:  # a shared base of drop-ins (no diffusers class yet)
            return
        base = owner.set_timesteps
        signature = inspect.signature(base)

        @functools.wraps(base)
        def set_timesteps(self, *args, **kw):
            steps = signature.bind(self, *args, **kw).arguments.get("num_inference_steps")
            if steps is not None and (isinstance(steps, bool) or not isinstance(steps, numbers.Integral)
                                      or steps < 1):
                raise ValueError(f"num_inference_steps must be an int >= 1, got {steps!r}")
            base(self, *args, **kw)
            self.__dict__.pop("_fused_tables", None)
            self.__dict__.pop("_fused_valid", None)

        cls.set_timesteps = set_timesteps

    def _begin(self, timestep) -> None:
        """diffusers' start of a multistep step: set_timesteps must have run (its ValueError); the step index from
        the first timestep."""
        if self.num_inference_steps is None:
            raise ValueError("Number of inference steps is 'None', you need to run 'set_timesteps' after creating "
                             "the scheduler")
        if self.step_index is None:
            self._init_step_index(timestep)

    def _table(self, key, build, device) -> torch.Tensor:
        """The (rows, COEF_WIDTH) float32 table for `key` on `device`, built once per set_timesteps."""
        tables = self.__dict__.setdefault("_fused_tables", {})
        if (key, device) not in tables:
            tables[(key, device)] = build().to(device=device, dtype=torch.float32).contiguous()
        return tables[(key, device)]

    def _check_in_schedule(self, timestep: int) -> None:
        """A host timestep must be one of the schedule's (a device one that is not gives a NaN sample)."""
        valid = self.__dict__.get("_fused_valid")
        if valid is None:
            valid = self.__dict__["_fused_valid"] = frozenset(self._schedule().tolist())
        if timestep not in valid:
            raise IndexError(f"timestep {timestep} is not one of the scheduler's timesteps (set_timesteps sets them)")

    def _sigmas_at(self, timestep, sample: torch.Tensor) -> torch.Tensor:
        """Each sample's sigma for `timestep` (one, or one per sample), shaped to broadcast over sample, looked up on
        the device at once: diffusers' rule (the second match of a repeated timestep when the schedule has no begin
        index, else the step or begin index) without its host read per sample. A timestep off the schedule:
        IndexError when it is on the host; on a GPU its samples come out NaN."""
        timestep = torch.as_tensor(timestep, device=sample.device).reshape(-1)
        if timestep.shape[0] not in (1, sample.shape[0]):
            raise ValueError(f"timestep must hold one timestep or one per sample ({sample.shape[0]}), got "
                             f"{tuple(timestep.shape)}")
        sigmas = self.sigmas.to(sample.device, torch.float32)
        if self.begin_index is None:
            schedule = self.timesteps.to(sample.device)
            matches = schedule[None, :] == timestep[:, None].to(schedule.dtype)
            count = matches.sum(1, keepdim=True)
            pick = matches & (matches.cumsum(1) == torch.where(count > 1, 2, 1))
            if timestep.device.type == "cpu" and not bool(count.all()):
                raise IndexError(f"timestep {timestep[~count.squeeze(1).bool()][0].item()} is not one of the "
                                 "scheduler's timesteps")
            sigma = torch.where(count.squeeze(1) > 0, sigmas[pick.int().argmax(1)], float("nan"))
        else:
            index = self.step_index if self.step_index is not None else self.begin_index
            sigma = sigmas[index].expand(timestep.shape[0])
        return sigma.reshape(-1, *[1] * (sample.dim() - 1))

    @staticmethod
    def _fused_dtype(sample: torch.Tensor) -> bool:
        """The fused step takes float32, float16 and bfloat16 states; others (float64) run diffusers' own step."""
        return sample.dtype in (torch.float32, torch.float16, torch.bfloat16)

    @staticmethod
    def _noise_args(sample: torch.Tensor, noise: torch.Tensor | None) -> dict:
        """The given noise, or the counter-based stream under a seed drawn from torch's global RNG at each step
        (a host draw, no sync): torch.manual_seed(s) before a run reproduces it, as it does diffusers' noise."""
        if noise is not None:
            return dict(noise=noise.to(sample.device, torch.float32))
        return dict(seed=resolve_seed(), offset=0)

    @staticmethod
    def _row(table: torch.Tensor, timestep, device) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(coef, index): a row view for an int timestep, or the table and a device index for a tensor. A timestep
        on the host is checked here; one on the GPU is read by the kernel, which makes the sample NaN if it is out
        of range (checking it here would cost a host sync)."""
        rows = table.shape[0]
        if isinstance(timestep, torch.Tensor):
            if timestep.numel() == 0 or timestep.is_floating_point() and not torch.isfinite(timestep).all():
                raise ValueError(f"timestep must be a finite timestep, got {timestep}")
            if timestep.device.type == "cpu" and not 0 <= int(timestep.reshape(-1)[0]) < rows:
                raise IndexError(f"timestep {int(timestep.reshape(-1)[0])} is out of range: the table has timesteps "
                                 f"0 to {rows - 1}")
            return table, timestep.reshape(-1)[:1].to(device=device, dtype=torch.int64)
        t = int(timestep)
        if not 0 <= t < rows:
            raise IndexError(f"timestep {t} is out of range: the table has timesteps 0 to {rows - 1}")
        return table[t:t + 1], None

    def _clipped_step(self, model_output, sample, table, timestep, *, clip_eps, noise, output, noisy=True):
        """DDPM's and DDIM's fused step with the config's prediction type and clipping: (prev, x0), or ``output``
        (the scheduler's output class) holding them."""
        prediction = _PREDICTIONS[self.config.prediction_type]
        prev, x0 = self._run(model_output, sample, table, timestep, prediction=prediction, clip=_clip(self.config),
                             clip_eps=clip_eps, noise=noise, out_dtype=sample.dtype, noisy=noisy)
        return (prev, x0) if output is None else output(prev_sample=prev, pred_original_sample=x0)

    def _sigma_step(self, model_output, sample, table, *, noise, noisy: bool, output):
        """The sigma schedulers' step (Euler, Euler ancestral): row ``step_index``, in float32 as diffusers
        computes it, prev cast to the model output's dtype; the index advanced. (prev, x0), or ``output`` holding
        them."""
        prev, x0 = self._run(model_output.float(), sample.float(), table, self._step_index,
                             prediction=_PREDICTIONS[self.config.prediction_type], clip=None, clip_eps=True,
                             noise=noise, out_dtype=torch.float32, noisy=noisy)
        self._step_index += 1
        prev = prev.to(model_output.dtype)
        return (prev, x0) if output is None else output(prev_sample=prev, pred_original_sample=x0)

    def _buffer(self, sample: torch.Tensor, avoid) -> torch.Tensor:
        """One of the scheduler's float32 history buffers shaped like sample that is not in ``avoid``."""
        pool = self.__dict__.setdefault("_fused_history", {}).setdefault(
            (tuple(sample.shape), sample.device), [])
        for b in pool:
            if not any(b is a for a in avoid):
                return b
        pool.append(torch.empty(sample.shape, device=sample.device, dtype=torch.float32))
        return pool[-1]

    def _owned(self, t) -> bool:
        """Whether t is one of those buffers (multistep history the scheduler may overwrite)."""
        return t is not None and any(t is b for pool in self.__dict__.get("_fused_history", {}).values() for b in pool)

    def _run(self, model_output, sample, table, timestep, *, prediction, clip, clip_eps, noise, out_dtype,
             noisy: bool = True):
        """(prev, x0) of the fused step; a step that is not ``noisy`` draws no seed (diffusers' deterministic steps
        leave torch's global RNG alone, and so does this)."""
        coef, index = self._row(table, timestep, sample.device)
        prev = sample.to(out_dtype, copy=True).contiguous()
        x0 = torch.empty(sample.shape, device=sample.device, dtype=torch.float32)
        ops.diffusion_step_(prev, model_output.to(out_dtype), coef, index=index, prediction=prediction, clip=clip,
                            clip_eps=clip_eps, aux=x0, aux_store="x0",
                            **(self._noise_args(prev, noise) if noisy else {}))
        return prev, x0.to(out_dtype)


def _rows(alpha, sigma, c_x=None, c_x0=None, c_eps=None, noise=None) -> torch.Tensor:
    """A (rows, COEF_WIDTH) float32 coefficient table (the layout of fastgen.constants.Coef) from per-row columns;
    the model output is read at the state itself (k = 1), absent columns are 0."""
    zero = torch.zeros_like(alpha)
    columns = {Coef.ALPHA: alpha, Coef.SIGMA: sigma, Coef.K: torch.ones_like(alpha), Coef.C_X: c_x, Coef.C_X0: c_x0,
               Coef.C_EPS: c_eps, Coef.C_NOISE: noise}
    return torch.stack([columns[c].float() if columns.get(c) is not None else zero for c in Coef], dim=1)


def _clip(config) -> float | None:
    return float(config.clip_sample_range) if getattr(config, "clip_sample", False) else None


class DDPMScheduler(_FusedStep, diffusers.DDPMScheduler):
    """diffusers.DDPMScheduler with a fused ``step`` (variance types fixed_small and fixed_large)."""

    def _build(self) -> torch.Tensor:
        """Row t: the step from t to its previous timestep (as previous_timestep), each coefficient computed in
        float32 by diffusers' own expressions, so the fused step rounds as diffusers' step does."""
        t = torch.arange(self.config.num_train_timesteps)
        prev = torch.full_like(t, -2)  # -2: not in the schedule, a NaN row (diffusers raises for such a timestep)
        schedule = self._schedule()
        if self.custom_timesteps or self.num_inference_steps:
            prev[schedule] = torch.cat([schedule[1:], torch.tensor([-1])])
        else:
            prev = t - 1
        abar = self.alphas_cumprod.float()
        a_t = abar[t]
        a_s = torch.where(prev >= 0, abar[prev.clamp(min=0)], self.one.float())
        beta_prod_t, beta_prod_t_prev = 1 - a_t, 1 - a_s
        current_alpha_t = a_t / a_s
        current_beta_t = 1 - current_alpha_t
        variance = ((1 - a_s) / (1 - a_t) * current_beta_t).clamp(min=1e-20)
        std = (variance if self.variance_type == "fixed_small" else current_beta_t) ** 0.5
        table = _rows(alpha=a_t ** 0.5, sigma=beta_prod_t ** 0.5,
                      c_x=current_alpha_t ** 0.5 * beta_prod_t_prev / beta_prod_t,
                      c_x0=(a_s ** 0.5 * current_beta_t) / beta_prod_t, noise=torch.where(t > 0, std, 0.0))
        return table.masked_fill_((prev == -2)[:, None], float("nan"))

    def _schedule(self) -> torch.Tensor:
        """The timesteps step accepts (int64, on the host)."""
        if self.custom_timesteps or self.num_inference_steps:
            return self.timesteps.cpu().long()
        return torch.arange(self.config.num_train_timesteps)

    def _fusable(self, model_output, sample) -> bool:
        return (self.variance_type in ("fixed_small", "fixed_large") and not self.config.thresholding
                and model_output.shape == sample.shape and self.config.prediction_type in _PREDICTIONS
                and self._fused_dtype(sample))

    def step(self, model_output, timestep, sample, generator=None, return_dict: bool = True):
        """x_{t-1} from x_t: the posterior mean from the predicted x0 (clipped as configured) plus
        sqrt(variance) noise for t > 0, in one pass. Returns (prev_sample, pred_original_sample)."""
        if not self._fusable(model_output, sample):
            return super().step(model_output, timestep, sample, generator=generator, return_dict=return_dict)
        noise = None
        if generator is not None and int(timestep) > 0:  # diffusers' draws, for identical samples
            noise = randn_tensor(model_output.shape, generator=generator, device=model_output.device,
                                 dtype=model_output.dtype)
        if not isinstance(timestep, torch.Tensor) or timestep.device.type == "cpu":
            self._check_in_schedule(int(timestep))
        table = self._table("ddpm", self._build, sample.device)
        output = diffusers.schedulers.scheduling_ddpm.DDPMSchedulerOutput if return_dict else None
        return self._clipped_step(model_output, sample, table, timestep, clip_eps=True, noise=noise, output=output)


class DDIMScheduler(_FusedStep, diffusers.DDIMScheduler):
    """diffusers.DDIMScheduler with a fused ``step``."""

    def _build(self, eta: float) -> torch.Tensor:
        """Row t: the step from t to t - n_train // n_inference, in float32 by diffusers' own expressions."""
        t = torch.arange(self.config.num_train_timesteps)
        prev = t - self.config.num_train_timesteps // self.num_inference_steps
        abar = self.alphas_cumprod.float()
        a_t = abar[t]
        a_s = torch.where(prev >= 0, abar[prev.clamp(min=0)], self.final_alpha_cumprod.float())
        beta_prod_t, beta_prod_t_prev = 1 - a_t, 1 - a_s
        variance = (beta_prod_t_prev / beta_prod_t) * (1 - a_t / a_s)
        std = eta * variance ** 0.5
        return _rows(alpha=a_t ** 0.5, sigma=beta_prod_t ** 0.5, c_x0=a_s ** 0.5, c_eps=(1 - a_s - std**2) ** 0.5,
                     noise=std)

    def step(self, model_output, timestep, sample, eta: float = 0.0, use_clipped_model_output: bool = False,
             generator=None, variance_noise=None, return_dict: bool = True):
        """x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - std^2) eps + std noise, std = eta sigma_t, in one pass."""
        if self.num_inference_steps is None:
            raise ValueError("Number of inference steps is 'None', you need to run 'set_timesteps' after creating "
                             "the scheduler")
        if self.config.thresholding or self.config.prediction_type not in _PREDICTIONS or not self._fused_dtype(
                sample) or model_output.shape != sample.shape:
            return super().step(model_output, timestep, sample, eta, use_clipped_model_output, generator,
                                variance_noise, return_dict)
        if variance_noise is not None and generator is not None:
            raise ValueError("Cannot pass both generator and variance_noise. Please make sure that either "
                             "`generator` or `variance_noise` stays `None`.")
        noise = variance_noise
        if eta > 0 and noise is None and generator is not None:
            noise = randn_tensor(model_output.shape, generator=generator, device=model_output.device,
                                 dtype=model_output.dtype)
        table = self._table(("ddim", float(eta)), lambda: self._build(float(eta)), sample.device)
        output = diffusers.schedulers.scheduling_ddim.DDIMSchedulerOutput if return_dict else None
        return self._clipped_step(model_output, sample, table, timestep, clip_eps=use_clipped_model_output,
                                  noise=noise, output=output, noisy=eta > 0)


class EulerAncestralDiscreteScheduler(_FusedStep, diffusers.EulerAncestralDiscreteScheduler):
    """diffusers.EulerAncestralDiscreteScheduler with a fused ``step`` (epsilon and v prediction)."""

    def _build(self) -> torch.Tensor:
        """Row i: the step from sigmas[i] to sigmas[i+1], the model output read at x / sqrt(sigma^2 + 1)."""
        sigmas = self.sigmas.double().cpu()
        s, s_next = sigmas[:-1], sigmas[1:]
        up = (s_next**2 * (s**2 - s_next**2) / s**2).sqrt()
        down = (s_next**2 - up**2).sqrt()
        scale = 1 / (s**2 + 1).sqrt()
        return ops.coef_rows(scale, s * scale, scale, 1.0, 0.0, down - s, 0.0, up)

    def step(self, model_output, timestep, sample, generator=None, return_dict: bool = True):
        """x <- x + (sigma_down - sigma) (x - x0) / sigma + sigma_up noise, in float32, one pass."""
        if isinstance(timestep, (int, torch.IntTensor, torch.LongTensor)):
            raise ValueError("Passing integer indices (e.g. from `enumerate(timesteps)`) as timesteps to "
                             "`EulerDiscreteScheduler.step()` is not supported. Make sure to pass one of the "
                             "`scheduler.timesteps` as a timestep.")
        if self.config.prediction_type not in ("epsilon", "v_prediction") or not self._fused_dtype(sample) or \
                model_output.shape != sample.shape:
            return super().step(model_output, timestep, sample, generator=generator, return_dict=return_dict)
        if self.step_index is None:
            self._init_step_index(timestep)
        noise = None
        if generator is not None:
            noise = randn_tensor(model_output.shape, dtype=model_output.dtype, device=model_output.device,
                                 generator=generator)
        table = self._table("euler_a", self._build, sample.device)
        output = diffusers.schedulers.scheduling_euler_ancestral_discrete.EulerAncestralDiscreteSchedulerOutput
        return self._sigma_step(model_output, sample, table, noise=noise, noisy=True,
                                output=output if return_dict else None)


class EulerDiscreteScheduler(_FusedStep, diffusers.EulerDiscreteScheduler):
    """diffusers.EulerDiscreteScheduler with a fused ``step`` (epsilon, sample and v prediction, any of its sigma
    schedules): x <- x + (sigma_next - sigma) eps in one pass, eps and x0 read from the model output at
    x / sqrt(sigma^2 + 1). A step with churn (s_churn > 0 inside [s_tmin, s_tmax]) runs diffusers' own step."""

    def _build(self) -> torch.Tensor:
        """Row i: the step from sigmas[i] to sigmas[i+1]."""
        sigmas = self.sigmas.double().cpu()
        s, s_next = sigmas[:-1], sigmas[1:]
        scale = 1 / (s**2 + 1).sqrt()
        return ops.coef_rows(scale, s * scale, scale, 1.0, 0.0, s_next - s, 0.0, 0.0)

    def step(self, model_output, timestep, sample, s_churn: float = 0.0, s_tmin: float = 0.0,
             s_tmax: float = float("inf"), s_noise: float = 1.0, generator=None, return_dict: bool = True):
        """x <- x + (sigma_next - sigma) eps, in float32, one pass; returns (prev_sample, pred_original_sample)."""
        if isinstance(timestep, (int, torch.IntTensor, torch.LongTensor)):
            raise ValueError("Passing integer indices (e.g. from `enumerate(timesteps)`) as timesteps to "
                             "`EulerDiscreteScheduler.step()` is not supported. Make sure to pass one of the "
                             "`scheduler.timesteps` as a timestep.")
        if self.step_index is None:
            self._init_step_index(timestep)
        churn = s_churn > 0 and s_tmin <= float(self.sigmas[self._step_index]) <= s_tmax  # diffusers' host sigmas
        if churn or self.config.prediction_type not in _PREDICTIONS or \
                not self._fused_dtype(sample) or model_output.shape != sample.shape:
            return super().step(model_output, timestep, sample, s_churn, s_tmin, s_tmax, s_noise, generator,
                                return_dict)
        table = self._table("euler", self._build, sample.device)
        output = diffusers.schedulers.scheduling_euler_discrete.EulerDiscreteSchedulerOutput
        return self._sigma_step(model_output, sample, table, noise=None, noisy=False,
                                output=output if return_dict else None)


class FlowMatchEulerDiscreteScheduler(_FusedStep, diffusers.FlowMatchEulerDiscreteScheduler):
    """diffusers.FlowMatchEulerDiscreteScheduler (SD3, Flux) with a fused ``step`` and a vectorized ``scale_noise``.

    step: x <- x + (sigma_next - sigma) v, or with ``stochastic_sampling`` x <- (1 - sigma_next) x0 + sigma_next xi,
    x0 = x - sigma v, in one pass (the model output read as the linear path's velocity); any of its sigma schedules
    (shift, dynamic shifting with mu, custom sigmas, Karras / exponential / beta). Per-token timesteps run diffusers'
    own step. scale_noise: sigma noise + (1 - sigma) sample with every sample's sigma looked up on the device at once
    (diffusers loops over the batch with a host read per sample)."""

    def _build(self, stochastic: bool) -> torch.Tensor:
        """Row i: the step from sigmas[i] to sigmas[i+1] on the linear path (alpha = 1 - sigma, velocity read through
        alpha' = -1, sigma' = 1)."""
        sigmas = self.sigmas.double().cpu()
        s, s_next = sigmas[:-1], sigmas[1:]
        if stochastic:
            return ops.coef_rows(1 - s, s, 1.0, 0.0, 1 - s_next, 0.0, 0.0, s_next, -1.0, 1.0)
        return ops.flow_euler_coefficients(LinearPath(), s, s_next)

    def step(self, model_output, timestep, sample, s_churn: float = 0.0, s_tmin: float = 0.0,
             s_tmax: float = float("inf"), s_noise: float = 1.0, generator=None, per_token_timesteps=None,
             return_dict: bool = True):
        """One Euler step of the flow ODE (or the stochastic sampler's), in float32, one pass."""
        if isinstance(timestep, (int, torch.IntTensor, torch.LongTensor)):
            raise ValueError("Passing integer indices (e.g. from `enumerate(timesteps)`) as timesteps to "
                             "`FlowMatchEulerDiscreteScheduler.step()` is not supported. Make sure to pass one of "
                             "the `scheduler.timesteps` as a timestep.")
        if per_token_timesteps is not None or not self._fused_dtype(sample) or model_output.shape != sample.shape:
            return super().step(model_output, timestep, sample, s_churn, s_tmin, s_tmax, s_noise, generator,
                                per_token_timesteps, return_dict)
        if self.step_index is None:
            self._init_step_index(timestep)
        stochastic = bool(self.config.stochastic_sampling)
        noise = None
        if stochastic and generator is not None:  # diffusers' draw, for identical samples
            noise = randn_tensor(sample.shape, generator=generator, device=sample.device, dtype=torch.float32)
        table = self._table(("flow_euler", stochastic), lambda: self._build(stochastic), sample.device)
        prev = sample.to(torch.float32, memory_format=torch.contiguous_format, copy=True)  # one copy
        coef, _ = self._row(table, self._step_index, sample.device)
        ops.diffusion_step_(prev, model_output.float().contiguous(), coef, prediction="velocity",
                            **(self._noise_args(prev, noise) if stochastic else {}))
        self._step_index += 1
        prev = prev.to(model_output.dtype)
        if not return_dict:
            return (prev,)
        return diffusers.schedulers.scheduling_flow_match_euler_discrete.FlowMatchEulerDiscreteSchedulerOutput(
            prev_sample=prev)

    def scale_noise(self, sample: torch.Tensor, timestep, noise: torch.Tensor | None = None) -> torch.Tensor:
        """sigma noise + (1 - sigma) sample (the forward process at timestep), sigma per sample looked up on the
        device without a host read (see _sigmas_at)."""
        sigma = self._sigmas_at(timestep, sample)
        return (sigma * noise.to(sample.device, torch.float32) + (1.0 - sigma) * sample.float()).to(sample.dtype)


def _dpm_rows(sigmas: torch.Tensor, algorithm: str, solver_type: str, order: int, flow: bool):
    """DPM-Solver's step i from sigmas[i] to sigmas[i+1] at ``order`` (1 to 3) as x <- c_x x + b0 m0 + b1 m1 +
    b2 m2 + c_noise xi, m0 the current converted output (x0 for the ++ types, eps else), m1 and m2 the previous two:
    diffusers' first-, second- and third-order updates with D1, D2 expanded into the m's (float64). Returns the
    columns (alpha_s0, sigma_s0, c_x, b0, b1, b2, c_noise), one entry per step; rows without enough history are
    NaN (never read)."""
    s = sigmas.double().cpu()
    n = s.shape[0] - 1

    def at(offset):  # sigmas[i + offset] for every step i (NaN before the schedule starts)
        idx = torch.arange(n) + offset
        return torch.where(idx >= 0, s[idx.clamp(min=0)], float("nan"))

    def alpha_sigma(sig):
        return (1 - sig, sig) if flow else (1 / (sig**2 + 1) ** 0.5, sig / (sig**2 + 1) ** 0.5)

    (a_t, s_t), (a0, s0), (a1, s1), (a2, s2) = (alpha_sigma(at(k)) for k in (1, 0, -1, -2))
    lam = [a.log() - sg.log() for a, sg in ((a_t, s_t), (a0, s0), (a1, s1), (a2, s2))]
    h, h0, h1 = lam[0] - lam[1], lam[1] - lam[2], lam[2] - lam[3]
    r0, r1 = h0 / h, h1 / h
    em, ep = torch.expm1(-h), torch.expm1(h)
    zero = torch.zeros_like(h)
    if algorithm == "dpmsolver++":
        c_x, noise, a = s_t / s0, zero, -a_t * em
        b = -0.5 * a_t * em if solver_type == "midpoint" and order == 2 else a_t * (em / h + 1)
        c = -a_t * ((em + h) / h**2 - 0.5)
    elif algorithm == "dpmsolver":
        c_x, noise, a = a_t / a0, zero, -s_t * ep
        b = -0.5 * s_t * ep if solver_type == "midpoint" and order == 2 else -s_t * (ep / h - 1)
        c = -s_t * ((ep - h) / h**2 - 0.5)
    elif algorithm == "sde-dpmsolver++":
        e2 = -torch.expm1(-2 * h)  # 1 - exp(-2h)
        c_x, noise, a = s_t / s0 * torch.exp(-h), s_t * e2.sqrt(), a_t * e2
        b = 0.5 * a_t * e2 if solver_type == "midpoint" and order == 2 else a_t * (e2 / (-2 * h) + 1)
        c = a_t * ((e2 - 2 * h) / (2 * h) ** 2 - 0.5)
    else:  # sde-dpmsolver (orders 1 and 2)
        c_x, noise, a = a_t / a0, s_t * torch.expm1(2 * h).sqrt(), -2 * s_t * ep
        b = -s_t * ep if solver_type == "midpoint" else -2 * s_t * (ep / h - 1)
        c = torch.full_like(h, float("nan"))
    if order == 1:
        b0, b1, b2 = a, zero, zero
    elif order == 2:  # D1 = (m0 - m1) / r0
        b0, b1, b2 = a + b / r0, -b / r0, zero
    else:  # D1 = D1_0 + r0 / (r0 + r1) (D1_0 - D1_1), D2 = (D1_0 - D1_1) / (r0 + r1)
        p = b * (1 + r0 / (r0 + r1)) + c / (r0 + r1)  # on D1_0 = (m0 - m1) / r0
        q = -b * r0 / (r0 + r1) - c / (r0 + r1)  # on D1_1 = (m1 - m2) / r1
        b0, b1, b2 = a + p / r0, -p / r0 + q / r1, -q / r1
    return a0, s0, c_x, b0, b1, b2, noise



class DPMSolverMultistepScheduler(_FusedStep, diffusers.DPMSolverMultistepScheduler):
    """diffusers.DPMSolverMultistepScheduler (DPM-Solver++ and DPM-Solver, orders 1 to 3, midpoint and heun, the SDE
    variants, any of its sigma schedules, flow sigmas) with a fused ``step``.

    Step i is x <- c_x x + b0 m0 + b1 m1 + b2 m2 + c_noise xi, m0 the model output converted inside the pass (x0
    for the ++ types, eps for the others), m1 and m2 the previous steps' (``model_outputs``), the coefficients those
    of diffusers' first-, second- or third-order update (as its lower_order_final, euler_at_final and
    final_sigmas_type rules pick) in tables built once per set_timesteps. Orders 1 and 2 take one pass, which reads
    the oldest entry the solver keeps from its buffer and leaves m0 there; with solver_order 3 one more kernel adds
    b1 m1. ``model_outputs`` holds the entries later steps read, in float32 buffers the scheduler owns (the entry
    overwritten in place reads None); history set from outside is copied, never written. Dynamic thresholding and
    learned variances run diffusers' own step."""

    def _build(self, order: int, b1_only: bool = False) -> torch.Tensor:
        """Rows of steps at ``order``: c_aux is the coefficient on the oldest entry the solver keeps (m1 for
        solver_order 2, m2 for 3). With b1_only: b1 of each step, (steps, 1), for solver_order 3's extra kernel."""
        flow, plus, keep = bool(self.config.use_flow_sigmas), self.config.algorithm_type.endswith("++"), \
            self.config.solver_order
        a0, s0, c_x, b0, b1, b2, noise = _dpm_rows(self.sigmas, self.config.algorithm_type, self.config.solver_type,
                                                   order, flow)
        if b1_only:
            return b1.reshape(-1, 1)
        return ops.coef_rows(a0, s0, 1.0, c_x, b0 if plus else 0.0, 0.0 if plus else b0,
                             {1: 0.0, 2: b1, 3: b2}[keep], noise, -1.0 if flow else 0.0, 1.0 if flow else 0.0)

    def _order(self, i: int) -> int:
        """The order diffusers' step uses at step index i."""
        n, c = len(self.timesteps), self.config
        final = i == n - 1 and (c.euler_at_final or (c.lower_order_final and n < 15) or c.final_sigmas_type == "zero")
        second = i == n - 2 and c.lower_order_final and n < 15
        if c.solver_order == 1 or self.lower_order_nums < 1 or final:
            return 1
        if c.solver_order == 2 or self.lower_order_nums < 2 or second:
            return 2
        return 3

    def _fusable(self, model_output, sample, order) -> bool:
        c = self.config
        predictions = ("epsilon", "sample", "v_prediction") + (("flow_prediction",) if c.algorithm_type.endswith(
            "++") else ())
        return (not c.thresholding and c.variance_type not in ("learned", "learned_range")
                and c.prediction_type in predictions and model_output.shape == sample.shape
                and self._fused_dtype(sample) and not (order == 3 and c.algorithm_type == "sde-dpmsolver"))

    def step(self, model_output, timestep, sample, generator=None, variance_noise=None, return_dict: bool = True):
        """One multistep DPM-Solver step in float32, one fused pass (two with solver_order 3); returns
        (prev_sample,)."""
        self._begin(timestep)
        i, keep = self._step_index, self.config.solver_order
        order = self._order(i)
        if not self._fusable(model_output, sample, order):
            return super().step(model_output, timestep, sample, generator, variance_noise, return_dict)
        noise = None
        if self.config.algorithm_type.startswith("sde"):
            if variance_noise is not None:
                noise = variance_noise.to(sample.device, torch.float32)
            elif generator is not None:  # diffusers' draw, for identical samples
                noise = randn_tensor(model_output.shape, generator=generator, device=model_output.device,
                                     dtype=torch.float32)
        table = self._table(("dpm", order), lambda: self._build(order), sample.device)
        history = list(self.model_outputs)
        oldest = history[1] if keep > 1 else None  # the entry this step drops from the solver's memory
        read = order >= keep > 1  # the pass reads it (c_aux != 0)
        if self._owned(oldest):
            aux = oldest
        else:
            aux = self._buffer(sample, history)
            if read:
                aux.copy_(oldest)
        prev = sample.to(torch.float32, memory_format=torch.contiguous_format, copy=True)
        ops.diffusion_step_(prev, model_output.float().contiguous(), table[i:i + 1],
                            prediction="velocity" if self.config.prediction_type == "flow_prediction" else
                            _PREDICTIONS[self.config.prediction_type],
                            aux=aux, aux_store="x0" if self.config.algorithm_type.endswith("++") else "eps",
                            **(self._noise_args(prev, noise) if self.config.algorithm_type.startswith("sde") else {}))
        if keep == 3 and order >= 2:
            b1 = self._table(("dpm_b1", order), lambda: self._build(order, b1_only=True), sample.device)
            prev.addcmul_(b1[i, 0], history[2])
        self.model_outputs = [None] * (keep - 1) + [aux] if keep < 3 else [None, history[2], aux]
        if self.lower_order_nums < keep:
            self.lower_order_nums += 1
        self._step_index += 1
        prev = prev.to(model_output.dtype)
        return diffusers.schedulers.scheduling_utils.SchedulerOutput(prev_sample=prev) if return_dict else (prev,)



class _TwoOutputStep(_FusedStep):
    """LCM's and TCD's step, per step index i: prev = c_x x + c_x0 x0 + c_eps eps + c_noise xi in one fused pass that
    keeps x0, and the step's second output d = a x0 + b x (LCM's denoised, TCD's pred_noised_sample) in a second pass
    over the kept x0; where d equals prev (the last step, no noise) the second pass is skipped. A subclass's
    ``_rows(*key[1:])`` gives the step rows, (a, b) per step and the host list of steps whose d is prev."""

    def _two_output_step(self, model_output, sample, key, generator, *, noisy: bool):
        """(prev, d) of step ``self._step_index`` in float32 passes, cast to the sample's dtype; the index advanced."""
        tables = self.__dict__.setdefault("_fused_tables", {})
        if (key, sample.device) not in tables:
            step_rows, second, same = self._rows(*key[1:])
            tables[(key, sample.device)] = (step_rows.to(sample.device, torch.float32).contiguous(),
                                            ops.coef_rows(1.0, 1.0, 1.0, second[0], 0.0, second[1], 0.0, 0.0).to(
                                                sample.device, torch.float32).contiguous(), same)
        step_rows, second, same = tables[(key, sample.device)]
        i = self._step_index
        noise = None
        if noisy and generator is not None and not same[i]:  # diffusers' draw, for identical samples
            noise = randn_tensor(model_output.shape, generator=generator, device=model_output.device,
                                 dtype=torch.float32)
        prev = sample.to(torch.float32, memory_format=torch.contiguous_format, copy=True)
        x0 = torch.empty_like(prev)
        ops.diffusion_step_(prev, model_output.float().contiguous(), step_rows[i:i + 1],
                            prediction=_PREDICTIONS[self.config.prediction_type], clip=_clip(self.config), aux=x0,
                            aux_store="x0", **(self._noise_args(prev, noise) if noisy and not same[i] else {}))
        if same[i]:
            d = prev
        else:  # d = a x0 + b x: the kept x0 as the state, x read as an eps prediction at alpha = sigma = 1
            d = ops.diffusion_step_(x0, sample.to(torch.float32).contiguous(), second[i:i + 1], prediction="eps")
        self._step_index += 1
        return prev.to(sample.dtype), d.to(sample.dtype)

    def _fusable(self, model_output, sample) -> bool:
        return (not self.config.thresholding and self.config.prediction_type in _PREDICTIONS
                and model_output.shape == sample.shape and self._fused_dtype(sample))

    def _abar(self, t: torch.Tensor) -> torch.Tensor:
        """alphas_cumprod at timesteps t (float64), final_alpha_cumprod where t < 0."""
        abar = self.alphas_cumprod.double()
        return torch.where(t >= 0, abar[t.clamp(min=0)], self.final_alpha_cumprod.double())


class LCMScheduler(_TwoOutputStep, diffusers.LCMScheduler):
    """diffusers.LCMScheduler with a fused ``step``: prev = sqrt(abar') (c_skip x + c_out x0) + sqrt(1 - abar') xi
    (no noise on the last step) in one pass, and ``denoised`` = c_skip x + c_out x0 in a second (the first's output
    on the last step). Its tables live on the device: no host read of a device timestep (diffusers indexes its CPU
    alphas_cumprod with it, a sync per step). Thresholding runs diffusers' own step."""

    def _rows(self):
        t = self.timesteps.cpu().long()
        n = t.shape[0]
        prev_t = torch.cat([t[1:], t[-1:]])
        abar_t, abar_prev = self._abar(t), self._abar(prev_t)
        c_skip, c_out = (c.double() for c in self.get_scalings_for_boundary_condition_discrete(t.double()))
        last = torch.arange(n) == self.num_inference_steps - 1
        keep, noise = torch.where(last, 1.0, abar_prev.sqrt()), torch.where(last, 0.0, (1 - abar_prev).sqrt())
        rows = ops.coef_rows(abar_t.sqrt(), (1 - abar_t).sqrt(), 1.0, keep * c_skip, keep * c_out, 0.0, 0.0, noise)
        return rows, (c_out, c_skip), last.tolist()

    def step(self, model_output, timestep, sample, generator=None, return_dict: bool = True):
        """One LCM step; returns (prev_sample, denoised)."""
        self._begin(timestep)
        if not self._fusable(model_output, sample):
            return super().step(model_output, timestep, sample, generator, return_dict)
        prev, denoised = self._two_output_step(model_output, sample, ("lcm",), generator, noisy=True)
        if not return_dict:
            return prev, denoised
        return diffusers.schedulers.scheduling_lcm.LCMSchedulerOutput(prev_sample=prev, denoised=denoised)


class TCDScheduler(_TwoOutputStep, diffusers.TCDScheduler):
    """diffusers.TCDScheduler with a fused ``step``: the predicted noised sample at s = floor((1 - eta) t'),
    x_s = sqrt(abar_s) x0 + sqrt(1 - abar_s) eps, and prev = sqrt(abar'/abar_s) x_s + sqrt(1 - abar'/abar_s) xi
    (eta > 0, not on the last step) in one pass; x_s itself (``pred_noised_sample``) in a second."""

    def _rows(self, eta: float):
        t = self.timesteps.cpu().long()
        n = t.shape[0]
        prev_t = torch.cat([t[1:], torch.zeros(1, dtype=torch.long)])
        s = torch.floor((1 - eta) * prev_t).long()
        abar_t, abar_prev, abar_s = self._abar(t), self._abar(prev_t), self._abar(s)
        plain = (torch.arange(n) == self.num_inference_steps - 1) | (eta <= 0)  # prev is x_s
        ratio = abar_prev / abar_s
        keep, noise = torch.where(plain, 1.0, ratio.sqrt()), torch.where(plain, 0.0, (1 - ratio).sqrt())
        sa, sb = abar_s.sqrt(), (1 - abar_s).sqrt()
        rows = ops.coef_rows(abar_t.sqrt(), (1 - abar_t).sqrt(), 1.0, 0.0, keep * sa, keep * sb, 0.0, noise)
        # x_s in x0 and x: eps = (x - sqrt(abar_t) x0) / sqrt(1 - abar_t)
        b = sb / (1 - abar_t).sqrt()
        return rows, (sa - b * abar_t.sqrt(), b), plain.tolist()

    def step(self, model_output, timestep, sample, eta: float = 0.3, generator=None, return_dict: bool = True):
        """One TCD step with gamma = eta; returns (prev_sample, pred_noised_sample)."""
        self._begin(timestep)
        assert 0 <= eta <= 1.0, "gamma must be less than or equal to 1.0"
        if not self._fusable(model_output, sample):
            return super().step(model_output, timestep, sample, eta, generator, return_dict)
        prev, noised = self._two_output_step(model_output, sample, ("tcd", float(eta)), generator, noisy=eta > 0)
        if not return_dict:
            return prev, noised
        return diffusers.schedulers.scheduling_tcd.TCDSchedulerOutput(prev_sample=prev, pred_noised_sample=noised)



class HeunDiscreteScheduler(_FusedStep, diffusers.HeunDiscreteScheduler):
    """diffusers.HeunDiscreteScheduler with a fused ``step`` (epsilon, sample and v prediction, clipping, any of its
    sigma schedules). The Euler stage x' = x + dt d1 (d1 = (x - x0_1) / sigma, dt = sigma' - sigma) is one pass that
    returns x0_1; the correction x + dt (d1 + d2) / 2, d2 read from the output at the sample it is called with, is one
    pass over b = x + dt d1 / 2 (one lerp of x and x0_1). x is kept by reference, as diffusers keeps it, and
    ``state_in_first_order`` and ``dt`` behave as diffusers'."""

    def _build(self, stage: int) -> torch.Tensor:
        """Row i: the Euler stage from sigmas[i] to sigmas[i+1] (stage 1), or the correction's slope at sigmas[i]
        after the stage from sigmas[i-1] (stage 2, x <- b + dt / 2 d2 with b in aux), the model output read at
        x / sqrt(sigma^2 + 1)."""
        sigmas = self.sigmas.double().cpu()
        if stage == 1:
            s, s_next = sigmas[:-1], sigmas[1:]
            scale = 1 / (s**2 + 1).sqrt()
            return ops.coef_rows(scale, s * scale, scale, 1.0, 0.0, s_next - s, 0.0, 0.0)
        s_prev, s = torch.cat([sigmas[:1], sigmas[:-2]]), sigmas[:-1]  # row 0 is never a correction
        scale = 1 / (s**2 + 1).sqrt()
        return ops.coef_rows(scale, s * scale, scale, 0.0, 0.0, (s - s_prev) / 2, 1.0, 0.0)

    def step(self, model_output, timestep, sample, return_dict: bool = True):
        """One stage of Heun's method in float32; returns (prev_sample, pred_original_sample)."""
        if self.step_index is None:
            self._init_step_index(timestep)
        first, kept = self.state_in_first_order, self.__dict__.get("_fused_x0")
        fusable = self.config.prediction_type in _PREDICTIONS and self._fused_dtype(sample) and \
            model_output.shape == sample.shape
        i = self._step_index
        sigmas = self.__dict__.setdefault("_fused_tables", {}).get("host_sigmas")
        if sigmas is None:  # diffusers keeps its sigmas on the host: read once per set_timesteps
            sigmas = self.__dict__["_fused_tables"]["host_sigmas"] = self.sigmas.tolist()
        if not first and kept is not None and not fusable:  # diffusers' correction after a fused Euler stage
            self.prev_derivative, self.__dict__["_fused_x0"] = (self.sample - kept) / sigmas[i - 1], None
        if not fusable or (not first and kept is None):
            return super().step(model_output, timestep, sample, return_dict)
        table = self._table(("heun", 1 if first else 2), lambda: self._build(1 if first else 2), sample.device)
        prev = sample.to(torch.float32, memory_format=torch.contiguous_format, copy=True)
        if first:
            x0 = torch.empty_like(prev)
        else:  # b = x + dt / 2 (x - x0_1) / sigma: the pass reads it and leaves x0 in its place
            x0 = torch.lerp(self.sample.float(), kept.float(), -(sigmas[i] - sigmas[i - 1]) / (2 * sigmas[i - 1]))
        ops.diffusion_step_(prev, model_output.float().contiguous(), table[i:i + 1],
                            prediction=_PREDICTIONS[self.config.prediction_type], clip=_clip(self.config),
                            aux=x0.contiguous(), aux_store="x0")
        prev, x0 = prev.to(sample.dtype), x0.to(sample.dtype)
        if first:  # diffusers' first-order state: dt set, x kept; x0_1 kept for the correction
            self.dt, self.sample, self.__dict__["_fused_x0"] = sigmas[i + 1] - sigmas[i], sample, x0
        else:
            self.dt, self.prev_derivative, self.sample, self.__dict__["_fused_x0"] = None, None, None, None
        self._step_index += 1
        if not return_dict:
            return prev, x0
        return diffusers.schedulers.scheduling_heun_discrete.HeunDiscreteSchedulerOutput(
            prev_sample=prev, pred_original_sample=x0)


def _unipc_rhos(rks: list[float], hh: float, b_h: float, order: int, corrector: bool) -> list[float]:
    """UniPC's rho coefficients (diffusers' multistep_uni_p/c_bh_update), solved on the host in float64."""
    if not corrector and order == 1:
        return []
    if order == (1 if corrector else 2):
        return [0.5]
    r, b, h_phi_k, factorial = [], [], math.expm1(hh) / hh - 1, 1
    ks = torch.tensor(rks + [1.0], dtype=torch.float64)
    for i in range(1, order + 1):
        r.append(ks ** (i - 1))
        b.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    r, b = torch.stack(r), torch.tensor(b, dtype=torch.float64)
    return torch.linalg.solve(r, b).tolist() if corrector else torch.linalg.solve(r[:-1, :-1], b[:-1]).tolist()


def _unipc_update(lam, scale, i_from: int, i_to: int, order: int, corrector: bool, x0: bool, bh1: bool):
    """One UniP (predictor) or UniC (corrector) update of diffusers' from sigmas[i_from] to sigmas[i_to] at
    ``order``, expanded into x_new = c x + sum_j w[j] m_j: m_j the converted output j steps older than the newest the
    update reads (the predictor's newest is the output at i_from, the corrector's the one at i_to). ``lam`` holds
    log(alpha / sigma) and ``scale`` (alpha, sigma) per sigma, as host floats."""
    h = lam[i_to] - lam[i_from]
    hh = -h if x0 else h
    h_phi_1, b_h = math.expm1(hh), hh if bh1 else math.expm1(hh)
    a_t, a_s = scale[i_to], scale[i_from]  # alpha (x0 form) or sigma (eps form) at the two ends
    c = a_t[1] / a_s[1] if x0 else a_t[0] / a_s[0]
    k_t = a_t[0] if x0 else a_t[1]
    n_hist = order - 1
    rks = [(lam[i_from - k] - lam[i_from]) / h for k in range(1, n_hist + 1)]
    rhos = _unipc_rhos(rks, hh, b_h, order, corrector)
    # m0 = output at i_from; D1_k = (m_{from-k} - m0) / r_k
    w_m0 = -k_t * h_phi_1 + k_t * b_h * sum(rhos[k - 1] / rks[k - 1] for k in range(1, n_hist + 1))
    w_old = [-k_t * b_h * rhos[k - 1] / rks[k - 1] for k in range(1, n_hist + 1)]
    if not corrector:
        return c, [w_m0] + w_old
    # corrector: + rhos[-1] (m_new - m0)
    w_new = -k_t * b_h * rhos[-1]
    return c, [w_new, w_m0 + k_t * b_h * rhos[-1]] + w_old


class UniPCMultistepScheduler(_FusedStep, diffusers.UniPCMultistepScheduler):
    """diffusers.UniPCMultistepScheduler (bh1 and bh2, any solver_order, predictor and corrector, x0 and eps forms,
    its sigma schedules and flow sigmas) with a fused ``step`` and no device linear solve.

    diffusers' step corrects the last sample (UniC), then predicts the next (UniP); both are linear in the sample,
    the new converted output and the kept ones, with rho coefficients that depend on the schedule only. Here they
    are solved on the host in float64 when a run's rows are built (diffusers solves on the device every step, a
    sync), and the corrected sample is not materialized: it is the last output minus the predictor's history terms,
    over its c, which folds into the next step's row. A step is then x <- K_x x + K_0 m_new + sum_j K_j m_{i-j}: one
    fused pass that reads the oldest kept output and leaves m_new in its buffer, plus one kernel per other kept
    output (solver_order 2: two kernels). ``last_sample`` is computed when read. A sample other than the one the
    last step returned (a pipeline that edits the latents between steps), dynamic thresholding and ``solver_p``
    run diffusers' own step."""

    @property
    def last_sample(self):
        pending = self.__dict__.get("_fused_last")
        if pending is not None:  # the corrected sample: (x_out - sum_j w_j m_j) / c
            out, c, w, kept = pending
            value = out.float()
            for wj, mj in zip(w, kept, strict=True):
                value = value - wj * mj
            self.__dict__["_last_sample"], self.__dict__["_fused_last"] = (value / c).to(out.dtype), None
        return self.__dict__.get("_last_sample")

    @last_sample.setter
    def last_sample(self, value):
        self.__dict__["_fused_last"], self.__dict__["_last_sample"] = None, value

    def _host(self):
        """(lam, (alpha, sigma)) per sigma as host floats, once per set_timesteps."""
        tables = self.__dict__.setdefault("_fused_tables", {})
        if "host" not in tables:
            sig = self.sigmas.double().cpu()
            alpha, sigma = (1 - sig, sig) if self.config.use_flow_sigmas else (1 / (sig**2 + 1).sqrt(),
                                                                                 sig / (sig**2 + 1).sqrt())
            scale = list(zip(alpha.tolist(), sigma.tolist(), strict=True))
            tables["host"] = ((alpha.log() - sigma.log()).tolist(), scale)
        return tables["host"]

    def _row(self, i: int, p_prev: int, p: int, corrected: bool):
        """(K_x, [K_0, ..., K_S], (c, w) of the predictor) of step i: corrector order p_prev (if corrected),
        predictor order p; None for a step that cannot be taken."""
        keep, x0, bh1 = self.config.solver_order, self.predict_x0, self.config.solver_type == "bh1"
        lam, scale = self._host()
        k = [0.0] * (keep + 1)
        try:
            c, w = _unipc_update(lam, scale, i, i + 1, p, False, x0, bh1)
            k_x = c
            if corrected:  # x_c = cc last + sum cw_j m_j, last = (x - sum pw_j m_{1+j}) / pc
                cc, cw = _unipc_update(lam, scale, i - 1, i, p_prev, True, x0, bh1)
                pc, pw = _unipc_update(lam, scale, i - 1, i, p_prev, False, x0, bh1)
                k_x = c * cc / pc
                for j, v in enumerate(cw):
                    k[j] += c * v
                for j, v in enumerate(pw):
                    k[1 + j] -= c * cc * v / pc
            for j, v in enumerate(w):
                k[j] += v
        except (ZeroDivisionError, torch.linalg.LinAlgError):  # a higher order onto sigma = 0 (diffusers' step
            # gives inf there, or fails in its solve)
            return None
        return k_x, k, (c, w)

    def _rows_from(self, i: int, lower: int, p_prev: int, corrected: bool):
        """The rest of a run from step i in state (lower_order_nums, this_order, last sample kept), built at once
        (one host-to-device copy): ({(i, p_prev, p, corrected): (row, predictor's (c, w) or None when the step
        cannot be taken)}, rows)."""
        n, keep, c = len(self.timesteps), self.config.solver_order, self.config
        lam, scale = self._host()
        index, cols = {}, []
        for step in range(i, n):
            corr = step > 0 and step - 1 not in self.disable_corrector and corrected
            p = min(min(keep, n - step) if c.lower_order_final else keep, lower + 1)
            row = self._row(step, p_prev, p, corr)
            k_x, k, pred = row if row is not None else (float("nan"), [float("nan")] * (keep + 1), None)
            plus = self.predict_x0
            cols.append([scale[step][0], scale[step][1], 1.0, k_x, k[0] if plus else 0.0, 0.0 if plus else k[0],
                         k[keep], 0.0, -1.0 if c.use_flow_sigmas else 0.0, 1.0 if c.use_flow_sigmas else 0.0]
                        + k[1:keep])
            index[(step, p_prev if corr else 0, p, corr)] = (len(cols) - 1, pred)
            lower, p_prev, corrected = min(lower + 1, keep), p, True
        return index, torch.tensor(cols, dtype=torch.float64)

    def _fusable(self, model_output, sample) -> bool:
        c = self.config
        predictions = ("epsilon", "sample", "v_prediction") + (("flow_prediction",) if self.predict_x0 else ())
        return (not c.thresholding and self.solver_p is None and c.prediction_type in predictions
                and model_output.shape == sample.shape and self._fused_dtype(sample))

    def step(self, model_output, timestep, sample, return_dict: bool = True):
        """One UniPC step (corrector then predictor) in float32; returns (prev_sample,)."""
        self._begin(timestep)
        i, keep = self._step_index, self.config.solver_order
        pending = self.__dict__.get("_fused_last")
        kept_last = pending is not None or self.__dict__.get("_last_sample") is not None
        corrected = i > 0 and i - 1 not in self.disable_corrector and kept_last
        if not self._fusable(model_output, sample) or corrected and (pending is None or pending[0] is not sample):
            return super().step(model_output, timestep, sample, return_dict)
        p_prev = self.this_order if corrected else 0
        n = len(self.timesteps)
        p = min(min(keep, n - i) if self.config.lower_order_final else keep, self.lower_order_nums + 1)
        key = (i, p_prev, p, corrected)
        tables = self.__dict__.setdefault("_fused_tables", {})
        runs = tables.setdefault(("unipc", sample.device), [])
        found = next(((index[key], table, extra) for index, table, extra in runs if key in index), None)
        if found is None:
            index, rows = self._rows_from(i, self.lower_order_nums, p_prev, corrected)
            rows = rows.to(sample.device, torch.float32)
            runs.append((index, rows[:, :COEF_WIDTH].contiguous(), rows[:, COEF_WIDTH:].contiguous()))
            found = (index[key], runs[-1][1], runs[-1][2])
        (row, pred), table, extra = found
        if pred is None:
            raise ValueError(f"UniPC cannot take an order-{p} step onto sigma = 0 (step {i}): use "
                             "lower_order_final=True or final_sigmas_type='sigma_min'")
        history = list(self.model_outputs)
        oldest = history[0]
        if self._owned(oldest):
            aux = oldest
        else:
            aux = self._buffer(sample, history)
            if oldest is not None:
                aux.copy_(oldest)
            else:
                aux.zero_()  # (read with a zero coefficient: no older output yet)
        prev = sample.to(torch.float32, memory_format=torch.contiguous_format, copy=True)
        ops.diffusion_step_(prev, model_output.float().contiguous(), table[row:row + 1],
                            prediction="velocity" if self.config.prediction_type == "flow_prediction" else
                            _PREDICTIONS[self.config.prediction_type],
                            aux=aux, aux_store="x0" if self.predict_x0 else "eps")
        for j in range(1, keep):  # the other kept outputs: m_{i-j} is history[keep - j]
            if history[keep - j] is not None:
                prev.addcmul_(extra[row, j - 1], history[keep - j])
        self.model_outputs = history[1:] + [aux]
        self.timestep_list = list(self.timestep_list[1:]) + [timestep]
        self.this_order = p
        if self.lower_order_nums < keep:
            self.lower_order_nums += 1
        self._step_index += 1
        out = prev.to(sample.dtype)
        c, w = pred
        if c != 0 and math.isfinite(c):  # the corrected sample, for the next step or a reader of last_sample
            self.__dict__["_fused_last"] = (out, c, w, self.model_outputs[::-1][:p])
        else:  # the last step onto sigma = 0: nothing follows to correct
            self.last_sample = None
        return diffusers.schedulers.scheduling_utils.SchedulerOutput(prev_sample=out) if return_dict else (out,)


class CMStochasticIterativeScheduler(_FusedStep, diffusers.CMStochasticIterativeScheduler):
    """diffusers.CMStochasticIterativeScheduler (consistency models' multistep sampling) with a fused ``step`` and a
    vectorized ``add_noise``. step: the consistency function f = c_skip x + c_out F (F the model output, read
    through the v prediction's x0 = alpha x - sigma v with alpha = c_skip, sigma = -c_out; clamped to [-1, 1] with
    clip_denoised) and x <- f + s_noise sqrt(sigma_hat^2 - sigma_min^2) z in one pass, its coefficients in a device
    table (diffusers keeps its sigmas on the host). add_noise: sample + sigma noise with every sample's sigma looked
    up on the device at once (diffusers reads each on the host, and crashes on a timestep off the schedule)."""

    def _build(self) -> torch.Tensor:
        """Row i: step i's consistency function and the noise to its next level, as diffusers computes them."""
        sigmas = self.sigmas.double().cpu()
        n, c = len(sigmas), self.config
        index = torch.arange(n)
        nxt = torch.where(index + 1 < c.num_train_timesteps, sigmas[(index + 1).clamp(max=n - 1)], sigmas[-1])
        c_skip, c_out = self.get_scalings_for_boundary_condition(sigmas)
        hat = nxt.clamp(min=c.sigma_min, max=c.sigma_max)
        noise = c.s_noise * (hat**2 - c.sigma_min**2).clamp(min=0).sqrt() if len(self.timesteps) > 1 else 0.0
        return ops.coef_rows(c_skip, -c_out, 1.0, 0.0, 1.0, 0.0, 0.0, noise)

    def step(self, model_output, timestep, sample, generator=None, return_dict: bool = True):
        """One multistep consistency sampling step in float32, one pass; returns (prev_sample,)."""
        if isinstance(timestep, (int, torch.IntTensor, torch.LongTensor)):
            raise ValueError(
                "Passing integer indices (e.g. from `enumerate(timesteps)`) as timesteps to"
                f" `{self.__class__}.step()` is not supported. Make sure to pass"
                " one of the `scheduler.timesteps` as a timestep.")
        if not self._fused_dtype(sample) or model_output.shape != sample.shape:
            return super().step(model_output, timestep, sample, generator, return_dict)
        if not self.is_scale_input_called:
            diffusers.schedulers.scheduling_consistency_models.logger.warning(
                "The `scale_model_input` function should be called before `step` to ensure correct denoising. "
                "See `StableDiffusionPipeline` for a usage example.")
        if self.step_index is None:
            self._init_step_index(timestep)
        noisy = len(self.timesteps) > 1
        noise = None
        if noisy and generator is not None:  # diffusers' draw, for identical samples
            noise = randn_tensor(model_output.shape, dtype=model_output.dtype, device=model_output.device,
                                 generator=generator).float()
        table = self._table("cm", self._build, sample.device)
        prev = sample.to(torch.float32, memory_format=torch.contiguous_format, copy=True)
        ops.diffusion_step_(prev, model_output.float().contiguous(), table[self._step_index:self._step_index + 1],
                            prediction="v", clip=1.0 if self.config.clip_denoised else None, clip_eps=False,
                            **(self._noise_args(prev, noise) if noisy else {}))
        self._step_index += 1
        prev = prev.to(sample.dtype)
        if not return_dict:
            return (prev,)
        return diffusers.schedulers.scheduling_consistency_models.CMStochasticIterativeSchedulerOutput(
            prev_sample=prev)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps) -> torch.Tensor:
        """original_samples + sigma noise, each sample's sigma looked up on the device (see _sigmas_at)."""
        sigma = self._sigmas_at(timesteps, original_samples).to(original_samples.dtype)
        return original_samples + noise.to(original_samples.device, original_samples.dtype) * sigma
