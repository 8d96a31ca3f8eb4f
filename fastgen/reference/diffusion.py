"""Plain-PyTorch specification of the diffusion step ops (same arguments as the
registered ops).

Sample b uses the coefficient row ``[alpha, sigma, k, c_x, c_x0, c_eps, c_aux, c_noise, alpha', sigma']``
(row b of ``coef``, row 0 when it has one row, or ``coef[index]``). The model
output is read in the model's space ``x_m = k x`` where ``x_m = alpha x0 + sigma eps``:

    prediction 0 (eps):   eps = out,            x0 = (x_m - sigma eps) / alpha
    prediction 1 (x0):    x0 = out,             eps = (x_m - alpha x0) / sigma
    prediction 2 (v):     x0 = alpha x_m - sigma v,  eps = sigma x_m + alpha v
    prediction 3 (score): eps = -sigma out,     x0 = (x_m + sigma^2 out) / alpha
    prediction 4 (velocity of a flow path, u = alpha' x0 + sigma' eps, det = alpha sigma' - sigma alpha'):
                          x0 = (sigma' x_m - sigma u) / det,  eps = (alpha u - alpha' x_m) / det

x0 is optionally clamped to [-clip, clip] (eps then re-derived from it when clip_eps), and

    x <- c_x x + c_x0 x0 + c_eps eps + c_aux aux + c_noise xi,

terms with a zero coefficient dropped (so an unset x may enter with c_x = 0). aux_store 1 keeps x0 in aux, 2 keeps the
increment x_new - x, 3 keeps eps. xi is ``noise`` if given; else with ``sample_seeds`` sample b
draws key sample_seeds[b] at positions sample_offset + j (j its element index);
else element i draws position offset + i. Under classifier-free guidance the model output read is g = u + w (c - u), c
the conditional output, u ``uncond_out`` and w ``guidance`` (one value, or one per sample); with guidance_rescale
phi > 0 it is g (phi std(c_b) / std(g_b) + 1 - phi), the standard deviations over each sample's elements (Lin et al.
2024; a sample whose g is constant is not rescaled). Inpainting: where ``known_mask`` is set (per element, or one
mask for every sample) the new state is known_keep known + known_std xi instead, xi the element's noise.
"""

from __future__ import annotations

import math

import torch

from ..core.constants import COEF_WIDTH, AuxStore, Coef, Prediction
from .rng import counters, normal_at


