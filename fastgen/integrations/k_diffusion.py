"""k-diffusion's samplers (same signatures and conventions as k_diffusion.sampling) whose steps are fused ops.
``model(x, sigma * s_in, **extra_args)`` returns the denoised x0 for x = x0 + sigma eps; ``sigmas`` is
decreasing and ends in 0 to sample, or, as k-diffusion allows, increasing (noising, DDIM-style inversion) for the
samplers whose step is defined there (all but sample_dpmpp_2m_sde with eta > 0, whose noise k-diffusion makes NaN;
the ancestral ones then step to x0 and add sigma_next noise, as k-diffusion's min(sigma_next, nan) has them).

As k-diffusion: the model gets sigma as a contiguous (B,) tensor of x's dtype; the callback gets
``{"x", "i", "sigma", "sigma_hat", "denoised"}`` with sigma and sigma_hat 0-d tensors and x the state before the
step (a tensor of its own: keeping it is safe); ``disable`` turns off the progress bar (tqdm); a float64 x
stays float64 (its steps run the op's reference in float64; the fused kernels take float32, float16 and
bfloat16). Noise: ``noise_sampler(sigma, sigma_next)`` when given (k-diffusion's BrownianTreeNoiseSampler
included), else fastgen's counter-based stream under one seed drawn from torch's global RNG per call (where
k-diffusion draws torch.randn_like each step, or, for the SDE samplers, a Brownian tree).
"""

from __future__ import annotations

import itertools
import math

import torch

from ..core.checks import check_finite
from ..core.constants import AuxStore, Coef, Prediction
from ..core.rng import resolve_seed
from ..diffusion.processes import get_sigmas_karras
from ..ops import diffusion as ops
from ..ops.rng import philox_fill_
from ..reference import diffusion as reference

