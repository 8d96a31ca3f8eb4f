"""fastgen.k_sampling against k-diffusion's algorithms written out in plain torch
(transcribed from k_diffusion/sampling.py), on the same noise; and on an exact target."""

import math

import pytest
import torch

from fastgen.integrations import k_diffusion as k_sampling
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


@pytest.mark.parametrize("name", ["euler_ancestral", "dpmpp_2m", "heun", "dpm_2_ancestral", "dpmpp_2s_ancestral",
                                  "lms", "dpmpp_sde", "dpmpp_3m_sde"])
def test_exact_denoiser_reaches_the_target(name):
    gmm = eight_gaussians()

    def exact(x, sigma):  # E[x0 | x] for x = x0 + sigma eps (Tweedie)
        return (x.double() + sigma.double()[:, None] ** 2 * gmm.noised_score(x.double(), None, sigma)).float()

    sigmas = k_sampling.get_sigmas_karras(60, 0.01, 40.0)
    x = torch.randn(8000, 2, generator=torch.Generator().manual_seed(0)) * 40.0
    torch.manual_seed(0)
    out = getattr(k_sampling, f"sample_{name}")(exact, x, sigmas)
    assert (mode_weights(out, gmm) - 1 / 8).abs().max() < 0.02


# ---- against k-diffusion's own sampling.py (vendored, tests/peer/k_diffusion), on the same inputs and noise

from peer.k_diffusion import sampling as K  # noqa: E402

PAIRS = [("sample_euler", {}), ("sample_euler", {"s_churn": 0.0}), ("sample_heun", {}), ("sample_dpm_2", {}),
         ("sample_dpmpp_2m", {}),
         ("sample_euler_ancestral", {"noise": True}), ("sample_dpmpp_2m_sde", {"noise": True}),
         ("sample_dpm_2_ancestral", {"noise": True}),
         ("sample_dpm_2_ancestral", {"noise": True, "eta": 0.5, "s_noise": 1.1}),
         ("sample_dpm_2_ancestral", {"eta": 0.0}),
         ("sample_dpmpp_2s_ancestral", {"noise": True}),
         ("sample_dpmpp_2s_ancestral", {"noise": True, "eta": 0.5, "s_noise": 1.1}),
         ("sample_dpmpp_2s_ancestral", {"noise": True, "eta": 3.0}),
         ("sample_lms", {}), ("sample_lms", {"order": 2}), ("sample_lms", {"order": 6}),
         ("sample_dpmpp_2m_sde", {"noise": True, "solver_type": "heun", "eta": 0.5}),
         ("sample_dpmpp_sde", {"noise": True}), ("sample_dpmpp_sde", {"noise": True, "eta": 0.5, "s_noise": 1.1}),
         ("sample_dpmpp_sde", {"noise": True, "r": 0.3}), ("sample_dpmpp_sde", {"eta": 0.0}),
         ("sample_dpmpp_3m_sde", {"noise": True}), ("sample_dpmpp_3m_sde", {"noise": True, "eta": 0.5}),
         ("sample_dpmpp_3m_sde", {"eta": 0.0})]


def recording(log):
    def model(x, sigma):
        log.append((x.clone(), sigma.clone(), sigma.dtype, sigma.is_contiguous(), tuple(sigma.shape)))
        return denoiser(x, sigma)
    return model


def run_both(name, options, dtype):
    options = dict(options)
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(dtype)
    sigmas = K.get_sigmas_karras(8, 0.05, 10.0)
    results = {}
    for who, module in (("k", K), ("fastgen", k_sampling)):
        kwargs = {k: v for k, v in options.items() if k != "noise"}
        if options.get("noise"):
            kwargs["noise_sampler"] = K.BrownianTreeNoiseSampler(x, 0.05, 10.0, seed=3)
        calls, seen = [], []
        out = getattr(module, name)(recording(calls), x, sigmas, callback=seen.append, disable=True, **kwargs)
        results[who] = (out, calls, seen)
    return results


@pytest.mark.parametrize("name,options", PAIRS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(PAIRS)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_matches_k_diffusion_and_its_conventions(name, options, dtype):
    """Same result; the model gets sigma as k-diffusion passes it (a contiguous (B,) tensor of x's dtype, same
    values); the callback gets the same keys, sigma and sigma_hat as 0-d tensors, and x as the state before each
    step, a tensor of its own (kept, it still holds that step's state); float64 stays float64."""
    results = run_both(name, options, dtype)
    (k_out, k_calls, k_seen), (f_out, f_calls, f_seen) = results["k"], results["fastgen"]
    # float64: k-diffusion computes its step sizes from the float32 sigmas in float32 (fastgen: in float64), so
    # the two agree to float32's rounding of the coefficients, not to float64's.
    tol = dict(rtol=1e-6, atol=1e-7) if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-5)
    if name == "sample_dpmpp_sde" and dtype == torch.float64:  # its second stage recovers x from x_2 through
        tol = dict(rtol=2e-5, atol=1e-6)  # 1 / c1, which scales float32's rounding of k-diffusion's steps
    assert f_out.dtype == k_out.dtype == dtype
    torch.testing.assert_close(f_out, k_out, **tol)
    assert len(f_calls) == len(k_calls)
    for (fx, fs, fdt, fc, fshape), (kx, ks, kdt, kc, kshape) in zip(f_calls, k_calls, strict=True):
        assert (fdt, fc, fshape) == (kdt, kc, kshape) == (dtype, True, (4,))
        torch.testing.assert_close(fs, ks, rtol=0, atol=0)
        torch.testing.assert_close(fx, kx, **tol)
    assert len(f_seen) == len(k_seen)
    for f, k in zip(f_seen, k_seen, strict=True):
        assert set(f) == set(k) and f["i"] == k["i"]
        for key in ("sigma", "sigma_hat"):
            assert isinstance(f[key], torch.Tensor) and f[key].dim() == 0
            torch.testing.assert_close(f[key].double(), k[key].double(), rtol=1e-7, atol=0)
        torch.testing.assert_close(f["x"], k["x"], **tol)  # each kept x is its own step's state
        torch.testing.assert_close(f["denoised"], k["denoised"], **tol)


