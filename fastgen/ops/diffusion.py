"""Functional diffusion-step ops: one generic fused op and one coefficient rule per sampler.

Every sampler step here is affine in (x, x0, eps, aux, xi): for sample b,

    x <- c_x x + c_x0 x0 + c_eps eps + c_aux aux + c_noise xi,

where (x0, eps) come from the model output by the prediction type, read in the
model's space x_m = k x with x_m = alpha x0 + sigma eps. A coefficient row is
``[alpha, sigma, k, c_x, c_x0, c_eps, c_aux, c_noise]``; the ``*_coefficients``
functions build rows (float64, one per time given) and :func:`diffusion_step_`
runs one fused pass. Loops precompute all rows once (a device table) and pass
row views, so no step moves data between host and device. Column names and the codes of
``prediction`` and ``aux_store`` are in :mod:`fastgen.constants`.
"""

from __future__ import annotations

import math

import torch
from torch._subclasses.fake_tensor import is_fake

from ..core.constants import COEF_WIDTH, AuxStore, Coef, Prediction
from ..diffusion.processes import SDE, VPSDE, AffinePath, ConsistencyProcess, DDPMSchedule
from ._common import (
    check_like,
    check_rng_ints,
    check_rng_state,
    check_state,
    check_vector,
    positive_float,
    require,
    rng_args,
)
from ._registry import Loop

PREDICTIONS = {"eps": Prediction.EPS, "x0": Prediction.X0, "v": Prediction.V, "score": Prediction.SCORE,
               "velocity": Prediction.VELOCITY}
AUX_STORE = {None: AuxStore.NONE, "x0": AuxStore.X0, "increment": AuxStore.INCREMENT, "eps": AuxStore.EPS}

loop = Loop("diffusion")


def _step_args(a) -> None:
    """What the step and the corrector share: state, model output, coefficient rows, index, noise keys."""
    check_state(a.x)
    check_like(a.model_out, "model_out", a.x)
    require(a.model_out.is_contiguous(), lambda: "model_out must be contiguous")
    batch = a.x.shape[0]
    require(a.coef.dim() == 2 and a.coef.shape[1] == COEF_WIDTH and a.coef.dtype == torch.float32 and
            a.coef.device == a.x.device and a.coef.is_contiguous(),
            lambda: f"coef must be contiguous float32 of shape (rows, {COEF_WIDTH}) on the device of x "
                    f"({a.x.device}), got "
                    f"{a.coef.dtype} {tuple(a.coef.shape)} on {a.coef.device}")
    if a.index is None:
        require(a.coef.shape[0] in (1, batch),
                lambda: f"coef must have 1 or {batch} rows (one per sample), got {a.coef.shape[0]}")
    else:
        require(a.index.dtype == torch.int64 and a.index.dim() == 1 and a.index.numel() in (1, batch) and
                a.index.device == a.x.device and a.index.is_contiguous(),
                lambda: f"index must be contiguous int64 with 1 or {batch} elements on the device of x, "
                        f"got {a.index.dtype} {tuple(a.index.shape)} on {a.index.device}")
        # CUDA kernels clamp the index: reading a device index here would sync
        if a.index.device.type == "cpu" and a.index.numel() and not is_fake(a.index):
            rows, lo, hi = a.coef.shape[0], int(a.index.min()), int(a.index.max())
            require(0 <= lo and hi < rows, lambda: f"index values must name rows of coef (0 to {rows - 1}), got {lo} "
                                                   f"to {hi}", IndexError)
    require(a.prediction in tuple(Prediction),
            lambda: f"prediction must be a fastgen.constants.Prediction code, got {a.prediction}")
    check_rng_ints(a.seed, a.offset)
    check_rng_state(a.rng_state, a.x)
    check_vector(a.sample_seeds, "sample_seeds", a.x, batch, torch.int64, optional=True)
    require(a.sample_offset >= 0, lambda: f"sample_offset must be >= 0, got {a.sample_offset}")


def _diffusion_step_shapes(a) -> None:
    _step_args(a)
    require(a.clip is None or a.clip > 0, lambda: f"clip must be > 0, got {a.clip}")
    if a.aux is not None:
        check_like(a.aux, "aux", a.x, dtypes=(torch.float32,))
        require(a.aux.is_contiguous(), lambda: "aux must be contiguous")
    require(a.aux_store in tuple(AuxStore) and (a.aux_store == AuxStore.NONE or a.aux is not None),
            lambda: f"aux_store must be a fastgen.constants.AuxStore code, and needs aux; got "
                    f"{a.aux_store} with aux {'set' if a.aux is not None else 'None'}")
    if a.noise is not None:
        check_like(a.noise, "noise", a.x, dtypes=(torch.float32,))
        require(a.noise.is_contiguous(), lambda: "noise must be contiguous")
    require((a.uncond_out is None) == (a.guidance is None),
            lambda: "uncond_out and guidance go together (classifier-free guidance needs both)")
    if a.uncond_out is not None:
        check_like(a.uncond_out, "uncond_out", a.x)
        require(a.uncond_out.dtype == a.model_out.dtype and a.uncond_out.is_contiguous(),
                lambda: f"uncond_out must be contiguous with model_out's dtype {a.model_out.dtype}")
        g, batch = a.guidance, a.x.shape[0]
        require(isinstance(g, torch.Tensor), lambda: f"guidance must be a torch.Tensor, got {type(g).__name__}",
                TypeError)
        require(g.dtype == torch.float32 and g.dim() == 1 and g.shape[0] in (1, batch) and g.device == a.x.device
                and g.is_contiguous(),
                lambda: f"guidance must be contiguous float32 of shape (1,) or ({batch},) on the device of x "
                        f"({a.x.device}), got {g.dtype} {tuple(g.shape)} on {g.device}")
    require(math.isfinite(a.guidance_rescale) and 0 <= a.guidance_rescale <= 1 and
            (a.guidance_rescale == 0 or a.uncond_out is not None),
            lambda: f"guidance_rescale must be in [0, 1] and needs uncond_out and guidance, got {a.guidance_rescale}")
    require((a.known is None) == (a.known_mask is None),
            lambda: "known and known_mask go together (inpainting needs both)")
    if a.known is not None:
        check_like(a.known, "known", a.x, dtypes=(torch.float32,))
        require(a.known.is_contiguous(), lambda: "known must be contiguous")
        m = a.known_mask
        require(isinstance(m, torch.Tensor) and m.dtype == torch.bool and m.device == a.x.device and
                m.is_contiguous() and tuple(m.shape) in (tuple(a.x.shape), tuple(a.x.shape[1:])),
                lambda: f"known_mask must be a contiguous bool tensor of shape {tuple(a.x.shape)} or "
                        f"{tuple(a.x.shape[1:])} (one mask for every sample) on the device of x, got "
                        f"{getattr(m, 'dtype', type(m).__name__)} {tuple(getattr(m, 'shape', ()))}")
        require(math.isfinite(a.known_keep) and math.isfinite(a.known_std) and a.known_std >= 0,
                lambda: f"known_keep must be finite and known_std finite and >= 0, got {a.known_keep}, "
                        f"{a.known_std}")