__all__ = ["CFGDenoiser", "get_sigmas_karras", "sample_dpm_2", "sample_dpm_2_ancestral", "sample_dpmpp_2m",
           "sample_dpmpp_2m_sde", "sample_dpmpp_2s_ancestral", "sample_dpmpp_3m_sde", "sample_dpmpp_sde",
           "sample_euler", "sample_euler_ancestral", "sample_heun", "sample_lms"]


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
        check_finite((x, "x"))
        if callback is not None and not callable(callback):
            raise TypeError(f"callback must be callable, got {type(callback).__name__}")
        self.sigmas = sigmas if isinstance(sigmas, torch.Tensor) else torch.as_tensor(sigmas, device=x.device)
        self.host = self.sigmas.detach().cpu()  # every level the loop derives is computed here, before the loop
        self.levels = [float(s) for s in self.host.tolist()]
        self.at = self.sigmas.unbind(0)  # the model's sigma at level i, as sigmas[i]
        decreasing = all(b < a for a, b in itertools.pairwise(self.levels))
        self.increasing = all(b > a for a, b in itertools.pairwise(self.levels))
        if len(self.levels) < 2 or not (decreasing or self.increasing) or min(self.levels) < 0:
            raise ValueError("sigmas must be a decreasing (sampling) or increasing (noising) sequence of at least 2 "
                             f"noise levels >= 0, got {self.levels}")
        self.model, self.extra = model, extra_args or {}
        self.callback, self.noise_sampler, self.disable = callback, noise_sampler, disable
        self.x = x.clone(memory_format=torch.contiguous_format)
        self.s_in = x.new_ones([x.shape[0]])
        self.exact = x.dtype == torch.float64  # float64: the reference step, in float64
        self.seed, self.offset = resolve_seed(), 0

    def steps(self):
        return _steps(len(self.levels) - 1, self.disable)

    def for_model(self, levels) -> tuple:
        """Host 0-d noise levels moved to the sigmas' device in one copy, one 0-d tensor each."""
        return torch.stack(list(levels)).to(self.sigmas.device).unbind(0)

    def rows(self, table: torch.Tensor) -> tuple:
        """A (steps, COEF_WIDTH) coefficient table moved to x's device in one copy, one row per step."""
        return table.to(self.x.device).split(1)

    def denoise(self, sigma: torch.Tensor) -> torch.Tensor:
        out = self.model(self.x, sigma * self.s_in, **self.extra)
        if not isinstance(out, torch.Tensor) or out.shape != self.x.shape:
            raise ValueError(f"model must return the denoised x of shape {tuple(self.x.shape)}")
        return out.to(self.x.dtype).contiguous()

    def report(self, i: int, sigma_hat: torch.Tensor, denoised: torch.Tensor) -> None:
        if self.callback is not None:
            self.callback({"x": self.x.clone(), "i": i, "sigma": self.at[i], "sigma_hat": sigma_hat,
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
            ops.diffusion_step_(self.x, denoised, row, prediction="x0", aux=aux,
                                aux_store=aux_store, **noise)
            return
        store = AuxStore.NONE if aux_store is None else AuxStore.X0 if aux_store == "x0" else AuxStore.INCREMENT
        reference.diffusion_step_(self.x, denoised, row.to(self.x.device, torch.float64), None, int(Prediction.X0),
                                  None, True, aux, int(store), noise.get("noise"), noise.get("seed", 0),
                                  noise.get("offset", 0), None, None, 0)

    def buffer(self) -> torch.Tensor:
        return torch.zeros(self.x.shape, device=self.x.device, dtype=torch.float64 if self.exact else torch.float32)


def _values(levels) -> torch.Tensor:
    """Host 0-d noise levels as one float64 vector (their exact values)."""
    return torch.stack(list(levels)).double()


def _churn(loop: _Loop, s_churn, s_tmin, s_tmax, s_noise):
    """Karras et al.'s stochastic churn at every step, computed before the loop: sigma_hat = sigma (1 + gamma) on
    the host as k-diffusion computes it, and where gamma > 0 the row x <- x + s_noise sqrt(sigma_hat^2 - sigma^2) xi
    with sigma_hat's value (None elsewhere)."""
    n = len(loop.levels) - 1
    gammas = [min(s_churn / n, 2**0.5 - 1) if s_tmin <= s <= s_tmax else 0.0 for s in loop.levels[:-1]]
    hats = [loop.host[i] * (g + 1) for i, g in enumerate(gammas)]
    churn = [(ops.noise_row(s_noise * math.sqrt((s * (g + 1)) ** 2 - s**2), keep=1.0, device=loop.x.device),
              s * (g + 1)) if g > 0 else None for s, g in zip(loop.levels, gammas, strict=False)]
    return hats, churn


def _denoise(loop: _Loop, i: int, sigma_hat: torch.Tensor, churn=None) -> torch.Tensor:
    """The churn's noise (churn: its row and sigma_hat's value), then the model at sigma_hat and the callback."""
    if churn is not None:
        loop.step(loop.x, churn[0], **loop.noise(i, loop.levels[i], churn[1]))
    denoised = loop.denoise(sigma_hat)
    loop.report(i, sigma_hat, denoised)
    return denoised


def _no_noise_when_increasing(loop: _Loop, eta: float) -> None:
    """The SDE's noise is defined for decreasing sigmas only (k-diffusion's step is NaN for increasing ones)."""
    if eta and loop.increasing:
        raise ValueError(f"eta must be 0 for increasing sigmas (the SDE has no noise term there), got {eta}")


def _ancestral(loop: _Loop, eta: float):
    """Per step, sigma_down and sigma_up (host 0-d tensors, as k-diffusion's get_ancestral_step computes them:
    correctly rounded operations only, so one vectorized pass gives its values) and sigma_down's values."""
    sigma, sigma_next = loop.host[:-1], loop.host[1:]
    if not eta:
        return sigma_next.unbind(0), torch.zeros_like(sigma_next).unbind(0), loop.levels[1:]
    candidate = eta * (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2) ** 0.5
    up = torch.where(candidate < sigma_next, candidate, sigma_next)  # Python's min: a NaN (an increasing step) loses
    down = (sigma_next**2 - up**2) ** 0.5
    return down.unbind(0), up.unbind(0), down.tolist()


@torch.no_grad()
def sample_euler(model, x, sigmas, extra_args=None, callback=None, disable=None, s_churn=0.0, s_tmin=0.0,
                 s_tmax=float("inf"), s_noise=1.0):
    """Euler (Karras et al. 2022, Algorithm 2 with churn): x <- x + (sigma_next - sigma_hat) (x - x0) / sigma_hat."""
    loop = _Loop(model, x, sigmas, extra_args, callback, disable)
    hats, churn = _churn(loop, s_churn, s_tmin, s_tmax, s_noise)
    rows = loop.rows(ops.euler_coefficients(_values(hats), loop.levels[1:]))
    model_hats = loop.for_model(hats)
    for i in loop.steps():
        loop.step(_denoise(loop, i, model_hats[i], churn[i]), rows[i])
    return loop.x


@torch.no_grad()
def sample_euler_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0,
                           noise_sampler=None):
    """Euler ancestral: step to sigma_down deterministically, then add s_noise sigma_up noise."""
    loop = _Loop(model, x, sigmas, extra_args, callback, disable, noise_sampler)
    rows = loop.rows(ops.euler_ancestral_coefficients(loop.levels[:-1], loop.levels[1:], eta, s_noise))
    for i in loop.steps():
        sigma, sigma_next = loop.levels[i], loop.levels[i + 1]
        denoised = _denoise(loop, i, loop.at[i])
        loop.step(denoised, rows[i], **(loop.noise(i, sigma, sigma_next) if sigma_next > 0 else {}))
    return loop.x


@torch.no_grad()
def sample_heun(model, x, sigmas, extra_args=None, callback=None, disable=None, s_churn=0.0, s_tmin=0.0,
                s_tmax=float("inf"), s_noise=1.0):
    """Heun (Karras et al. 2022, Algorithm 2): Euler to sigma_next, then average the two slopes (Euler at the end)."""
    loop = _Loop(model, x, sigmas, extra_args, callback, disable)
    hats, churn = _churn(loop, s_churn, s_tmin, s_tmax, s_noise)
    euler = loop.rows(ops.euler_coefficients(_values(hats), loop.levels[1:]))
    correction = loop.rows(ops.heun_correction_coefficients(_values(hats), loop.levels[1:]))
    model_hats = loop.for_model(hats)
    aux = loop.buffer()
    for i in loop.steps():
        denoised = _denoise(loop, i, model_hats[i], churn[i])
        if loop.levels[i + 1] == 0:
            loop.step(denoised, euler[i])
            continue
        loop.step(denoised, euler[i], aux=aux, aux_store="increment")
        loop.step(loop.denoise(loop.at[i + 1]), correction[i], aux=aux)
    return loop.x


@torch.no_grad()
def sample_dpm_2(model, x, sigmas, extra_args=None, callback=None, disable=None, s_churn=0.0, s_tmin=0.0,
                 s_tmax=float("inf"), s_noise=1.0):
    """k-diffusion's DPM-Solver-2: Euler to the log-midpoint sigma_mid, then the full step with the slope there
    (Euler at the end); two fused passes and two model calls per step."""
    loop = _Loop(model, x, sigmas, extra_args, callback, disable)
    hats, churn = _churn(loop, s_churn, s_tmin, s_tmax, s_noise)
    # sigma_mid as k-diffusion computes it (a placeholder where the step ends at 0: Euler there)
    mids = [h.log().lerp(loop.host[i + 1].log(), 0.5).exp() if loop.levels[i + 1] > 0 else h
            for i, h in enumerate(hats)]
    to_mid = loop.rows(ops.euler_coefficients(_values(hats), _values(mids)))
    correction = loop.rows(ops.dpm_2_correction_coefficients(_values(hats), _values(mids), loop.levels[1:]))
    to_zero = loop.rows(ops.euler_coefficients(_values(hats), 0.0))
    model_hats, model_mids = loop.for_model(hats), loop.for_model(mids)
    aux = loop.buffer()
    for i in loop.steps():
        denoised = _denoise(loop, i, model_hats[i], churn[i])
        if loop.levels[i + 1] == 0:
            loop.step(denoised, to_zero[i])
            continue
        loop.step(denoised, to_mid[i], aux=aux, aux_store="increment")
        loop.step(loop.denoise(model_mids[i]), correction[i], aux=aux)
    return loop.x


@torch.no_grad()
def sample_dpm_2_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0,
                           noise_sampler=None):
    """k-diffusion's DPM-Solver-2 ancestral: DPM-Solver-2 from sigma to the ancestral step's sigma_down (its
    midpoint model call at the log-midpoint), then s_noise sigma_up noise, in the correction's fused pass; Euler
    where sigma_down = 0."""
    loop = _Loop(model, x, sigmas, extra_args, callback, disable, noise_sampler)
    downs, ups, down_values = _ancestral(loop, eta)
    mids = [s.log().lerp(d.log(), 0.5).exp() if v > 0 else s
            for s, d, v in zip(loop.host, downs, down_values, strict=False)]
    levels = torch.tensor(loop.levels[:-1], dtype=torch.float64)
    to_mid = loop.rows(ops.euler_coefficients(levels, _values(mids)))
    table = ops.dpm_2_correction_coefficients(levels, _values(mids), _values(downs))
    table[:, Coef.C_NOISE] = s_noise * _values(ups)
    correction = loop.rows(table)
    to_zero = loop.rows(ops.euler_coefficients(levels, 0.0))
    model_mids = loop.for_model(mids)
    aux = loop.buffer()
    for i in loop.steps():
        denoised = _denoise(loop, i, loop.at[i])
        if down_values[i] == 0:
            loop.step(denoised, to_zero[i])
            continue
        loop.step(denoised, to_mid[i], aux=aux, aux_store="increment")
        loop.step(loop.denoise(model_mids[i]), correction[i], aux=aux,
                  **loop.noise(i, loop.levels[i], loop.levels[i + 1]))
    return loop.x


