"""Consistency models: the parametrization, the exact consistency function of a Gaussian mixture, the multistep
sampler in fastgen.sample against exact answers and openai/consistency_models' sampler, the training losses."""

import math

import pytest
import torch

import fastgen
from fastgen.diffusion import (
    EMA,
    ConsistencyFunction,
    EDMConsistency,
    TrigFlowConsistency,
    consistency_distillation_loss,
    consistency_training_loss,
    ct_steps,
)
from fastgen.diffusion.consistency import ode_consistency_function, pseudo_huber
from fastgen.integrations import k_diffusion
from fastgen.metrics import mode_weights, within_mode_spread
from fastgen.ops import diffusion as D

PROCESSES = [EDMConsistency(), TrigFlowConsistency()]
IDS = ["edm", "trigflow"]


def mixture():
    gmm = fastgen.targets.eight_gaussians()

    def denoiser(x, sigma):  # E[x0 | x0 + sigma z], exact
        return gmm.posterior(x.double(), 1.0, sigma.double())[0].to(x.dtype)

    return gmm, denoiser


def net(x, c_noise, y=None):
    """A stand-in network F(c_in x, c_noise)."""
    out = torch.tanh(x) * (1 + c_noise[:, None]) + 0.1 * x
    return out if y is None else out + 0.05 * y[:, None].to(x.dtype)


def within_ses(x, gmm, k=4.0):
    n = x.shape[0]
    return float((mode_weights(x, gmm)[:8] - 1 / 8).abs().max()) < k * (1 / 8 * 7 / 8 / n) ** 0.5


@pytest.mark.parametrize("process", PROCESSES, ids=IDS)
def test_exact_consistency_function_samples_the_mixture_in_one_step(process):
    """With the exact consistency function (the probability-flow ODE's endpoint from the exact x0-denoiser, a fine
    Heun solve), one step from noise gives the mixture: 16,000 draws, mode weights within 4 binomial SEs and
    within-mode spread within 3% (measured 1.006 EDM, 1.011 TrigFlow); two steps likewise."""
    gmm, denoiser = mixture()
    f = ode_consistency_function(denoiser, process, steps=100)
    for steps in (1, 2):
        x = fastgen.sample(f, (16000, 2), sde=process, sampler="consistency", steps=steps, prediction="x0", seed=0,
                           device="cpu")
        assert within_ses(x, gmm)
        assert abs(float(within_mode_spread(x, gmm).mean()) - 1) < 0.03


@pytest.mark.parametrize("process", PROCESSES, ids=IDS)
def test_consistency_property_and_boundary(process):
    """f(x_t, t) = f(x_t', t') along one probability-flow trajectory (solved finely from t to t'), to 2e-3;
    f(x, t_min) = x exactly, for the exact function, the parametrized network and the fused sampler's row."""
    gmm, denoiser = mixture()
    f = ode_consistency_function(denoiser, process, steps=400)
    t = process.levels(1)[0]
    alpha, sigma = (float(v) for v in process.marginal(t))
    x_t = sigma * torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    end = f(x_t, float(t))
    for later in (process.levels(4)[1:]).tolist():
        a2, s2 = (float(v) for v in process.marginal(later))
        hi = min(sigma / alpha, 1e4)  # (TrigFlow's pi/2: start at 1e4, where x / sigma is constant)
        start = x_t / alpha * (hi / (sigma / alpha))
        sigmas = torch.cat([k_diffusion.get_sigmas_karras(400, s2 / a2, hi).double()[:-1]])
        x_later = k_diffusion.sample_heun(lambda v, s: denoiser(v, s), start, sigmas, disable=True) * a2
        torch.testing.assert_close(f(x_later, later), end, rtol=0, atol=2e-3)
    x = torch.randn(64, 2, dtype=torch.float64)
    assert torch.equal(f(x, process.t_min), x)
    assert torch.equal(ConsistencyFunction(net, process)(x.float(), process.t_min), x.float())
    state = x.float().clone()
    D.diffusion_step_(state, torch.randn(64, 2), D.consistency_coefficients(process, process.t_min).float(),
                      prediction="v")
    assert torch.equal(state, x.float())


