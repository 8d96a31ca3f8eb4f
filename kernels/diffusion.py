"""Triton twins of kernels/diffusion.cu: the generic fused diffusion step and the
score-SDE Langevin corrector (coefficient rows as in fastgen/reference/diffusion.py)."""

from __future__ import annotations

import triton
import triton.language as tl

from ..core.constants import COEF_WIDTH, AuxStore, Coef, Prediction
from .langevin import CHAIN_BLOCK
from .rng import BLOCK, load_rng, normal_at

# fastgen.core.constants as Triton compile-time constants.
EPS, X0, V = tl.constexpr(int(Prediction.EPS)), tl.constexpr(int(Prediction.X0)), tl.constexpr(int(Prediction.V))
VELOCITY = tl.constexpr(int(Prediction.VELOCITY))
AUX_X0, AUX_INCREMENT = tl.constexpr(int(AuxStore.X0)), tl.constexpr(int(AuxStore.INCREMENT))
AUX_EPS = tl.constexpr(int(AuxStore.EPS))
WIDTH = tl.constexpr(COEF_WIDTH)
ALPHA, SIGMA, K, C_X = (tl.constexpr(int(c)) for c in (Coef.ALPHA, Coef.SIGMA, Coef.K, Coef.C_X))
C_X0, C_EPS, C_AUX, C_NOISE = (tl.constexpr(int(c)) for c in (Coef.C_X0, Coef.C_EPS, Coef.C_AUX, Coef.C_NOISE))
D_ALPHA, D_SIGMA = tl.constexpr(int(Coef.D_ALPHA)), tl.constexpr(int(Coef.D_SIGMA))


@triton.jit
def coef_rows(index_ptr, sample, mask, n_rows, COEF_PER_SAMPLE: tl.constexpr, INDEX_MODE: tl.constexpr):
    """(offset of each element's row in coef, whether its index was out of range): row 0 / its sample's row, or
    read through index (1: shared, 2: per sample), clamped to the n_rows rows so that no index reads outside coef.
    The kernels make the state of a sample with an out-of-range index NaN: an error flag that costs no host sync."""
    row = sample * 0
    if COEF_PER_SAMPLE:
        row = sample
    if INDEX_MODE == 1:
        row = tl.load(index_ptr + sample * 0, mask=mask, other=0)
    if INDEX_MODE == 2:
        row = tl.load(index_ptr + sample, mask=mask, other=0)
    return tl.minimum(tl.maximum(row, 0), n_rows - 1) * WIDTH, (row < 0) | (row >= n_rows)


@triton.jit
def convert(out, x, alpha, sigma, k, d_alpha, d_sigma, PREDICTION: tl.constexpr, clip, HAS_CLIP: tl.constexpr,
            CLIP_EPS: tl.constexpr):
    xm = k * x
    if PREDICTION == EPS:
        eps = out
        x0 = (xm - sigma * out) / alpha
    elif PREDICTION == X0:
        x0 = out
        eps = (xm - alpha * out) / sigma
    elif PREDICTION == V:
        x0 = alpha * xm - sigma * out
        eps = sigma * xm + alpha * out
    elif PREDICTION == VELOCITY:
        inv_det = 1.0 / (alpha * d_sigma - sigma * d_alpha)
        x0 = (d_sigma * xm - sigma * out) * inv_det
        eps = (alpha * out - d_alpha * xm) * inv_det
    else:
        eps = -sigma * out
        x0 = (xm + sigma * sigma * out) / alpha
    if HAS_CLIP:
        x0 = tl.minimum(tl.maximum(x0, -clip), clip)
        if CLIP_EPS:
            eps = (xm - alpha * x0) / sigma
    return x0, eps


@triton.jit
def term(c, v):
    return tl.where(c != 0.0, c * v, 0.0)


@triton.jit
def noise_of(noise_ptr, seeds_ptr, idx, sample, size, mask, seed, offset, sample_offset, NOISE_MODE: tl.constexpr):
    """0: the call's stream; 1: explicit noise; 2: per-sample seeds."""
    if NOISE_MODE == 1:
        xi = tl.load(noise_ptr + idx, mask=mask, other=0.0)
    elif NOISE_MODE == 2:
        seeds = tl.load(seeds_ptr + sample, mask=mask, other=0)
        xi = normal_at(seeds, sample_offset + (idx - sample * size))
    else:
        xi = normal_at(seed, offset + idx)
    return xi


