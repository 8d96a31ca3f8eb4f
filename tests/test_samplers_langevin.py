"""Langevin samplers against exact targets. Thresholds come from the null: the
MMD^2 between two independent exact sample sets of the same size over 8 seed
pairs; a sampler passes when its MMD^2 to exact samples is below 3x the largest
null value. Negative controls show each threshold rejects a wrong answer.
Seeds are fixed, so the outcomes are deterministic."""

import math

import pytest
import torch

import fastgen
from fastgen.metrics import mmd, mode_weights
from fastgen.targets import GaussianMixture, eight_gaussians

N = 2000
MARGIN = 3.0


def null_threshold(target, bandwidth=None):
    null = [mmd(target.sample(N, seed=2 * s), target.sample(N, seed=2 * s + 1), bandwidth) for s in range(8)]
    return MARGIN * max(abs(v) for v in null)


@pytest.fixture(scope="module")
def gaussians8():
    return eight_gaussians()  # component std 0.15, radius 2


@pytest.fixture(scope="module")
def mixture10d():
    g = torch.Generator().manual_seed(0)
    means = torch.randn(3, 10, generator=g) * 0.6
    stds = torch.rand(3, 10, generator=g) + 0.5  # anisotropic, 0.5 .. 1.5
    return GaussianMixture(means, stds, [0.6, 0.3, 0.1])


BANDWIDTH_8G = 0.3  # a kernel at the scale of one component, so within-mode errors show


@pytest.mark.parametrize("path", ["fused", "score"])
def test_ula_eight_gaussians(gaussians8, path):
    threshold = null_threshold(gaussians8, BANDWIDTH_8G)
    x0 = torch.randn(N, 2, generator=torch.Generator().manual_seed(0))
    model = dict(energy=gaussians8) if path == "fused" else dict(score=gaussians8.score)
    x = fastgen.langevin(x0, **model, n_steps=600, step_size=1e-3, seed=1)
    assert mmd(x, gaussians8.sample(N, seed=100), BANDWIDTH_8G) < threshold
    assert (mode_weights(x, gaussians8) - 1 / 8).abs().max() < 0.03


def test_ula_threshold_rejects_a_biased_step(gaussians8):
    """Negative control: h = 0.02 inflates each mode's variance by ~40%; the test must see it."""
    threshold = null_threshold(gaussians8, BANDWIDTH_8G)
    x0 = torch.randn(N, 2, generator=torch.Generator().manual_seed(0))
    x = fastgen.langevin(x0, energy=gaussians8, n_steps=600, step_size=2e-2, seed=1)
    assert mmd(x, gaussians8.sample(N, seed=100), BANDWIDTH_8G) > threshold


def test_ula_anisotropic_10d_mixture(mixture10d):
    threshold = null_threshold(mixture10d)
    x0 = torch.randn(N, 10, generator=torch.Generator().manual_seed(1))
    x = fastgen.langevin(x0, score=mixture10d.score, n_steps=4000, step_size=5e-3, seed=1)
    exact = mixture10d.sample(N, seed=100)
    assert mmd(x, exact) < threshold
    wrong = GaussianMixture(mixture10d.means, mixture10d.stds, [0.45, 0.4, 0.15]).sample(N, seed=5)
    assert mmd(wrong, exact) > threshold  # negative control: mis-weighted modes are rejected


@pytest.fixture(scope="module")
def gaussian5d():
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(5, 5, generator=g, dtype=torch.float64))
    cov = q @ torch.diag(torch.tensor([0.3, 0.7, 1.0, 2.0, 3.0], dtype=torch.float64)) @ q.T
    mean = torch.tensor([1.0, -0.5, 0.0, 2.0, 0.3], dtype=torch.float64)
    return mean, cov


def test_mala_correlated_gaussian(gaussian5d):
    mean, cov = gaussian5d
    precision = torch.linalg.inv(cov).float()
    mean32 = mean.float()

    def log_prob(x):
        d = x - mean32
        return -0.5 * ((d @ precision) * d).sum(1)

    n = 4000
    x0 = torch.randn(n, 5, generator=torch.Generator().manual_seed(1))
    x, rate = fastgen.mala(x0, log_prob=log_prob, n_steps=300, step_size=0.5, seed=3, adapt_steps=300)
    # Chains are independent: Monte-Carlo standard errors of the mean and covariance.
    se_mean = (cov.diagonal() / n).sqrt()
    assert ((x.double().mean(0) - mean) / se_mean).abs().max() < 4.0
    se_cov = ((cov.diagonal()[:, None] * cov.diagonal()[None, :] + cov**2) / n).sqrt()
    assert ((torch.cov(x.double().T) - cov) / se_cov).abs().max() < 4.5
    assert abs(float(rate.mean()) - 0.574) < 0.05
    assert rate.shape == (n,)


def test_mala_energy_and_fixed_step(gaussians8):
    x0 = gaussians8.sample(512, seed=3)
    x, rate = fastgen.mala(x0, energy=gaussians8, n_steps=50, step_size=1e-2, seed=0)
    assert x.shape == x0.shape and 0.5 < float(rate.mean()) <= 1.0