def _langevin_correct_shapes(a) -> None:
    _step_args(a)
    require(math.isfinite(a.snr) and a.snr > 0, lambda: f"snr must be finite and > 0, got {a.snr}")


_diffusion_step = loop.op(
    "diffusion_step_(Tensor(a!) x, Tensor model_out, Tensor coef, Tensor? index=None, int prediction=0, "
    "float? clip=None, bool clip_eps=True, Tensor(b!)? aux=None, int aux_store=0, Tensor? noise=None, int seed=0, "
    "int offset=0, Tensor? rng_state=None, Tensor? sample_seeds=None, int sample_offset=0, "
    "Tensor? uncond_out=None, Tensor? guidance=None, float guidance_rescale=0., Tensor? known=None, "
    "Tensor? known_mask=None, float known_keep=1., float known_std=0.) -> ()",
    shapes=_diffusion_step_shapes)
_langevin_correct = loop.op(
    "langevin_correct_(Tensor(a!) x, Tensor model_out, Tensor coef, Tensor? index=None, int prediction=3, "
    "float snr=0.16, int seed=0, int offset=0, Tensor? rng_state=None, Tensor? sample_seeds=None, "
    "int sample_offset=0) -> ()",
    shapes=_langevin_correct_shapes)


def prediction_code(prediction: str) -> int:
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {', '.join(PREDICTIONS)}, got {prediction!r}")
    return int(PREDICTIONS[prediction])


def coef_rows(*columns) -> torch.Tensor:
    """Stack broadcastable columns of fastgen.constants.Coef, in order, into (R, COEF_WIDTH) float64 rows; the
    velocity prediction's D_ALPHA, D_SIGMA are 0 when not given."""
    columns = columns + (0.0,) * (COEF_WIDTH - len(columns))
    cols = torch.broadcast_tensors(*[torch.as_tensor(c, dtype=torch.float64) for c in columns])
    return torch.stack([c.reshape(-1) for c in cols], dim=1)


# ---------------------------------------------------------------- coefficient rules


def euler_maruyama_coefficients(sde: SDE, t, t_next) -> torch.Tensor:
    """Reverse-SDE Euler-Maruyama, dt = t_next - t < 0: x <- x - (f x - g^2 s) |dt| + g sqrt|dt| xi,
    s = -eps / sigma."""
    dt = torch.as_tensor(t, dtype=torch.float64) - torch.as_tensor(t_next, dtype=torch.float64)
    alpha, sigma = sde.marginal(t)
    f, g = sde.drift_coef(t), sde.diffusion(t)
    return coef_rows(alpha, sigma, 1.0, 1 - f * dt, 0.0, -g.square() * dt / sigma, 0.0, g * dt.sqrt())


def reverse_diffusion_coefficients(process, t, t_next) -> torch.Tensor:
    """Ancestral predictor from the forward transition x_t = a x_s + G z (a = alpha_t / alpha_s,
    G^2 = sigma_t^2 - a^2 sigma_s^2): x <- (2 - a) x + G^2 s + G xi (score_sde's ReverseDiffusionPredictor)."""
    alpha, sigma = process.marginal(t)
    alpha_s, sigma_s = process.marginal(t_next)
    a = alpha / alpha_s
    g2 = (sigma.square() - a.square() * sigma_s.square()).clamp(min=0)
    return coef_rows(alpha, sigma, 1.0, 2 - a, 0.0, -g2 / sigma, 0.0, g2.sqrt())


def ode_euler_coefficients(sde: SDE, t, t_next) -> torch.Tensor:
    """Probability-flow ODE, Euler: x <- x - (f x - g^2 s / 2) |dt|."""
    dt = torch.as_tensor(t, dtype=torch.float64) - torch.as_tensor(t_next, dtype=torch.float64)
    alpha, sigma = sde.marginal(t)
    f, g = sde.drift_coef(t), sde.diffusion(t)
    return coef_rows(alpha, sigma, 1.0, 1 - f * dt, 0.0, -0.5 * g.square() * dt / sigma, 0.0, 0.0)