@triton.jit
def step_elements(
    x_ptr, out_ptr, coef_ptr, n_rows, index_ptr, aux_ptr, noise_ptr, seeds_ptr, uncond_ptr, guidance_ptr, known_ptr,
    known_mask_ptr, idx, mask, sample, size, clip, seed, offset, sample_offset, scale, known_keep, known_std,
    PREDICTION: tl.constexpr, HAS_CLIP: tl.constexpr, CLIP_EPS: tl.constexpr, COEF_PER_SAMPLE: tl.constexpr,
    INDEX_MODE: tl.constexpr, HAS_AUX: tl.constexpr, AUX_STORE: tl.constexpr, NOISE_MODE: tl.constexpr,
    GUIDE_MODE: tl.constexpr, KNOWN_MODE: tl.constexpr,
):  # fmt: skip
    """The step on elements idx (of samples `sample`); the guided output is multiplied by `scale` (rescale)."""
    row, bad = coef_rows(index_ptr, sample, mask, n_rows, COEF_PER_SAMPLE, INDEX_MODE)
    alpha = tl.load(coef_ptr + row + ALPHA, mask=mask, other=1.0)
    sigma = tl.load(coef_ptr + row + SIGMA, mask=mask, other=1.0)
    k = tl.load(coef_ptr + row + K, mask=mask, other=1.0)
    c_x = tl.where(bad, float("nan"), tl.load(coef_ptr + row + C_X, mask=mask, other=0.0))
    c_x0 = tl.load(coef_ptr + row + C_X0, mask=mask, other=0.0)
    c_eps = tl.load(coef_ptr + row + C_EPS, mask=mask, other=0.0)
    c_aux = tl.load(coef_ptr + row + C_AUX, mask=mask, other=0.0)
    c_noise = tl.load(coef_ptr + row + C_NOISE, mask=mask, other=0.0)
    d_alpha = tl.load(coef_ptr + row + D_ALPHA, mask=mask, other=0.0)
    d_sigma = tl.load(coef_ptr + row + D_SIGMA, mask=mask, other=1.0)
    x = tl.load(x_ptr + idx, mask=mask, other=0.0).to(tl.float32)
    out = tl.load(out_ptr + idx, mask=mask, other=0.0).to(tl.float32)
    if GUIDE_MODE > 0:  # classifier-free guidance: (u + w (c - u)) scale
        out = guided(out_ptr, uncond_ptr, guidance_ptr, idx, sample, mask, GUIDE_MODE) * scale
    x0, eps = convert(out, x, alpha, sigma, k, d_alpha, d_sigma, PREDICTION, clip, HAS_CLIP, CLIP_EPS)
    xi = noise_of(noise_ptr, seeds_ptr, idx, sample, size, mask, seed, offset, sample_offset, NOISE_MODE)
    nxt = term(c_x, x) + term(c_x0, x0) + term(c_eps, eps) + term(c_noise, xi)
    if HAS_AUX:
        nxt += term(c_aux, tl.load(aux_ptr + idx, mask=mask, other=0.0))
        if AUX_STORE == AUX_X0:
            tl.store(aux_ptr + idx, x0, mask=mask)
        if AUX_STORE == AUX_INCREMENT:
            tl.store(aux_ptr + idx, nxt - x, mask=mask)
        if AUX_STORE == AUX_EPS:
            tl.store(aux_ptr + idx, eps, mask=mask)
    if KNOWN_MODE > 0:  # inpainting: the known region re-noised to the level the step lands on
        where = idx
        if KNOWN_MODE == 2:
            where = idx - sample * size
        keep = tl.load(known_mask_ptr + where, mask=mask, other=0) != 0
        nxt = tl.where(keep, known_keep * tl.load(known_ptr + idx, mask=mask, other=0.0) + known_std * xi, nxt)
    tl.store(x_ptr + idx, nxt.to(x_ptr.dtype.element_ty), mask=mask)