@torch.no_grad()
def sample_dpmpp_2s_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0,
                              noise_sampler=None):
    """k-diffusion's DPM-Solver++(2S) ancestral: DPM-Solver++(2S) from sigma to the ancestral step's sigma_down
    (model calls at sigma and at the log-midpoint), then s_noise sigma_up noise, in the second stage's fused pass;
    Euler where sigma_down = 0."""
    loop = _Loop(model, x, sigmas, extra_args, callback, disable, noise_sampler)
    downs, ups, down_values = _ancestral(loop, eta)
    mids, ends = [], []
    for s, d, v in zip(loop.host, downs, down_values, strict=False):
        if v > 0:  # as k-diffusion computes it: t = -log sigma, s = t + h / 2
            t, t_next = s.log().neg(), d.log().neg()
            mids.append((t + (t_next - t) / 2).neg().exp())
            ends.append(d)
        else:  # placeholders: Euler there
            mids.append(s)
            ends.append(s)
    noise = s_noise * _values(ups) * (torch.tensor(loop.levels[1:]) > 0)
    levels = torch.tensor(loop.levels[:-1], dtype=torch.float64)
    first, second = (loop.rows(t) for t in ops.dpmpp_2s_coefficients(levels, _values(mids), _values(ends), noise))
    table = ops.euler_coefficients(levels, 0.0)
    table[:, Coef.C_NOISE] = noise
    to_zero = loop.rows(table)
    model_mids = loop.for_model(mids)
    aux = loop.buffer()
    for i in loop.steps():
        denoised = _denoise(loop, i, loop.at[i])
        noisy = loop.noise(i, loop.levels[i], loop.levels[i + 1]) if loop.levels[i + 1] > 0 else {}
        if down_values[i] == 0:
            loop.step(denoised, to_zero[i], **noisy)
            continue
        loop.step(denoised, first[i], aux=aux, aux_store="increment")
        loop.step(loop.denoise(model_mids[i]), second[i], aux=aux, **noisy)
    return loop.x