def test_disable_controls_the_progress_bar(capsys):
    x = torch.randn(2, 3)
    sigmas = K.get_sigmas_karras(5, 0.1, 5.0)
    k_sampling.sample_euler(denoiser, x, sigmas, disable=True)
    assert "5/5" not in capsys.readouterr().err
    k_sampling.sample_euler(denoiser, x, sigmas, disable=False)
    assert "5/5" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["sample_euler_ancestral", "sample_dpm_2_ancestral", "sample_dpmpp_2s_ancestral",
                                  "sample_dpmpp_2m_sde"])
def test_sigmas_that_stop_above_zero(name):
    """A schedule that ends above 0 (a partial run) keeps its last step's noise, as k-diffusion's does."""
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sigmas = K.get_sigmas_karras(6, 0.3, 10.0)[:-1]
    noise = K.BrownianTreeNoiseSampler(x, 0.3, 10.0, seed=3)
    want = getattr(K, name)(denoiser, x, sigmas, disable=True, noise_sampler=noise)
    got = getattr(k_sampling, name)(denoiser, x, sigmas, disable=True,
                                    noise_sampler=K.BrownianTreeNoiseSampler(x, 0.3, 10.0, seed=3))
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


def test_lms_order_must_be_a_positive_int():
    x = torch.randn(2, 3)
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="order must be an int >= 1"):
            k_sampling.sample_lms(denoiser, x, K.get_sigmas_karras(4, 0.1, 5.0), order=bad)


def test_nan_sigmas_are_refused():
    """A NaN level passed the decreasing check (every comparison with NaN is false) and returned all NaN."""
    x = torch.randn(4, 2)
    with pytest.raises(ValueError, match="sigmas must be a decreasing"):
        k_sampling.sample_euler(denoiser, x, torch.tensor([1.0, float("nan"), 0.0]), disable=True)


NOISY = ["sample_euler_ancestral", "sample_dpm_2_ancestral", "sample_dpmpp_2s_ancestral", "sample_dpmpp_2m_sde"]
INCREASING = [(name, None) for name in ("sample_euler", "sample_heun", "sample_dpm_2", "sample_lms", "sample_dpmpp_2m")]
INCREASING += [(name, eta) for name in NOISY for eta in (0.0, 1.0)]


@pytest.mark.parametrize("name,eta", INCREASING)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_increasing_sigmas_as_k_diffusion_takes_them(name, eta, dtype):
    """Noising / inversion schedules (increasing sigmas), refused before, give k-diffusion's result: the ODE
    samplers step backwards; the ancestral ones with eta > 0 go to x0 and add sigma_next noise (k-diffusion's
    min(sigma_next, nan)); the 2M SDE's noise is NaN in k-diffusion for such steps, so eta > 0 is refused there."""
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), dtype=dtype)
    sigmas = K.get_sigmas_karras(6, 0.3, 10.0)[:-1].flip(0)
    kwargs = {} if eta is None else {"eta": eta}
    if name == "sample_dpmpp_2m_sde" and eta:
        with pytest.raises(ValueError, match="eta must be 0 for increasing sigmas"):
            k_sampling.sample_dpmpp_2m_sde(denoiser, x, sigmas, disable=True, **kwargs)
        return
    noises = {}

    def noise_sampler(s, sn):
        key = round(float(s), 6)
        if key not in noises:
            noises[key] = torch.randn(x.shape, generator=torch.Generator().manual_seed(len(noises)), dtype=dtype)
        return noises[key]

    if eta:
        kwargs["noise_sampler"] = noise_sampler
    want = getattr(K, name)(denoiser, x, sigmas, disable=True, **kwargs)
    got = getattr(k_sampling, name)(denoiser, x, sigmas, disable=True, **kwargs)
    assert torch.isfinite(want).all()
    tol = dict(rtol=1e-6, atol=1e-7) if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(got, want, **tol)


def test_sigmas_neither_increasing_nor_decreasing_are_refused():
    with pytest.raises(ValueError, match="decreasing .* or increasing"):
        k_sampling.sample_euler(denoiser, torch.randn(4, 2), torch.tensor([1.0, 2.0, 0.5]), disable=True)


def test_dpmpp_sde_stream_noise_is_one_brownian_path():
    """Without a noise sampler, sample_dpmpp_sde's two draws per step are increments of one Brownian path over sigma
    (as k-diffusion's BrownianTreeNoiseSampler gives them): with a denoiser linear in x the output's variance over
    40,000 draws equals k-diffusion's with its Brownian tree within 5 SEs of a variance ratio (2 sqrt(2 / n) each
    side); independent draws per call would give 0.65 of it."""
    n = 40000
    x = torch.randn(n, 1, generator=torch.Generator().manual_seed(0)) * 10
    sigmas = K.get_sigmas_karras(6, 0.1, 10.0)

    def linear(x, s):
        return 0.5 * x / (1 + s.reshape(-1, 1) ** 2)

    torch.manual_seed(1)
    ours = k_sampling.sample_dpmpp_sde(linear, x, sigmas, disable=True)
    theirs = K.sample_dpmpp_sde(linear, x, sigmas, disable=True,
                                noise_sampler=K.BrownianTreeNoiseSampler(x, 0.1, 10.0, seed=5))
    assert abs(float(ours.var() / theirs.var()) - 1) < 5 * 2 * (2 / n) ** 0.5