@triton.jit
def guided(out_ptr, uncond_ptr, guidance_ptr, idx, sample, mask, GUIDE_MODE: tl.constexpr):
    """u + w (c - u): w one value (GUIDE_MODE 1) or one per sample (2)."""
    c = tl.load(out_ptr + idx, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(uncond_ptr + idx, mask=mask, other=0.0).to(tl.float32)
    if GUIDE_MODE == 2:
        w = tl.load(guidance_ptr + sample, mask=mask, other=1.0)
    else:
        w = tl.load(guidance_ptr + sample * 0, mask=mask, other=1.0)
    return u + w * (c - u)


@triton.jit
def diffusion_step_kernel(
    x_ptr,  # (B * D,) state, in place
    out_ptr,  # (B * D,) model output
    coef_ptr,  # (rows, COEF_WIDTH) float32
    n_rows,  # rows of coef
    index_ptr,  # (1,) or (B,) int64 rows when INDEX_MODE > 0
    aux_ptr,  # (B * D,) float32 when HAS_AUX
    noise_ptr,  # (B * D,) float32 when NOISE_MODE == 1
    seeds_ptr,  # (B,) int64 when NOISE_MODE == 2
    uncond_ptr,  # (B * D,) unconditional model output when GUIDE_MODE > 0
    guidance_ptr,  # (1,) or (B,) float32 guidance scales when GUIDE_MODE is 1 or 2
    known_ptr,  # (B * D,) float32 known data when KNOWN_MODE > 0
    known_mask_ptr,  # (B * D,) (KNOWN_MODE 1) or (D,) (2) bool
    numel,
    size,  # D
    clip,
    seed,
    offset,
    sample_offset,
    rng_state_ptr,
    known_keep,
    known_std,
    PREDICTION: tl.constexpr,
    HAS_CLIP: tl.constexpr,
    CLIP_EPS: tl.constexpr,
    COEF_PER_SAMPLE: tl.constexpr,
    INDEX_MODE: tl.constexpr,
    HAS_AUX: tl.constexpr,
    AUX_STORE: tl.constexpr,
    NOISE_MODE: tl.constexpr,
    HAS_STATE: tl.constexpr,
    GUIDE_MODE: tl.constexpr,
    KNOWN_MODE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    idx = pid * BLOCK + tl.arange(0, BLOCK)
    mask = idx < numel
    seed, offset = load_rng(seed, offset, rng_state_ptr, HAS_STATE)
    step_elements(
        x_ptr, out_ptr, coef_ptr, n_rows, index_ptr, aux_ptr, noise_ptr, seeds_ptr, uncond_ptr, guidance_ptr,
        known_ptr, known_mask_ptr, idx, mask, idx // size, size, clip, seed, offset, sample_offset, 1.0, known_keep,
        known_std, PREDICTION, HAS_CLIP, CLIP_EPS, COEF_PER_SAMPLE, INDEX_MODE, HAS_AUX, AUX_STORE, NOISE_MODE,
        GUIDE_MODE, KNOWN_MODE,
    )  # fmt: skip


@triton.jit
def rescaled_step_kernel(
    x_ptr, out_ptr, coef_ptr, n_rows, index_ptr, aux_ptr, noise_ptr, seeds_ptr, uncond_ptr, guidance_ptr, known_ptr,
    known_mask_ptr, size, clip, seed, offset, sample_offset, rng_state_ptr, known_keep, known_std, rescale,
    PREDICTION: tl.constexpr, HAS_CLIP: tl.constexpr, CLIP_EPS: tl.constexpr, COEF_PER_SAMPLE: tl.constexpr,
    INDEX_MODE: tl.constexpr, HAS_AUX: tl.constexpr, AUX_STORE: tl.constexpr, NOISE_MODE: tl.constexpr,
    HAS_STATE: tl.constexpr, GUIDE_MODE: tl.constexpr, KNOWN_MODE: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """Guidance rescale: one program per sample; the sums of c, c^2, g, g^2 over the sample (shifted by the first
    element, for accuracy), then the step with g scaled by phi std(c) / std(g) + 1 - phi."""
    sample = tl.program_id(0).to(tl.int64)
    seed, offset = load_rng(seed, offset, rng_state_ptr, HAS_STATE)
    lanes = tl.arange(0, BLOCK)
    samples = sample + lanes * 0
    first = sample * size
    shift_c = tl.load(out_ptr + first + lanes * 0).to(tl.float32)
    shift_g = guided(out_ptr, uncond_ptr, guidance_ptr, first + lanes * 0, samples, lanes >= 0, GUIDE_MODE)
    sum_c = tl.zeros([BLOCK], dtype=tl.float32)
    sq_c = tl.zeros([BLOCK], dtype=tl.float32)
    sum_g = tl.zeros([BLOCK], dtype=tl.float32)
    sq_g = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, size, BLOCK):
        idx = first + start + lanes
        mask = start + lanes < size
        c = tl.where(mask, tl.load(out_ptr + idx, mask=mask, other=0.0).to(tl.float32) - shift_c, 0.0)
        g = tl.where(mask, guided(out_ptr, uncond_ptr, guidance_ptr, idx, samples, mask, GUIDE_MODE) - shift_g, 0.0)
        sum_c += c
        sq_c += c * c
        sum_g += g
        sq_g += g * g
    sc, sg = tl.sum(sum_c, axis=0), tl.sum(sum_g, axis=0)
    ss_c = tl.maximum(tl.sum(sq_c, axis=0) - sc * sc / size, 0.0)
    ss_g = tl.maximum(tl.sum(sq_g, axis=0) - sg * sg / size, 0.0)
    ratio = tl.where(ss_g > 0, tl.sqrt(ss_c / tl.where(ss_g > 0, ss_g, 1.0)), 1.0)
    scale = rescale * ratio + 1.0 - rescale
    for start in range(0, size, BLOCK):
        idx = first + start + lanes
        mask = start + lanes < size
        step_elements(
            x_ptr, out_ptr, coef_ptr, n_rows, index_ptr, aux_ptr, noise_ptr, seeds_ptr, uncond_ptr, guidance_ptr,
            known_ptr, known_mask_ptr, idx, mask, samples, size, clip, seed, offset, sample_offset, scale, known_keep,
            known_std, PREDICTION, HAS_CLIP, CLIP_EPS, COEF_PER_SAMPLE, INDEX_MODE, HAS_AUX, AUX_STORE, NOISE_MODE,
            GUIDE_MODE, KNOWN_MODE,
        )  # fmt: skip


def _modes(x, coef, index, noise, sample_seeds):
    index_mode = 0 if index is None else (1 if index.numel() == 1 else 2)
    noise_mode = 1 if noise is not None else (2 if sample_seeds is not None else 0)
    return dict(COEF_PER_SAMPLE=index is None and coef.shape[0] > 1, INDEX_MODE=index_mode, NOISE_MODE=noise_mode)


def diffusion_step_(
    x, model_out, coef, index, prediction, clip, clip_eps, aux, aux_store, noise, seed, offset, rng_state,
    sample_seeds, sample_offset, uncond_out=None, guidance=None, guidance_rescale=0.0, known=None, known_mask=None,
    known_keep=1.0, known_std=0.0,
):
    """fastgen_triton::diffusion_step_ (declared in fastgen/ops/diffusion.py)."""
    numel = x.numel()
    if numel == 0:
        return
    guide_mode = 0 if uncond_out is None else (1 if guidance.numel() == 1 else 2)
    known_mode = 0 if known is None else (1 if known_mask.numel() == numel else 2)
    pointers = (
        x, model_out, coef, coef.shape[0],
        index if index is not None else coef,
        aux if aux is not None else coef,
        noise if noise is not None else coef,
        sample_seeds if sample_seeds is not None else coef,
        uncond_out if uncond_out is not None else model_out,
        guidance if guidance is not None else coef,
        known if known is not None else coef,
        known_mask if known_mask is not None else coef,
    )  # fmt: skip
    constants = dict(
        PREDICTION=prediction, HAS_CLIP=clip is not None, CLIP_EPS=clip_eps, HAS_AUX=aux is not None,
        AUX_STORE=aux_store, HAS_STATE=rng_state is not None, GUIDE_MODE=guide_mode, KNOWN_MODE=known_mode,
        **_modes(x, coef, index, noise, sample_seeds),
    )  # fmt: skip
    state = rng_state if rng_state is not None else coef
    size = numel // x.shape[0]
    if guidance_rescale:
        rescaled_step_kernel[(x.shape[0],)](
            *pointers, size, clip or 0.0, seed, offset, sample_offset, state, known_keep, known_std,
            guidance_rescale, BLOCK=CHAIN_BLOCK, **constants,
        )  # fmt: skip
        return
    diffusion_step_kernel[(triton.cdiv(numel, BLOCK),)](
        *pointers, numel, size, clip or 0.0, seed, offset, sample_offset, state, known_keep, known_std, BLOCK=BLOCK,
        **constants,
    )  # fmt: skip


@triton.jit
def corrector_chunk(
    x_ptr, out_ptr, seeds_ptr, idx, mask, samples, size, alpha, sigma, k, d_alpha, d_sigma, seed, offset,
    sample_offset, PREDICTION: tl.constexpr, NOISE_MODE: tl.constexpr,
):  # fmt: skip
    """x, the score -eps / sigma and the noise at elements idx of one sample (both corrector passes read them)."""
    x = tl.load(x_ptr + idx, mask=mask, other=0.0).to(tl.float32)
    out = tl.load(out_ptr + idx, mask=mask, other=0.0).to(tl.float32)
    _, eps = convert(out, x, alpha, sigma, k, d_alpha, d_sigma, PREDICTION, 0.0, False, False)
    xi = noise_of(x_ptr, seeds_ptr, idx, samples, size, mask, seed, offset, sample_offset, NOISE_MODE)
    return x, -eps / sigma, xi


@triton.jit
def langevin_correct_kernel(
    x_ptr, out_ptr, coef_ptr, n_rows, index_ptr, seeds_ptr,
    size,  # D
    snr, seed, offset, sample_offset, rng_state_ptr,
    PREDICTION: tl.constexpr, COEF_PER_SAMPLE: tl.constexpr, INDEX_MODE: tl.constexpr, NOISE_MODE: tl.constexpr,
    HAS_STATE: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    sample = tl.program_id(0).to(tl.int64)
    seed, offset = load_rng(seed, offset, rng_state_ptr, HAS_STATE)
    lanes = tl.arange(0, BLOCK)
    samples = sample + lanes * 0
    row, bad = coef_rows(index_ptr, samples, lanes >= 0, n_rows, COEF_PER_SAMPLE, INDEX_MODE)  # every lane: its row
    alpha = tl.load(coef_ptr + row + ALPHA)
    sigma = tl.where(bad, float("nan"), tl.load(coef_ptr + row + SIGMA))
    k = tl.load(coef_ptr + row + K)
    a = tl.load(coef_ptr + row + C_X)
    d_alpha, d_sigma = tl.load(coef_ptr + row + D_ALPHA), tl.load(coef_ptr + row + D_SIGMA)
    first = sample * size
    score_sq = tl.zeros([BLOCK], dtype=tl.float32)
    noise_sq = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, size, BLOCK):
        idx = first + start + lanes
        mask = start + lanes < size
        _, s, xi = corrector_chunk(x_ptr, out_ptr, seeds_ptr, idx, mask, samples, size, alpha, sigma, k, d_alpha,
                                   d_sigma, seed, offset, sample_offset, PREDICTION, NOISE_MODE)
        s = tl.where(mask, s, 0.0)
        xi = tl.where(mask, xi, 0.0)
        score_sq += s * s
        noise_sq += xi * xi
    ratio = snr * tl.sqrt(tl.sum(noise_sq, axis=0)) / tl.sqrt(tl.sum(score_sq, axis=0))
    step = tl.minimum(2.0 * a * ratio * ratio, sigma * sigma)
    for start in range(0, size, BLOCK):
        idx = first + start + lanes
        mask = start + lanes < size
        x, s, xi = corrector_chunk(x_ptr, out_ptr, seeds_ptr, idx, mask, samples, size, alpha, sigma, k, d_alpha,
                                   d_sigma, seed, offset, sample_offset, PREDICTION, NOISE_MODE)
        nxt = x + step * s + tl.sqrt(2.0 * step) * xi
        tl.store(x_ptr + idx, nxt.to(x_ptr.dtype.element_ty), mask=mask)


def langevin_correct_(x, model_out, coef, index, prediction, snr, seed, offset, rng_state, sample_seeds, sample_offset):
    """fastgen_triton::langevin_correct_ (declared in fastgen/ops/diffusion.py)."""
    if x.numel() == 0:
        return
    batch = x.shape[0]
    modes = _modes(x, coef, index, None, sample_seeds)
    langevin_correct_kernel[(batch,)](
        x, model_out, coef, coef.shape[0],
        index if index is not None else coef,
        sample_seeds if sample_seeds is not None else coef,
        x.numel() // batch, snr, seed, offset, sample_offset,
        rng_state if rng_state is not None else coef,
        PREDICTION=prediction, HAS_STATE=rng_state is not None, BLOCK=CHAIN_BLOCK, **modes,
    )  # fmt: skip