def test_mala_trajectory(gaussians8):
    """thin=k keeps every k-th kept state, the last of them the final state; the chains do not change with it."""
    x0 = gaussians8.sample(64, seed=3)
    x, rate = fastgen.mala(x0, energy=gaussians8, n_steps=12, step_size=1e-2, seed=0, adapt_steps=3)
    x2, rate2, traj = fastgen.mala(x0, energy=gaussians8, n_steps=12, step_size=1e-2, seed=0, adapt_steps=3, thin=4)
    assert traj.shape == (3, 64, 2)
    torch.testing.assert_close(traj[-1], x, rtol=0, atol=0)
    torch.testing.assert_close((x2, rate2), (x, rate), rtol=0, atol=0)
    with pytest.raises(ValueError, match="thin must be an int >= 1"):
        fastgen.mala(x0, energy=gaussians8, n_steps=1, step_size=1e-2, thin=0)


def test_annealed_langevin_covers_all_modes(gaussians8):
    n = 4000
    sigmas = torch.logspace(math.log10(3.0), math.log10(0.05), 10)
    x0 = torch.rand(n, 2, generator=torch.Generator().manual_seed(0)) * 8 - 4
    x = fastgen.annealed_langevin(x0, score=gaussians8.diffused_score, sigmas=sigmas, n_steps_each=100, eps=2e-4,
                                  seed=1)
    assert (mode_weights(x, gaussians8) - 1 / 8).abs().max() < 0.02


# ---------------------------------------------------------------- API behaviour


def test_langevin_is_deterministic_and_leaves_x0_alone(gaussians8):
    x0 = torch.randn(100, 2)
    before = x0.clone()
    a = fastgen.langevin(x0, score=gaussians8.score, n_steps=10, step_size=1e-2, seed=4)
    b = fastgen.langevin(x0, score=gaussians8.score, n_steps=10, step_size=1e-2,
                         generator=torch.Generator().manual_seed(9))
    c = fastgen.langevin(x0, score=gaussians8.score, n_steps=10, step_size=1e-2,
                         generator=torch.Generator().manual_seed(9))
    assert torch.equal(x0, before)
    assert torch.equal(b, c) and not torch.equal(a, b)


def test_langevin_thin_callback_and_options(gaussians8):
    seen = []
    x, traj = fastgen.langevin(torch.randn(16, 2), energy=gaussians8, n_steps=10, step_size=1e-2, seed=0, thin=5,
                               callback=lambda step, x: seen.append(step))
    assert traj.shape == (2, 16, 2) and torch.equal(traj[-1], x)
    assert seen == list(range(1, 11))
    x = fastgen.langevin(torch.randn(16, 2) * 5, score=gaussians8.score, n_steps=5, step_size=1e-2, seed=0,
                         clamp=(-1.0, 1.0), grad_clip=1.0)
    assert float(x.abs().max()) <= 1.0
    steps = torch.full((16,), 1e-2)
    fused = fastgen.langevin(torch.zeros(16, 2), energy=gaussians8, n_steps=7, step_size=steps, seed=2)
    generic = fastgen.langevin(torch.zeros(16, 2), score=gaussians8.score, n_steps=7, step_size=steps, seed=2)
    torch.testing.assert_close(fused, generic, rtol=1e-4, atol=1e-4)


def test_langevin_bad_input(gaussians8):
    x0 = torch.randn(8, 2)
    with pytest.raises(ValueError, match="exactly one of score"):
        fastgen.langevin(x0, n_steps=1, step_size=0.1)
    with pytest.raises(ValueError, match="exactly one of score"):
        fastgen.langevin(x0, score=gaussians8.score, energy=gaussians8, n_steps=1, step_size=0.1)
    with pytest.raises(ValueError, match=r"score must return a tensor of shape \(8, 2\)"):
        fastgen.langevin(x0, score=lambda x: x[:, :1], n_steps=1, step_size=0.1, seed=0)
    with pytest.raises(ValueError, match=r"energy must return a tensor of shape \(8,\)"):
        fastgen.langevin(x0, energy=lambda x: x.sum(), n_steps=1, step_size=0.1, seed=0)
    with pytest.raises(TypeError, match="score must return a torch.Tensor"):
        fastgen.langevin(x0, score=lambda x: 1.0, n_steps=1, step_size=0.1, seed=0)
    for bad in (0.0, -1.0, float("nan"), torch.tensor([0.1] * 7 + [-0.1])):
        with pytest.raises(ValueError, match="step_size must be finite and > 0"):
            fastgen.langevin(x0, score=gaussians8.score, n_steps=1, step_size=bad)
    with pytest.raises(ValueError, match="n_steps must be"):
        fastgen.langevin(x0, score=gaussians8.score, n_steps=-2, step_size=0.1)
    with pytest.raises(ValueError, match="thin must be"):
        fastgen.langevin(x0, score=gaussians8.score, n_steps=2, step_size=0.1, thin=0)
    with pytest.raises(ValueError, match="exactly one of log_prob"):
        fastgen.mala(x0, n_steps=1, step_size=0.1)
    with pytest.raises(ValueError, match="target_accept"):
        fastgen.mala(x0, energy=gaussians8, n_steps=1, step_size=0.1, target_accept=1.5)
    with pytest.raises(ValueError, match=r"log_prob must return a tensor of shape \(8,\)"):
        fastgen.mala(x0, log_prob=lambda x: x, n_steps=1, step_size=0.1)
    with pytest.raises(ValueError, match="sigmas must be"):
        fastgen.annealed_langevin(x0, score=gaussians8.diffused_score, sigmas=[1.0, -1.0], n_steps_each=1, eps=0.1)
    with pytest.raises(ValueError, match="eps must be"):
        fastgen.annealed_langevin(x0, score=gaussians8.diffused_score, sigmas=[1.0], n_steps_each=1, eps=0.0)