@pytest.mark.parametrize("process", PROCESSES, ids=IDS)
def test_raw_network_equals_the_wrapped_function(process):
    """prediction="raw" (the network F, the parametrization applied in the fused step) equals the wrapped f with
    prediction="x0", with per-sample seeds, model kwargs and classifier-free guidance; the model sees c_in x and
    c_noise."""
    seen = []

    def recording(x, c, y=None):
        seen.append(c.clone())
        return net(x, c, y)

    common = dict(sde=process, sampler="consistency", steps=3, device="cpu", per_sample_seeds=torch.arange(16),
                  model_kwargs={"y": torch.arange(16) % 3}, uncond_kwargs={"y": torch.zeros(1, dtype=torch.long)},
                  guidance_scale=2.0)
    a = fastgen.sample(recording, (16, 2), **common)
    b = fastgen.sample(ConsistencyFunction(net, process), (16, 2), prediction="x0", **common)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    c_noise = process.scalings(process.levels(3))[3].float()
    torch.testing.assert_close(torch.stack([s[0] for s in seen]), c_noise)
    single = fastgen.sample(net, (1, 2), sde=process, sampler="consistency", steps=3, device="cpu",
                            per_sample_seeds=torch.arange(5, 6))
    wider = fastgen.sample(net, (4, 2), sde=process, sampler="consistency", steps=3, device="cpu",
                           per_sample_seeds=torch.arange(5, 9))
    torch.testing.assert_close(single[0], wider[0])