def _lms_weights(levels: list, order: int) -> list:
    """Per step i, the weights of the last min(i + 1, order) slopes, newest first: the integral over
    [sigma_i, sigma_{i+1}] of the Lagrange basis polynomial on sigma_i, ..., sigma_{i-k+1} (k-diffusion's
    linear_multistep_coeff, which integrates it numerically; here exactly, in u = sigma - sigma_i)."""
    weights = []
    for i in range(len(levels) - 1):
        nodes = [levels[i - m] - levels[i] for m in range(min(i + 1, order))]
        row = []
        for j, node in enumerate(nodes):
            poly = [1.0]  # coefficients in u, lowest degree first
            for m, other in enumerate(nodes):
                if m != j:
                    poly = [((poly[d - 1] if d else 0.0) - other * (poly[d] if d < len(poly) else 0.0)) / (node - other)
                            for d in range(len(poly) + 1)]
            h = levels[i + 1] - levels[i]
            row.append(sum(c * h ** (d + 1) / (d + 1) for d, c in enumerate(poly)))
        weights.append(row)
    return weights


@torch.no_grad()
def sample_lms(model, x, sigmas, extra_args=None, callback=None, disable=None, order=4):
    """k-diffusion's linear multistep sampler: x <- x + sum_j w_ij d_{i-j} over the last `order` slopes d = (x - x0)
    / sigma (Lagrange weights, :func:`_lms_weights`). Per step one fused pass adds the newest term and keeps it
    (aux = w_i0 d_i, in a ring of `order` buffers); one matrix-vector pass over the ring adds the older ones."""
    if isinstance(order, bool) or not isinstance(order, int) or order < 1:
        raise ValueError(f"order must be an int >= 1, got {order!r}")
    loop = _Loop(model, x, sigmas, extra_args, callback, disable)
    weights = _lms_weights(loop.levels, order)
    table = ops.euler_coefficients(torch.tensor(loop.levels[:-1], dtype=torch.float64), 0.0)
    table[:, Coef.C_EPS] = torch.tensor([row[0] for row in weights], dtype=torch.float64)  # x <- x + w_i0 d_i
    rows = loop.rows(table)
    # the older terms as weights on the kept (scaled) slopes: w_ij / w_{i-j,0} on ring slot (i - j) % order
    older = [[0.0] * order for _ in weights]
    for i, row in enumerate(weights):
        for j in range(1, len(row)):
            older[i][(i - j) % order] = row[j] / weights[i - j][0]
    older = torch.tensor(older, dtype=torch.float64 if loop.exact else torch.float32, device=loop.x.device).unbind(0)
    ring = torch.zeros((order, loop.x.numel()), device=loop.x.device,
                       dtype=torch.float64 if loop.exact else torch.float32)
    flat = loop.x.view(-1)
    for i in loop.steps():
        loop.step(_denoise(loop, i, loop.at[i]), rows[i], aux=ring[i % order].view_as(loop.x), aux_store="increment")
        if i:
            if flat.dtype == ring.dtype:
                flat.addmv_(ring.t(), older[i])
            else:
                flat.add_(torch.mv(ring.t(), older[i]).to(flat.dtype))
    return loop.x