def rows(x: torch.Tensor, coef: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
    """The (B, COEF_WIDTH) coefficient rows of the batch, shaped to broadcast: one (B, 1, ..., 1) tensor per Coef
    column."""
    batch = x.shape[0]
    if index is not None:
        r = coef[index.reshape(-1)].expand(batch, COEF_WIDTH) if index.numel() == 1 else coef[index]
    else:
        r = coef.expand(batch, COEF_WIDTH)
    return r.reshape((batch, COEF_WIDTH) + (1,) * (x.dim() - 1)).unbind(1)


def convert(out, x, row, prediction: int, clip, clip_eps: bool = True):
    """(x0, eps) from the model output; ``row`` the columns of :func:`rows`."""
    alpha, sigma, k, d_alpha, d_sigma = (row[c] for c in (Coef.ALPHA, Coef.SIGMA, Coef.K, Coef.D_ALPHA, Coef.D_SIGMA))
    xm = k * x
    if prediction == Prediction.EPS:
        eps, x0 = out, (xm - sigma * out) / alpha
    elif prediction == Prediction.X0:
        x0, eps = out, (xm - alpha * out) / sigma
    elif prediction == Prediction.V:
        x0, eps = alpha * xm - sigma * out, sigma * xm + alpha * out
    elif prediction == Prediction.VELOCITY:
        det = alpha * d_sigma - sigma * d_alpha
        x0, eps = (d_sigma * xm - sigma * out) / det, (alpha * out - d_alpha * xm) / det
    else:
        eps = -sigma * out
        x0 = (xm + sigma * sigma * out) / alpha
    if clip is not None:
        x0 = x0.clamp(-clip, clip)
        if clip_eps:
            eps = (xm - alpha * x0) / sigma
    return x0, eps


def guided(c, u, w, rescale: float = 0.0):
    """u + w (c - u) per sample (w: one value or one per sample), times phi std(c_b) / std(g_b) + 1 - phi when
    rescale = phi > 0 (std over each sample's elements; 1 where std(g_b) = 0)."""
    g = u + w.reshape((-1,) + (1,) * (c.dim() - 1)) * (c - u)
    if rescale:
        dims = tuple(range(1, c.dim()))
        if math.prod(c.shape[1:]) > 1:
            std_c, std_g = c.double().std(dims, keepdim=True), g.double().std(dims, keepdim=True)
            ratio = torch.where(std_g > 0, std_c / std_g, torch.ones_like(std_g))
        else:  # one element per sample: no spread to rescale by (std would be NaN)
            ratio = torch.ones((c.shape[0],) + (1,) * (c.dim() - 1), dtype=torch.float64, device=c.device)
        g = (g.double() * (rescale * ratio + 1 - rescale)).to(g.dtype)
    return g


def _term(c, v):
    return torch.where(c != 0, c * v, torch.zeros_like(v))


def normals(x, noise, seed, offset, rng_state, sample_seeds, sample_offset) -> torch.Tensor:
    if noise is not None:
        return noise
    if sample_seeds is not None:
        size = x[0].numel() if x.shape[0] else 0
        n = torch.arange(size, dtype=torch.int64, device=x.device) + sample_offset
        return torch.stack([normal_at(s, n) for s in sample_seeds.unbind()]).view(x.shape) if x.numel() else \
            torch.empty(x.shape, device=x.device)
    state_seed, n = counters(x.numel(), offset, x.device, rng_state)
    return normal_at(seed if state_seed is None else state_seed, n).view(x.shape)


def diffusion_step_(x, model_out, coef, index, prediction, clip, clip_eps, aux, aux_store, noise, seed, offset,
                    rng_state, sample_seeds, sample_offset, uncond_out=None, guidance=None, guidance_rescale=0.0,
                    known=None, known_mask=None, known_keep=1.0, known_std=0.0):
    """x <- c_x x + c_x0 x0 + c_eps eps + c_aux aux + c_noise xi (see the module docstring), the model output
    guided(c, u, w, phi) under classifier-free guidance, and known_keep known + known_std xi where known_mask."""
    if x.numel() == 0:
        return
    row = rows(x, coef, index)
    c_x, c_x0, c_eps, c_aux, c_noise = (row[c] for c in (Coef.C_X, Coef.C_X0, Coef.C_EPS, Coef.C_AUX, Coef.C_NOISE))
    work = torch.float64 if x.dtype == torch.float64 else torch.float32  # (float64: k_sampling's float64 path)
    xf = x.to(work)
    out = model_out.to(work)
    if uncond_out is not None:
        out = guided(out, uncond_out.to(work), guidance.to(work), guidance_rescale)
    x0, eps = convert(out, xf, row, prediction, clip, clip_eps)
    xi = normals(x, noise, seed, offset, rng_state, sample_seeds, sample_offset).to(work)
    nxt = _term(c_x, xf) + _term(c_x0, x0) + _term(c_eps, eps) + _term(c_noise, xi)
    if aux is not None:
        nxt = nxt + _term(c_aux, aux)
        if aux_store == AuxStore.X0:
            aux.copy_(x0)
        elif aux_store == AuxStore.INCREMENT:
            aux.copy_(nxt - xf)
        elif aux_store == AuxStore.EPS:
            aux.copy_(eps)
    if known is not None:
        nxt = torch.where(known_mask, known_keep * known.to(work) + known_std * xi, nxt)
    x.copy_(nxt)


def langevin_correct_(x, model_out, coef, index, prediction, snr, seed, offset, rng_state, sample_seeds,
                      sample_offset):
    """Per sample b: s = score, step = min(2 a_b (snr |xi_b| / |s_b|)^2, sigma^2),
    x <- x + step s + sqrt(2 step) xi, with a_b column 3 of the sample's row. The cap keeps the
    step below the variance of p_t (at least sigma^2); it binds only where per-sample norms
    fluctuate (low dimension)."""
    if x.numel() == 0:
        return
    row = rows(x, coef, index)
    sigma, a = row[Coef.SIGMA], row[Coef.C_X]
    xf = x.float()
    _, eps = convert(model_out.float(), xf, row, prediction, None)
    score = -eps / sigma
    xi = normals(x, None, seed, offset, rng_state, sample_seeds, sample_offset)
    dims = tuple(range(1, x.dim()))
    ratio = snr * xi.double().square().sum(dims, keepdim=True).sqrt() / score.double().square().sum(
        dims, keepdim=True).sqrt()
    step = torch.minimum(2 * a * ratio.square(), sigma.double().square()).float()
    x.copy_(xf + step * score + torch.sqrt(2 * step) * xi)
