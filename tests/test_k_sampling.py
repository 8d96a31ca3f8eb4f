"""fastgen.k_sampling against k-diffusion's algorithms written out in plain torch
(transcribed from k_diffusion/sampling.py), on the same noise; and on an exact target."""

import math

import pytest
import torch

from fastgen import k_sampling
from fastgen.metrics import mode_weights
from fastgen.targets import eight_gaussians


def denoiser(x, sigma):
    sigma = sigma.reshape(-1, *[1] * (x.dim() - 1))
    return torch.tanh(x) * (1 / (1 + sigma**2)) + 0.1 * x


def to_d(x, sigma, denoised):
    return (x - denoised) / sigma


def ref_euler(model, x, sigmas):
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * x.new_ones(x.shape[0]))
        x = x + to_d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
    return x


def ref_euler_ancestral(model, x, sigmas, noise_sampler, eta=1.0):
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * x.new_ones(x.shape[0]))
        s, sn = sigmas[i], sigmas[i + 1]
        up = min(sn, eta * (sn**2 * (s**2 - sn**2) / s**2) ** 0.5)
        down = (sn**2 - up**2) ** 0.5
        x = x + to_d(x, s, denoised) * (down - s)
        if sn > 0:
            x = x + noise_sampler(s, sn) * up
    return x


def ref_heun(model, x, sigmas):
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * x.new_ones(x.shape[0]))
        d = to_d(x, sigmas[i], denoised)
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == 0:
            x = x + d * dt
        else:
            x2 = x + d * dt
            d2 = to_d(x2, sigmas[i + 1], model(x2, sigmas[i + 1] * x.new_ones(x.shape[0])))
            x = x + (d + d2) / 2 * dt
    return x


def ref_dpmpp_2m(model, x, sigmas):
    t_fn = lambda s: -math.log(s)  # noqa: E731
    old = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * x.new_ones(x.shape[0]))
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            t, t_next = t_fn(sigmas[i]), t_fn(sigmas[i + 1])
            h = t_next - t
            if old is None:
                x = (sigmas[i + 1] / sigmas[i]) * x - math.expm1(-h) * denoised
            else:
                r = (t - t_fn(sigmas[i - 1])) / h
                x = (sigmas[i + 1] / sigmas[i]) * x - math.expm1(-h) * ((1 + 1 / (2 * r)) * denoised - old / (2 * r))
        old = denoised
    return x


@pytest.mark.parametrize("name", ["euler", "heun", "dpmpp_2m", "euler_ancestral"])
def test_matches_k_diffusion(name):
    sigmas = k_sampling.get_sigmas_karras(12, 0.05, 10.0)
    levels = sigmas.tolist()
    x = torch.randn(8, 3, 4, generator=torch.Generator().manual_seed(0)) * levels[0]
    if name == "euler_ancestral":
        noises = {}

        def noise_sampler(s, sn):
            key = round(float(s), 6)
            if key not in noises:
                noises[key] = torch.randn(x.shape, generator=torch.Generator().manual_seed(len(noises)))
            return noises[key]

        got = k_sampling.sample_euler_ancestral(denoiser, x, sigmas, noise_sampler=noise_sampler)
        want = ref_euler_ancestral(denoiser, x, levels, noise_sampler)
    else:
        got = getattr(k_sampling, f"sample_{name}")(denoiser, x, sigmas)
        want = {"euler": ref_euler, "heun": ref_heun, "dpmpp_2m": ref_dpmpp_2m}[name](denoiser, x, levels)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_callback_and_churn():
    sigmas = k_sampling.get_sigmas_karras(5, 0.1, 5.0)
    seen = []
    x = k_sampling.sample_euler(denoiser, torch.randn(4, 2) * 5, sigmas, callback=lambda d: seen.append(d["i"]),
                                s_churn=1.0)
    assert seen == [0, 1, 2, 3, 4] and torch.isfinite(x).all()


@pytest.mark.parametrize("name", ["euler_ancestral", "dpmpp_2m", "heun"])
def test_exact_denoiser_reaches_the_target(name):
    gmm = eight_gaussians()

    def exact(x, sigma):  # E[x0 | x] for x = x0 + sigma eps (Tweedie)
        return (x.double() + sigma.double()[:, None] ** 2 * gmm.noised_score(x.double(), None, sigma)).float()

    sigmas = k_sampling.get_sigmas_karras(60, 0.01, 40.0)
    x = torch.randn(8000, 2, generator=torch.Generator().manual_seed(0)) * 40.0
    torch.manual_seed(0)
    out = getattr(k_sampling, f"sample_{name}")(exact, x, sigmas)
    assert (mode_weights(out, gmm) - 1 / 8).abs().max() < 0.02