def test_levels_and_calls_match_openai_sampler():
    """openai/consistency_models' stochastic_iterative_sampler (vendored) calls f at the levels of its ts; the
    consistency sampler on EDMConsistency().openai_levels(ts) calls it at the same ones; with the exact function of
    the mixture both give its law (16,000 draws each: mode weights within 4 SEs, spreads within 3%)."""
    from peer.consistency_models.karras_diffusion import stochastic_iterative_sampler

    gmm, denoiser = mixture()
    process = EDMConsistency()
    f = ode_consistency_function(denoiser, process, steps=100)
    ts = [0, 22, 39]
    calls = {"openai": [], "fastgen": []}

    def recorded(who):
        def model(x, t):
            calls[who].append(float(t[0]))
            return f(x, t.double())
        return model

    class Generator:
        def __init__(self, seed):
            self.g = torch.Generator().manual_seed(seed)

        def randn_like(self, x):
            return torch.randn(x.shape, generator=self.g, dtype=x.dtype)

    x_t = torch.randn(16000, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 80.0
    theirs = stochastic_iterative_sampler(recorded("openai"), x_t, None, Generator(2), ts)
    ours = fastgen.sample(recorded("fastgen"), (16000, 2), sde=process, sampler="consistency", steps=2,
                          spacing=process.openai_levels(ts), prediction="x0", seed=3, device="cpu")
    assert calls["fastgen"] == pytest.approx(calls["openai"], rel=1e-6)
    for x in (theirs, ours):
        assert within_ses(x, gmm) and abs(float(within_mode_spread(x, gmm).mean()) - 1) < 0.03


def test_gamma_sampling_rows():
    """gamma = 1 puts x0 back with fresh noise of std sqrt(t'^2 - t_min^2) (openai's); gamma = 0 reuses the
    predicted noise (x' = x0 + s' (x - x0) / s, no draw); the last row returns x0."""
    p = EDMConsistency()
    t, t_next = torch.tensor([80.0, 2.0]), torch.tensor([2.0, float("nan")])
    one = D.consistency_coefficients(p, t, t_next, gamma=1.0)
    zero = D.consistency_coefficients(p, t, t_next, gamma=0.0)
    s_next, s = math.sqrt(4 - 0.002**2), math.sqrt(6400 - 0.002**2)
    assert float(one[0, 7]) == pytest.approx(s_next) and float(one[0, 3]) == 0 and float(one[0, 4]) == 1
    assert float(zero[0, 7]) == 0 and float(zero[0, 3]) == pytest.approx(s_next / s)
    assert float(zero[0, 4]) == pytest.approx(1 - s_next / s)
    assert one[1, 3:8].tolist() == [0.0, 1.0, 0.0, 0.0, 0.0] == zero[1, 3:8].tolist()


def test_bad_input():
    """Non-monotone levels, a time outside the process's range, sigma_data <= 0, a prediction or sampler that does
    not apply: clear errors naming the argument."""
    p = EDMConsistency()
    with pytest.raises(ValueError, match="spacing must hold steps = 2 strictly decreasing"):
        fastgen.sample(net, (4, 2), sde=p, sampler="consistency", steps=2, spacing=torch.tensor([2.0, 80.0]),
                       device="cpu")
    with pytest.raises(ValueError, match="spacing must lie in"):
        fastgen.sample(net, (4, 2), sde=p, sampler="consistency", steps=2, spacing=torch.tensor([100.0, 2.0]),
                       device="cpu")
    with pytest.raises(ValueError, match="sigma_data must be a finite number > 0"):
        EDMConsistency(sigma_data=0.0)
    with pytest.raises(ValueError, match="sigma_data must be a finite number > 0"):
        TrigFlowConsistency(sigma_data=-1.0)
    with pytest.raises(ValueError, match="prediction on a consistency process must be 'raw'"):
        fastgen.sample(net, (4, 2), sde=p, sampler="consistency", steps=2, prediction="eps", device="cpu")
    with pytest.raises(ValueError, match="runs on a consistency process"):
        fastgen.sample(net, (4, 2), sampler="consistency", steps=2, device="cpu")
    with pytest.raises(ValueError, match="runs on a consistency process"):
        fastgen.sample(net, (4, 2), sde=p, sampler="ode_euler", steps=2, device="cpu")
    with pytest.raises(ValueError, match="gamma"):
        fastgen.sample(net, (4, 2), sde=p, sampler="consistency", steps=2, eta=1.5, device="cpu")
    with pytest.raises(ValueError, match="t must lie in"):
        ConsistencyFunction(net, p)(torch.zeros(3, 2), 0.001)
    with pytest.raises(ValueError, match="ts must be increasing indices"):
        p.openai_levels([39, 22, 0])


@pytest.mark.parametrize("process", PROCESSES, ids=IDS)
def test_training_losses(process):
    """Both losses are finite, differentiable in the model, repeatable under a generator; consistency training's
    curriculum is improved CT's (11 levels at the start, 1281 at the end of 400k steps); CD's teacher steps are the
    fused Euler, Heun and DPM-Solver++(2S) steps (Euler and Heun equal k-diffusion's one-step results)."""
    gmm, denoiser = mixture()

    class Small(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Linear(3, 16), torch.nn.Linear(16, 2)

        def forward(self, x, c_noise):
            return self.b(torch.nn.functional.silu(self.a(torch.cat([x, c_noise[:, None]], 1))))

    f = ConsistencyFunction(Small(), process)
    model = lambda x, t: f(x, t)  # noqa: E731
    x0 = gmm.sample(256, seed=0).float()
    for loss_fn in (lambda g: consistency_training_loss(model, x0, process, steps=11, generator=g),
                    lambda g: consistency_distillation_loss(model, x0, process, denoiser, generator=g)):
        a, b = loss_fn(torch.Generator().manual_seed(0)), loss_fn(torch.Generator().manual_seed(0))
        assert torch.isfinite(a) and torch.equal(a, b)
        a.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in f.parameters())
    assert ct_steps(0, 400_000) == 11 and ct_steps(399_999, 400_000) == 1281
    assert float(pseudo_huber(torch.zeros(2, 4), torch.zeros(2, 4)).abs().max()) == 0.0


def test_teacher_steps_equal_k_diffusion():
    """The CD teacher's Euler and Heun steps from sigma to sigma' (rows of the grid's table, read per sample) equal
    k-diffusion's samplers run for that one step."""
    from fastgen.diffusion.consistency import _Grid, _teacher_step

    _, denoiser = mixture()
    grid = _Grid(EDMConsistency(sigma_min=2.0, sigma_max=3.0), 2, "cpu")  # levels [2, 3]
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0)) * 3.0
    for solver, sampler in (("euler", k_diffusion.sample_euler), ("heun", k_diffusion.sample_heun)):
        ours = x.clone()
        _teacher_step(denoiser, ours, grid, torch.zeros(64, dtype=torch.long), solver)
        theirs = sampler(denoiser, x, torch.tensor([3.0, 2.0]), disable=True)
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_ema_averaged_module_follows_updates():
    """EMA.averaged: a copy of the model whose parameters are the averages (no copy per update, no gradient)."""
    model = torch.nn.Linear(3, 2)
    ema = EMA(model.parameters(), decay=0.5, warmup=False)
    target = ema.averaged(model)
    with torch.no_grad():
        model.weight.add_(1.0)
    before = target.weight.clone()
    ema.update()
    torch.testing.assert_close(target.weight, before + 0.5)
    assert not target.weight.requires_grad and target.weight.data_ptr() == ema.shadow[0].data_ptr()
    with pytest.raises(ValueError, match="same shapes"):
        ema.averaged(torch.nn.Linear(2, 2))


@pytest.mark.slow
def test_distilled_2d_model_at_two_steps():
    """examples/consistency_2d.py, 6,000 steps of consistency distillation from the exact denoiser (about 90 s):
    the EMA model at 2 steps gives the eight modes' weights within 0.02 of 1/8 (measured 0.005) and a within-mode
    spread of 1.14 measured, tested in [1.0, 1.3]: a small MLP's consistency function stays slightly too wide (the
    exact one gives 1.00, test_exact_consistency_function_samples_the_mixture_in_one_step); 1 step is wider."""
    from conftest import load_example

    example = load_example("consistency_2d")
    _, ema_model, process, gmm = example.distill(6000)
    rows = example.compare(ema_model, process, gmm)
    _, weight, spread = rows["consistency, 2 steps"]
    assert weight < 0.02 and 1.0 < spread < 1.3
    assert rows["consistency, 1 step"][2] > spread