def ode_heun_correction_coefficients(sde: SDE, t, t_next) -> torch.Tensor:
    """Heun's second stage, applied to the Euler result x' at t_next with aux = the Euler increment d1:
    x <- x' - d1 / 2 + d2 / 2, d2 the Euler increment evaluated at (x', t_next)."""
    dt = torch.as_tensor(t, dtype=torch.float64) - torch.as_tensor(t_next, dtype=torch.float64)
    alpha, sigma = sde.marginal(t_next)
    f, g = sde.drift_coef(t_next), sde.diffusion(t_next)
    return coef_rows(alpha, sigma, 1.0, 1 - 0.5 * f * dt, 0.0, -0.25 * g.square() * dt / sigma, -0.5, 0.0)


def langevin_corrector_coefficients(process, t, t_next) -> torch.Tensor:
    """Langevin corrector at t: column 3 is a = alpha_s^2 / alpha_t^2 (1 - beta of the step) for VP-type
    processes, 1 otherwise (score_sde's LangevinCorrector)."""
    alpha, sigma = process.marginal(t)
    if isinstance(process, (VPSDE, DDPMSchedule)):
        a = (alpha / process.marginal(t_next)[0]).square()
    else:
        a = torch.ones_like(alpha)
    return coef_rows(alpha, sigma, 1.0, a, 0.0, 0.0, 0.0, 0.0)


def langevin_noise_level_coefficients(process, t, t_next, snr: float) -> torch.Tensor:
    """Langevin corrector at t with its step from the noise level: x <- x + h s + sqrt(2 h) xi,
    h = 2 a (snr sigma_t)^2, a as in langevin_corrector_coefficients. score_sde's per-batch rule
    h = 2 a (snr |xi| / |s|)^2 with |xi| ~ sqrt(D) and |s| ~ sqrt(D) / sigma_t, without the norms: h is the
    same for every sample, so the corrector is plain Langevin on p_t in any dimension."""
    alpha, sigma = process.marginal(t)
    a = langevin_corrector_coefficients(process, t, t_next)[:, Coef.C_X]
    h = 2 * a * (snr * sigma).square()
    return coef_rows(alpha, sigma, 1.0, 1.0, 0.0, -h / sigma, 0.0, (2 * h).sqrt())


def ddpm_coefficients(schedule: DDPMSchedule, t, t_prev, variance: str = "fixed_small") -> torch.Tensor:
    """DDPM ancestral step t -> t_prev (t_prev = -1: the last step) with the posterior of Ho et al.:
    x <- sqrt(abar_s) beta / (1 - abar_t) x0 + sqrt(a)(1 - abar_s) / (1 - abar_t) x + std xi,
    a = abar_t / abar_s, beta = 1 - a, std^2 = beta (1 - abar_s) / (1 - abar_t) ("fixed_small") or beta
    ("fixed_large"); no noise at t = 0."""
    if variance not in ("fixed_small", "fixed_large"):
        raise ValueError(f"variance must be 'fixed_small' or 'fixed_large', got {variance!r}")
    t = torch.as_tensor(t, dtype=torch.int64)
    alpha, sigma = schedule.marginal(t)
    abar_t = alpha.square()
    abar_s = schedule.marginal(t_prev)[0].square()
    a = abar_t / abar_s
    beta = 1 - a
    var = (1 - abar_s) / (1 - abar_t) * beta
    var = var.clamp(min=1e-20) if variance == "fixed_small" else beta
    noise = torch.where(t > 0, var.sqrt(), torch.zeros_like(var))
    c_x, c_x0 = a.sqrt() * (1 - abar_s) / (1 - abar_t), abar_s.sqrt() * beta / (1 - abar_t)
    return coef_rows(alpha, sigma, 1.0, c_x, c_x0, 0.0, 0.0, noise)


def ddim_coefficients(schedule, t, t_prev, eta: float = 0.0, final_alpha_cumprod: float | None = None) -> torch.Tensor:
    """DDIM step t -> t_prev (Song et al. 2021): x <- sqrt(abar_s) x0 + sqrt(1 - abar_s - std^2) eps + std xi,
    std = eta sqrt((1 - abar_s) / (1 - abar_t) (1 - abar_t / abar_s)). At t_prev = -1, abar_s is
    ``final_alpha_cumprod`` (1 by default)."""
    alpha, sigma = schedule.marginal(t)
    abar_t = alpha.square()
    abar_s = schedule.marginal(t_prev)[0].square()
    if final_alpha_cumprod is not None:
        abar_s = torch.where(torch.as_tensor(t_prev) < 0, torch.tensor(float(final_alpha_cumprod), dtype=torch.float64),
                             abar_s)
    var = (1 - abar_s) / (1 - abar_t) * (1 - abar_t / abar_s)
    std = eta * var.clamp(min=0).sqrt()
    return coef_rows(alpha, sigma, 1.0, 0.0, abar_s.sqrt(), (1 - abar_s - std.square()).clamp(min=0).sqrt(), 0.0, std)