@torch.no_grad()
def sample_dpmpp_2m(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """DPM-Solver++(2M) (Lu et al. 2022): second-order multistep in log-sigma, x0 history in a fused buffer."""
    loop = _Loop(model, x, sigmas, extra_args, callback, disable)
    rows = loop.rows(ops.dpmpp_2m_coefficients(torch.tensor(loop.levels, dtype=torch.float64)))
    old = loop.buffer()
    for i in loop.steps():
        loop.step(_denoise(loop, i, loop.at[i]), rows[i], aux=old, aux_store="x0")
    return loop.x


@torch.no_grad()
def sample_dpmpp_2m_sde(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0,
                        noise_sampler=None, solver_type="midpoint"):
    """DPM-Solver++(2M) SDE (k-diffusion's): the 2M update with e^(-eta h) damping and
    s_noise sigma_next sqrt(1 - e^(-2 eta h)) noise per step, one fused pass each (see dpmpp_2m_sde_coefficients).
    Noise: noise_sampler (e.g. k-diffusion's BrownianTreeNoiseSampler) or fastgen's stream."""
    loop = _Loop(model, x, sigmas, extra_args, callback, disable, noise_sampler)
    _no_noise_when_increasing(loop, eta)
    table = ops.dpmpp_2m_sde_coefficients(torch.tensor(loop.levels, dtype=torch.float64), eta, s_noise, solver_type)
    noisy = (table[:, Coef.C_NOISE] != 0).tolist()
    rows = loop.rows(table)
    old = loop.buffer()
    for i in loop.steps():
        denoised = _denoise(loop, i, loop.at[i])
        loop.step(denoised, rows[i], aux=old, aux_store="x0",
                  **(loop.noise(i, loop.levels[i], loop.levels[i + 1]) if noisy[i] else {}))
    return loop.x


@torch.no_grad()
def sample_dpmpp_sde(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0,
                     noise_sampler=None, r=1 / 2):
    """k-diffusion's DPM-Solver++ SDE: per step two ancestral DPM-Solver++ stages, to sigma_s = sigma^(1-r)
    sigma_next^r and to sigma_next, the second on (1 - 1/(2r)) x0 + 1/(2r) x0(x_2, sigma_s) (see
    dpmpp_sde_coefficients); x <- x0 on the last step. Each stage one fused pass. Its two noises are increments of
    one Brownian path over sigma, as k-diffusion's BrownianTreeNoiseSampler draws them: noise_sampler(sigma,
    sigma_s) and noise_sampler(sigma, sigma_next) when a sampler is given, else xi1 from fastgen's stream and
    xi2 = sqrt(a) xi1 + sqrt(1 - a) zeta, a = (sigma - sigma_s) / (sigma - sigma_next), zeta from the stream
    (one fill of xi1 and one axpy per step beside the passes)."""
    if not isinstance(r, (int, float)) or isinstance(r, bool) or not 0 < r <= 1:
        raise ValueError(f"r must be a number in (0, 1], got {r!r}")
    loop = _Loop(model, x, sigmas, extra_args, callback, disable, noise_sampler)
    _no_noise_when_increasing(loop, eta)
    first, second, xi1_weight, mids, ups = ops.dpmpp_sde_coefficients(
        torch.tensor(loop.levels, dtype=torch.float64), eta, s_noise, r)
    levels = torch.tensor(loop.levels, dtype=torch.float64)
    share = ((levels[:-1] - mids) / (levels[:-1] - levels[1:])).clamp(min=0.0)  # xi2's variance from xi1
    xi1_total = (xi1_weight + second[:, Coef.C_NOISE] * share.sqrt()).tolist()
    noisy = (ups > 0).tolist()
    if noise_sampler is None:  # zeta's weight: sqrt(1 - a) of xi2's
        second[:, Coef.C_NOISE] = second[:, Coef.C_NOISE] * (1 - share).sqrt()
    else:
        xi1_total = xi1_weight.tolist()
    first, second = loop.rows(first), loop.rows(second)
    to_zero = loop.rows(ops.euler_coefficients(levels[:-1], 0.0))
    # the model's sigma_s and the noise sampler's times as k-diffusion computes them, in the sigmas' dtype
    host, host_next = loop.host[:-1], torch.where(loop.host[1:] > 0, loop.host[1:], loop.host[:-1])
    t, t_next = host.log().neg(), host_next.log().neg()
    mid_host = (t + (t_next - t) * r).neg().exp()
    model_mids = loop.for_model(mid_host.unbind(0))
    times = list(zip(t.neg().exp().tolist(), mid_host.tolist(), t_next.neg().exp().tolist(), strict=True))
    kept = loop.buffer()
    xi1 = torch.empty(loop.x.shape, device=loop.x.device, dtype=torch.float32)
    for i in loop.steps():
        denoised = _denoise(loop, i, loop.at[i])
        if loop.levels[i + 1] == 0:
            loop.step(denoised, to_zero[i])
            continue
        sigma, sigma_s, sigma_next = times[i]
        if noisy[i] and noise_sampler is not None:
            noise1 = loop.noise(i, sigma, sigma_s)["noise"]
        elif noisy[i]:
            args = loop.noise(i, sigma, sigma_s)
            noise1 = philox_fill_(xi1, args["seed"], args["offset"], normal=True)
            noise1 = noise1.double() if loop.exact else noise1
        loop.step(denoised, first[i], aux=kept, aux_store="x0", **({"noise": noise1} if noisy[i] else {}))
        denoised_2 = loop.denoise(model_mids[i])
        loop.step(denoised_2, second[i], aux=kept, **(loop.noise(i, sigma, sigma_next) if noisy[i] else {}))
        if noisy[i]:
            loop.x.add_(noise1.to(loop.x.dtype), alpha=xi1_total[i])
    return loop.x


@torch.no_grad()
def sample_dpmpp_3m_sde(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0,
                        noise_sampler=None):
    """k-diffusion's DPM-Solver++(3M) SDE: third-order multistep in log-sigma with e^(-(1 + eta) h) damping and
    s_noise sigma_next sqrt(1 - e^(-2 eta h)) noise (see dpmpp_3m_sde_coefficients). Per step one fused pass reads
    x0 from two steps back and leaves x0 in its buffer, and one kernel adds the previous step's x0 term."""
    loop = _Loop(model, x, sigmas, extra_args, callback, disable, noise_sampler)
    _no_noise_when_increasing(loop, eta)
    table, w1 = ops.dpmpp_3m_sde_coefficients(torch.tensor(loop.levels, dtype=torch.float64), eta, s_noise)
    noisy = (table[:, Coef.C_NOISE] != 0).tolist()
    uses_prev = (w1 != 0).tolist()
    rows = loop.rows(table)
    w1 = w1.to(loop.x.device, torch.float64 if loop.exact else torch.float32).unbind(0)
    kept = (loop.buffer(), loop.buffer())  # x0 of steps i - 2 and i - 1 alternate between them
    for i in loop.steps():
        denoised = _denoise(loop, i, loop.at[i])
        loop.step(denoised, rows[i], aux=kept[i % 2], aux_store="x0",
                  **(loop.noise(i, loop.levels[i], loop.levels[i + 1]) if noisy[i] else {}))
        if uses_prev[i]:
            loop.x.addcmul_(w1[i], kept[(i - 1) % 2].to(loop.x.dtype))
    return loop.x