def euler_ancestral_coefficients(sigma, sigma_next, eta: float = 1.0, s_noise: float = 1.0, alpha=1.0) -> torch.Tensor:
    """k-diffusion's Euler ancestral step on x = x0 + sigma eps: with
    sigma_up = min(sigma_next, eta sqrt(sigma_next^2 (sigma^2 - sigma_next^2) / sigma^2)),
    sigma_down = sqrt(sigma_next^2 - sigma_up^2): x <- x + (sigma_down - sigma) eps + s_noise sigma_up xi (for an
    increasing step, k-diffusion's min takes sigma_up = sigma_next: x <- x0 + s_noise sigma_next xi).
    The model sees alpha x (alpha = 1 / sqrt(1 + sigma^2) for a VP model)."""
    sigma = torch.as_tensor(sigma, dtype=torch.float64)
    sigma_next = torch.as_tensor(sigma_next, dtype=torch.float64)
    up = torch.minimum(sigma_next, eta * (sigma_next.square() * (sigma.square() - sigma_next.square())
                                          / sigma.square()).clamp(min=0).sqrt())
    if eta:  # an increasing step (noising), as k-diffusion's min(sigma_next, nan) takes it: to x0, then sigma_next xi
        up = torch.where(sigma_next > sigma, sigma_next, up)
    down = (sigma_next.square() - up.square()).clamp(min=0).sqrt()
    alpha = torch.as_tensor(alpha, dtype=torch.float64)
    return coef_rows(alpha, alpha * sigma, alpha, 1.0, 0.0, down - sigma, 0.0, s_noise * up)


def euler_coefficients(sigma, sigma_next, alpha=1.0) -> torch.Tensor:
    """k-diffusion's Euler step: x <- x + (sigma_next - sigma) eps (eps = d = (x - x0) / sigma)."""
    return euler_ancestral_coefficients(sigma, sigma_next, eta=0.0, alpha=alpha)


def heun_correction_coefficients(sigma, sigma_next, alpha_next=1.0) -> torch.Tensor:
    """Heun's second stage on x' = x + d1 (sigma_next - sigma) with aux = that increment:
    x <- x' - aux / 2 + (sigma_next - sigma) eps(x', sigma_next) / 2."""
    sigma = torch.as_tensor(sigma, dtype=torch.float64)
    sigma_next = torch.as_tensor(sigma_next, dtype=torch.float64)
    alpha = torch.as_tensor(alpha_next, dtype=torch.float64)
    return coef_rows(alpha, alpha * sigma_next, alpha, 1.0, 0.0, 0.5 * (sigma_next - sigma), -0.5, 0.0)


def dpm_2_correction_coefficients(sigma_hat, sigma_mid, sigma_next) -> torch.Tensor:
    """k-diffusion's DPM-Solver-2 second stage, on x_2 = x + (sigma_mid - sigma_hat) d with aux = that increment:
    x <- x_2 - aux + (sigma_next - sigma_hat) eps(x_2, sigma_mid)."""
    sigma_hat, sigma_mid, sigma_next = (torch.as_tensor(v, dtype=torch.float64) for v in (sigma_hat, sigma_mid,
                                                                                          sigma_next))
    return coef_rows(1.0, sigma_mid, 1.0, 1.0, 0.0, sigma_next - sigma_hat, -1.0, 0.0)


def dpmpp_2s_coefficients(sigma, sigma_mid, sigma_down, noise=0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """DPM-Solver++(2S) from sigma to sigma_down through sigma_mid (k-diffusion's, r = 1/2), as the rows of its two
    stages: x_2 = (sigma_mid / sigma) x - expm1(-h/2) x0 (h = log(sigma / sigma_down)), storing aux = x_2 - x;
    then on x_2: x <- (sigma_down / sigma)(x_2 - aux) - expm1(-h) x0(x_2, sigma_mid) + noise xi."""
    sigma, sigma_mid, sigma_down = (torch.as_tensor(v, dtype=torch.float64) for v in (sigma, sigma_mid, sigma_down))
    h = torch.log(sigma / sigma_down)
    ratio = sigma_down / sigma
    return (coef_rows(1.0, sigma, 1.0, sigma_mid / sigma, -torch.expm1(-h / 2), 0.0, 0.0, 0.0),
            coef_rows(1.0, sigma_mid, 1.0, ratio, -torch.expm1(-h), 0.0, -ratio, noise))


def _log_steps(sigmas: torch.Tensor):
    """(sigma, sigma_next, h = log(sigma / sigma_next), h_prev / h, ends, first) per step of a float64 schedule, h = 0
    where the step ends at sigma_next = 0 (those rows are written separately)."""
    s, s_next = sigmas[:-1], sigmas[1:]
    ends = s_next == 0
    h = torch.log(s / torch.where(ends, s, s_next))
    r = torch.cat([h.new_ones(1), h[:-1]]) / h
    first = torch.arange(len(s)) == 0
    return s, s_next, h, r, ends, first


def dpmpp_2m_coefficients(sigmas: torch.Tensor, alphas=None) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, k-diffusion's form) for the sigma schedule `sigmas` (last 0):
    h = log(sigma / sigma_next), r = h_prev / h,
    x <- (sigma_next / sigma) x - expm1(-h) ((1 + 1/(2r)) x0 - x0_prev / (2r)),
    first-order (x0 alone) at the first step and when sigma_next = 0; aux carries x0_prev.
    One row per step."""
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64)
    s, s_next, h, r, ends, first = _log_steps(sigmas)
    alphas = torch.ones_like(s) if alphas is None else torch.as_tensor(alphas, dtype=torch.float64)
    scale = -torch.expm1(-h)
    c_x0 = torch.where(ends, 1.0, torch.where(first, scale, scale * (1 + 1 / (2 * r))))
    c_aux = torch.where(ends | first, 0.0, -scale / (2 * r))
    return coef_rows(alphas, alphas * s, alphas, torch.where(ends, 0.0, s_next / s), c_x0, 0.0, c_aux, 0.0)


def dpmpp_2m_sde_coefficients(sigmas: torch.Tensor, eta: float = 1.0, s_noise: float = 1.0,
                              solver_type: str = "midpoint") -> torch.Tensor:
    """DPM-Solver++(2M) SDE (k-diffusion's sample_dpmpp_2m_sde) for `sigmas` (last 0): h = log(sigma /
    sigma_next), eta_h = eta h, r = h_prev / h, B = -expm1(-h - eta_h),
    x <- (sigma_next / sigma) e^(-eta_h) x + B x0 + C (x0 - x0_prev) + s_noise sigma_next sqrt(-expm1(-2 eta_h)) xi,
    C = B / (2 r) (midpoint) or (B / (-h - eta_h) + 1) / r (heun), C = 0 at the first step; x <- x0 when
    sigma_next = 0. aux carries x0_prev. One row per step."""
    if solver_type not in ("heun", "midpoint"):
        raise ValueError(f"solver_type must be 'heun' or 'midpoint', got {solver_type!r}")
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64)
    s, s_next, h, r, ends, first = _log_steps(sigmas)
    eta_h = eta * h
    b = -torch.expm1(-h - eta_h)
    c = torch.where(first, 0.0, b / (2 * r) if solver_type == "midpoint" else (b / (-h - eta_h) + 1) / r)
    noise = s_noise * s_next * (-torch.expm1(-2 * eta_h)).sqrt() if eta else torch.zeros_like(s)
    return coef_rows(1.0, s, 1.0, torch.where(ends, 0.0, s_next / s * torch.exp(-eta_h)), torch.where(ends, 1.0, b + c),
                     0.0, torch.where(ends, 0.0, -c), torch.where(ends, 0.0, noise))


def dpmpp_3m_sde_coefficients(sigmas: torch.Tensor, eta: float = 1.0,
                              s_noise: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """DPM-Solver++(3M) SDE (k-diffusion's sample_dpmpp_3m_sde) for `sigmas` (last 0): h = log(sigma /
    sigma_next), g = (1 + eta) h, phi_2 = expm1(-g) / g + 1, phi_3 = phi_2 / g - 1/2,
    x <- e^(-g) x - expm1(-g) x0 + phi_2 d1 - phi_3 d2 + s_noise sigma_next sqrt(-expm1(-2 eta h)) xi,
    d1, d2 its divided differences of x0 over the last three steps (r0 = h_prev / h, r1 = h_prev2 / h; phi_2 d1
    alone at the second step, neither at the first), expanded into weights on x0, x0_prev and x0_prev2; x <- x0
    when sigma_next = 0. Returns the rows, whose aux carries x0_prev2 (c_aux its weight), and the weights on
    x0_prev, one per step."""
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64)
    s, s_next, h, r0, ends, first = _log_steps(sigmas)
    r1 = torch.cat([h.new_ones(2), h[:-2]])[: len(h)] / h
    g = (1 + eta) * h
    base = -torch.expm1(-g)
    phi_2 = torch.expm1(-g) / g + 1
    phi_3 = phi_2 / g - 0.5
    q = r0 / (r0 + r1)
    p_, q_ = phi_2 * (1 + q) - phi_3 / (r0 + r1), -phi_2 * q + phi_3 / (r0 + r1)
    step = torch.arange(len(h))
    third, second = step >= 2, step == 1
    w0 = torch.where(third, base + p_ / r0, torch.where(second, base + phi_2 / r0, base))
    w1 = torch.where(third, -p_ / r0 + q_ / r1, torch.where(second, -phi_2 / r0, 0.0))
    w2 = torch.where(third, -q_ / r1, 0.0)
    noise = s_noise * s_next * (-torch.expm1(-2 * eta * h)).sqrt() if eta else torch.zeros_like(s)
    rows = coef_rows(1.0, s, 1.0, torch.where(ends, 0.0, torch.exp(-g)), torch.where(ends, 1.0, w0), 0.0,
                     torch.where(ends, 0.0, w2), torch.where(ends, 0.0, noise))
    return rows, torch.where(ends, 0.0, w1)


def dpmpp_sde_coefficients(sigmas: torch.Tensor, eta: float = 1.0, s_noise: float = 1.0, r: float = 0.5):
    """DPM-Solver++ SDE (k-diffusion's sample_dpmpp_sde), two stages per step from sigma to sigma_next through
    sigma_s = sigma^(1-r) sigma_next^r, each an ancestral step (sigma_down d, sigma_up u; c = d / sigma):
    x_2 = c1 x + (1 - c1) x0 + s_noise u1 xi1; x <- c2 x + (1 - c2)((1 - f) x0 + f x0_2) + s_noise u2 xi2, f = 1/(2r),
    x0_2 the model at (x_2, sigma_s); x <- x0 when sigma_next = 0. The second stage is written on x_2 with aux = x0
    (x = (x_2 - (1 - c1) x0 - s_noise u1 xi1) / c1): returns (first rows, second rows, the weight of xi1 in the
    second stage, sigma_s, sigma_up of each stage), the second rows' noise column the weight of xi2."""
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64)
    s, s_next = sigmas[:-1], sigmas[1:]
    ends = s_next == 0
    nxt = torch.where(ends, s, s_next)
    t, t_next = -s.log(), -nxt.log()
    mid = (-(t + (t_next - t) * r)).exp()

    def ancestral(a, b):
        if not eta:
            return b, torch.zeros_like(b)
        up = torch.minimum(b, eta * (b**2 * (a**2 - b**2) / a**2).sqrt())
        return (b**2 - up**2).sqrt(), up

    d1, u1 = ancestral(s, mid)
    d2, u2 = ancestral(s, nxt)
    c1, c2, f = d1 / s, d2 / s, 1 / (2 * r)
    first = coef_rows(1.0, s, 1.0, c1, 1 - c1, 0.0, 0.0, s_noise * u1)
    second = coef_rows(1.0, mid, 1.0, c2 / c1, (1 - c2) * f, 0.0, -c2 * (1 - c1) / c1 + (1 - c2) * (1 - f),
                       s_noise * u2)
    xi1 = -c2 / c1 * s_noise * u1
    second[ends] = coef_rows(1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0)  # unused: the step is x <- x0
    return first, second, torch.where(ends, 0.0, xi1), mid, torch.where(ends, 0.0, u1)


def consistency_coefficients(process: ConsistencyProcess, t, t_next=None, gamma: float = 1.0,
                             raw: bool = True) -> torch.Tensor:
    """Multistep consistency sampling (Song et al. 2023, Algorithm 1) from model time t to level t_next (NaN or
    None: the last step, x <- x0). x0 = f(x, t) = c_skip x + c_out F: with ``raw`` the model output is the network
    F, read through the v prediction's x0 = alpha x - sigma v with alpha = c_skip, sigma = -c_out (f(x, t_min) = x
    exactly); else the output is x0 itself. Then x <- a' x0 + s' (sqrt(1 - gamma^2) eps_hat + gamma z), (a', s') the
    process's renoise(t_next), eps_hat = (x - a x0) / s at t (gamma < 1: gamma-sampling, TCD-style). One row per
    step."""
    t = torch.as_tensor(t, dtype=torch.float64).reshape(-1)
    t_next = torch.full_like(t, float("nan")) if t_next is None else torch.as_tensor(
        t_next, dtype=torch.float64).reshape(-1).expand_as(t)
    last = torch.isnan(t_next)
    keep, std = process.renoise(t)
    keep_next, std_next = process.renoise(torch.where(last, t, t_next))
    c_x = torch.where(std > 0, std_next * math.sqrt(max(1 - gamma**2, 0.0)) / std, 0.0)
    c_x, c_x0 = torch.where(last, 0.0, c_x), torch.where(last, 1.0, keep_next - c_x * keep)
    noise = torch.where(last, 0.0, gamma * std_next)
    if raw:
        c_skip, c_out, _, _ = process.scalings(t)
        return coef_rows(c_skip, -c_out, 1.0, c_x, c_x0, 0.0, 0.0, noise)
    alpha, sigma = process.marginal(t)
    return coef_rows(alpha, sigma, 1.0, c_x, c_x0, 0.0, 0.0, noise)


def _velocity_rows(path: AffinePath, s, h, c_aux=0.0, eta=0.0, noise=0.0) -> torch.Tensor:
    """x <- x + h (u(s) + eta eps) + c_aux aux + noise xi on a flow path, u = alpha'(s) x0 + sigma'(s) eps the
    velocity at time s (read from a velocity model through the rows' alpha', sigma')."""
    alpha, sigma = path.marginal(s)
    d_alpha, d_sigma = path.derivative(s)
    return coef_rows(alpha, sigma, 1.0, 1.0, h * d_alpha, h * (d_sigma + eta), c_aux, noise, d_alpha, d_sigma)


def flow_euler_coefficients(path: AffinePath, t, t_next) -> torch.Tensor:
    """Euler on a flow path's ODE dx/dt = u(x, t): x <- x + (t_next - t) u(t)."""
    t, t_next = _time_pair(t, t_next)
    return _velocity_rows(path, t, t_next - t)


def flow_heun_correction_coefficients(path: AffinePath, t, t_next) -> torch.Tensor:
    """Heun's correction after an Euler step that kept its increment h u(t) in aux, h = t_next - t:
    x <- x - aux / 2 + (h / 2) u(t_next), so that x = x_t + h (u(t) + u(t_next)) / 2."""
    t, t_next = _time_pair(t, t_next)
    return _velocity_rows(path, t_next, (t_next - t) / 2, c_aux=-0.5)


def flow_midpoint_coefficients(path: AffinePath, t, t_next) -> tuple[torch.Tensor, torch.Tensor]:
    """The midpoint rule's two stages, h = t_next - t: x <- x + (h / 2) u(t) keeping the increment in aux, then
    x <- x - aux + h u(t + h / 2)."""
    t, t_next = _time_pair(t, t_next)
    h = t_next - t
    return _velocity_rows(path, t, h / 2), _velocity_rows(path, t + h / 2, h, c_aux=-1.0)


def flow_sde_coefficients(path: AffinePath, t, t_next, eta: float = 1.0) -> torch.Tensor:
    """Euler-Maruyama on the reverse-time SDE of a flow path with diffusion g(t)^2 = 2 eta sigma(t), which has the
    path's marginals: dx = (u - g^2 s / 2) dt + g dW, s = -eps / sigma the score, dt = t_next - t < 0:
    x <- x + dt (u + eta eps) + sqrt(2 eta sigma |dt|) xi."""
    t, t_next = _time_pair(t, t_next)
    h = t_next - t
    return _velocity_rows(path, t, h, eta=eta, noise=(2 * eta * path.marginal(t)[1] * -h).sqrt())


def _time_pair(t, t_next) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.as_tensor(t, dtype=torch.float64), torch.as_tensor(t_next, dtype=torch.float64)


# ---------------------------------------------------------------- the fused ops


def diffusion_step_(
    x: torch.Tensor,  # (B, ...) state, updated in place
    model_out: torch.Tensor,  # (B, ...) model output at x
    coef: torch.Tensor,  # (8,), (1, 8), (B, 8) rows, or a (R, 8) table read through index
    *,
    prediction: str = "eps",
    index: torch.Tensor | None = None,  # (1,) or (B,) int64 rows into coef, on x's device
    clip: float | None = None,
    clip_eps: bool = True,
    aux: torch.Tensor | None = None,  # (B, ...) float32
    aux_store: str | None = None,  # None, "x0", "eps" or "increment"
    noise: torch.Tensor | None = None,  # explicit xi instead of the stream
    seed=0,
    offset: int = 0,
    sample_seeds: torch.Tensor | None = None,  # (B,) int64: sample b's noise from its own seed
    sample_offset: int = 0,
    uncond_out: torch.Tensor | None = None,  # (B, ...) the unconditional model output, for guidance
    guidance: torch.Tensor | float | None = None,  # w: a number, or (1,) / (B,) float32 on x's device
    guidance_rescale: float = 0.0,  # phi in [0, 1]
    known: torch.Tensor | None = None,  # (B, ...) data kept where known_mask (inpainting)
    known_mask: torch.Tensor | None = None,  # bool, (B, ...) or one (...) mask for every sample
    known_keep: float = 1.0,
    known_std: float = 0.0,
) -> torch.Tensor:
    """One fused step x <- c_x x + c_x0 x0 + c_eps eps + c_aux aux + c_noise xi (see the module docstring).

    Classifier-free guidance: with ``uncond_out`` and ``guidance`` w the step reads the model output
    g = u + w (c - u) (c = ``model_out``, the conditional output; diffusers' convention: w = 1 is c, w = 0 is u),
    combined in the same pass; ``guidance_rescale`` phi (Lin et al. 2024, diffusers' ``guidance_rescale``) reads
    g (phi std(c_b) / std(g_b) + 1 - phi) instead, the standard deviations over each sample's elements.

    Inpainting by replacement: where ``known_mask`` is True the new state is known_keep known + known_std xi
    (the known data re-noised to the level the step lands on, xi the element's noise, drawn even when the step
    itself has none), elsewhere the step's.

    ``clip`` clamps x0 to [-clip, clip]; eps is then re-derived from the clamped x0 unless
    ``clip_eps`` is False (diffusers' DDIM with use_clipped_model_output=False).

    Noise: ``noise`` if given; else with ``sample_seeds`` sample b draws key sample_seeds[b]
    at stream positions ``sample_offset + j`` for its element j (so a sample's noise does not depend
    on the batch); else element i draws position ``offset + i``. Returns x.
    """
    check_state(x)
    check_like(model_out, "model_out", x)
    pred = prediction_code(prediction)
    coef = _check_coef(coef, x, index)
    if aux_store not in AUX_STORE:
        raise ValueError(f"aux_store must be None, 'x0', 'eps' or 'increment', got {aux_store!r}")
    if aux is not None:
        check_like(aux, "aux", x, dtypes=(torch.float32,))
    elif aux_store is not None:
        raise ValueError("aux_store needs an aux tensor")
    if noise is not None:
        check_like(noise, "noise", x, dtypes=(torch.float32,))
    clip = None if clip is None else positive_float(clip, "clip")
    seed, offset, state = rng_args(seed, offset, x)
    seeds = _check_sample_seeds(sample_seeds, x)
    if (uncond_out is None) != (guidance is None):
        raise ValueError("uncond_out and guidance go together (classifier-free guidance needs both)")
    if uncond_out is not None:
        check_like(uncond_out, "uncond_out", x)
        if not isinstance(guidance, torch.Tensor):
            if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not math.isfinite(guidance):
                raise ValueError(f"guidance must be a finite number or a float32 tensor, got {guidance!r}")
            guidance = torch.full((1,), float(guidance), device=x.device)
        uncond_out = uncond_out.to(model_out.dtype).contiguous()
    if known is not None:
        check_like(known, "known", x)
        known = known.to(torch.float32).contiguous()
    _diffusion_step(x=x, model_out=model_out.contiguous(), coef=coef, index=index, prediction=pred, clip=clip,
                    clip_eps=bool(clip_eps), aux=aux, aux_store=int(AUX_STORE[aux_store]),
                    noise=None if noise is None else noise.contiguous(), seed=seed, offset=offset, rng_state=state,
                    sample_seeds=seeds, sample_offset=int(sample_offset), uncond_out=uncond_out, guidance=guidance,
                    guidance_rescale=float(guidance_rescale), known=known, known_mask=known_mask,
                    known_keep=float(known_keep), known_std=float(known_std))
    return x


def langevin_correct_(
    x: torch.Tensor,
    model_out: torch.Tensor,
    coef: torch.Tensor,
    *,
    snr: float,
    prediction: str = "score",
    index: torch.Tensor | None = None,
    seed=0,
    offset: int = 0,
    sample_seeds: torch.Tensor | None = None,
    sample_offset: int = 0,
) -> torch.Tensor:
    """Langevin corrector with a per-sample step from a target signal-to-noise ratio:
    step_b = min(2 a_b (snr |xi_b| / |s_b|)^2, sigma_t^2), x <- x + step_b s + sqrt(2 step_b) xi
    (norms per sample, never over the batch; the cap keeps the step below p_t's variance and only
    binds in low dimension, where per-sample norms fluctuate).
    a_b is column 3 of the sample's row (see langevin_corrector_coefficients). Returns x."""
    check_state(x)
    check_like(model_out, "model_out", x)
    pred = prediction_code(prediction)
    coef = _check_coef(coef, x, index)
    snr = positive_float(snr, "snr")
    seed, offset, state = rng_args(seed, offset, x)
    seeds = _check_sample_seeds(sample_seeds, x)
    _langevin_correct(x=x, model_out=model_out.contiguous(), coef=coef, index=index, prediction=pred, snr=snr,
                      seed=seed, offset=offset, rng_state=state, sample_seeds=seeds,
                      sample_offset=int(sample_offset))
    return x


def noise_row(std: float, keep: float = 0.0, device=None) -> torch.Tensor:
    """The (1, COEF_WIDTH) row of x <- keep x + std xi (no model term)."""
    row = torch.zeros(1, COEF_WIDTH, dtype=torch.float32, device=device)
    row[0, [Coef.ALPHA, Coef.SIGMA, Coef.K]] = 1.0
    row[0, Coef.C_X] = keep
    row[0, Coef.C_NOISE] = std
    return row


def add_noise_(x: torch.Tensor, row: torch.Tensor, *, noise=None, seed: int = 0, offset: int = 0, rng_state=None,
               sample_seeds=None, sample_offset: int = 0, backend: str | None = None, **known) -> torch.Tensor:
    """x <- keep x + std xi, ``row = noise_row(std, keep)``, in one fused pass: a sampling loop's prior
    draw (keep = 0: x is only written) or Karras et al.'s churn (keep = 1); ``known`` arguments of the op
    (known, known_mask, known_keep, known_std) draw the known region of an inpainting run instead.

    Arguments as the op's, passed on unconverted (callers convert once, before their loop; the op
    itself still checks them). Returns x."""
    _diffusion_step(x=x, model_out=x, coef=row, noise=noise, seed=seed, offset=offset, rng_state=rng_state,
                    sample_seeds=sample_seeds, sample_offset=sample_offset, backend=backend, **known)
    return x


def _check_coef(coef, x, index) -> torch.Tensor:
    if not isinstance(coef, torch.Tensor) or coef.shape[-1:] != (COEF_WIDTH,) or coef.dim() > 2:
        raise ValueError(f"coef must be a tensor of shape ({COEF_WIDTH},) or (rows, {COEF_WIDTH}), got "
                         f"{getattr(coef, 'shape', coef)}")
    if coef.device != x.device:
        raise ValueError(f"coef must be on the device of x ({x.device}), got {coef.device}")
    if coef.dim() == 1:
        coef = coef.reshape(1, COEF_WIDTH)
    if coef.dtype != torch.float32 or not coef.is_contiguous():
        coef = coef.float().contiguous()
    batch = x.shape[0]
    if index is not None:
        if index.dtype != torch.int64 or index.device != x.device or index.numel() not in (1, batch):
            raise ValueError(f"index must be int64 with 1 or {batch} elements on the device of x")
    elif coef.shape[0] not in (1, batch):
        raise ValueError(f"coef must have 1 or {batch} rows (one per sample), got {coef.shape[0]}")
    return coef


def _check_sample_seeds(sample_seeds, x):
    if sample_seeds is None:
        return None
    if not isinstance(sample_seeds, torch.Tensor) or sample_seeds.dtype != torch.int64 or \
            sample_seeds.shape != (x.shape[0],):
        raise ValueError(f"per_sample_seeds must be an int64 tensor of shape ({x.shape[0]},)")
    return sample_seeds.to(x.device).contiguous()


def ddpm_step_(x, model_out, schedule: DDPMSchedule, t, t_prev, *, prediction="eps", clip=None,
               variance="fixed_small", seed=0, offset=0, sample_seeds=None, sample_offset=0) -> torch.Tensor:
    """One DDPM ancestral step (t and t_prev ints or (B,) tensors); see ddpm_coefficients."""
    coef = ddpm_coefficients(schedule, t, t_prev, variance).to(x.device)
    return diffusion_step_(x, model_out, coef, prediction=prediction, clip=clip, seed=seed, offset=offset,
                           sample_seeds=sample_seeds, sample_offset=sample_offset)


def ddim_step_(x, model_out, schedule: DDPMSchedule, t, t_prev, *, eta=0.0, prediction="eps", clip=None, seed=0,
               offset=0, sample_seeds=None, sample_offset=0) -> torch.Tensor:
    """One DDIM step with noise scale eta; see ddim_coefficients."""
    coef = ddim_coefficients(schedule, t, t_prev, eta).to(x.device)
    return diffusion_step_(x, model_out, coef, prediction=prediction, clip=clip, seed=seed, offset=offset,
                           sample_seeds=sample_seeds, sample_offset=sample_offset)


def euler_maruyama_step_(x, model_out, sde: SDE, t, t_next, *, prediction="score", seed=0, offset=0,
                         sample_seeds=None, sample_offset=0) -> torch.Tensor:
    """One reverse-SDE Euler-Maruyama step from t to t_next (floats or (B,) tensors)."""
    coef = euler_maruyama_coefficients(sde, t, t_next).to(x.device)
    return diffusion_step_(x, model_out, coef, prediction=prediction, seed=seed, offset=offset,
                           sample_seeds=sample_seeds, sample_offset=sample_offset)


def euler_ancestral_step_(x, model_out, sigma, sigma_next, *, eta=1.0, s_noise=1.0, prediction="eps", seed=0,
                          offset=0, sample_seeds=None, sample_offset=0) -> torch.Tensor:
    """One Euler-ancestral step in k-diffusion's parameterization x = x0 + sigma eps."""
    coef = euler_ancestral_coefficients(sigma, sigma_next, eta, s_noise).to(x.device)
    return diffusion_step_(x, model_out, coef, prediction=prediction, seed=seed, offset=offset,
                           sample_seeds=sample_seeds, sample_offset=sample_offset)
