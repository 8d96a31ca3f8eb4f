"""Exact targets (Gaussian mixtures and toy sets) and the sample metrics."""

import pytest
import torch
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

import fastgen
from fastgen import metrics
from fastgen.targets import GaussianMixture


@pytest.fixture
def gmm():
    g = torch.Generator().manual_seed(0)
    return GaussianMixture(torch.randn(4, 3, generator=g) * 2, torch.rand(4, 3, generator=g) + 0.3, [1, 2, 3, 4])


def torch_mixture(gmm, sigma=0.0):
    stds = (gmm.stds.square() + sigma**2).sqrt()
    return MixtureSameFamily(Categorical(gmm.weights), Independent(Normal(gmm.means, stds), 1))


def test_log_prob_energy_score(gmm):
    x = torch.randn(50, 3, dtype=torch.float64) * 2
    want = torch_mixture(gmm).log_prob(x)
    torch.testing.assert_close(gmm.log_prob(x), want)
    torch.testing.assert_close(gmm.energy(x), -want)
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(torch_mixture(gmm).log_prob(xg).sum(), xg)
    torch.testing.assert_close(gmm.score(x), grad)


@pytest.mark.parametrize("sigma", [0.5, "per-sample"])
def test_diffused_score_is_the_score_of_the_noised_mixture(gmm, sigma):
    x = torch.randn(20, 3, dtype=torch.float64) * 2
    sigmas = torch.linspace(0.1, 3.0, 20, dtype=torch.float64) if sigma == "per-sample" else torch.full((20,), sigma)
    got = gmm.diffused_score(x, sigmas if sigma == "per-sample" else sigma)
    for i in range(20):
        xi = x[i:i + 1].clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(torch_mixture(gmm, float(sigmas[i])).log_prob(xi).sum(), xi)
        torch.testing.assert_close(got[i:i + 1], grad)


def test_samples_have_the_exact_moments(gmm):
    n = 200_000
    x = gmm.sample(n, seed=1, dtype=torch.float64)
    mean = (gmm.weights[:, None] * gmm.means).sum(0)
    second = (gmm.weights[:, None] * (gmm.means.square() + gmm.stds.square())).sum(0)
    var = second - mean.square()
    assert ((x.mean(0) - mean).abs() / (var / n).sqrt()).max() < 5
    assert torch.equal(gmm.sample(10, seed=3), gmm.sample(10, seed=3))


def test_kernel_params_and_validation(gmm):
    means, inv_vars, log_coef = gmm.kernel_params("cpu")
    assert means.dtype == torch.float32 and inv_vars.shape == (4, 3) and log_coef.shape == (4,)
    assert gmm.kernel_params("cpu")[0] is means
    with pytest.raises(ValueError, match="means must have shape"):
        GaussianMixture(torch.zeros(3))
    with pytest.raises(ValueError, match="stds must be"):
        GaussianMixture(torch.zeros(2, 2), torch.ones(3))
    with pytest.raises(ValueError, match="stds must be finite and > 0"):
        GaussianMixture(torch.zeros(2, 2), -1.0)
    with pytest.raises(ValueError, match="weights must be"):
        GaussianMixture(torch.zeros(2, 2), 1.0, [1.0, 0.0])
    with pytest.raises(ValueError, match=r"x must have shape \(B, 3\)"):
        gmm.score(torch.zeros(2, 2))


def test_builtin_targets_and_toy_sets():
    for target, k in ((fastgen.targets.eight_gaussians(), 8), (fastgen.targets.rings(), 48),
                      (fastgen.targets.grid(), 25)):
        assert target.n_components == k and target.sample(100, seed=0).shape == (100, 2)
    moons = fastgen.targets.two_moons(1000, seed=0)
    assert moons.shape == (1000, 2) and torch.isfinite(moons).all()
    board = fastgen.targets.checkerboard(5000, seed=0)
    cells = ((board + 2) // 1.0).long()
    assert board.shape == (5000, 2) and float(board.abs().max()) <= 2.0
    assert bool(((cells[:, 0] + cells[:, 1]) % 2 == 0).all())  # dark squares only


def test_metrics_separate_equal_from_different_laws():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(1500, 2, generator=g), torch.randn(1500, 2, generator=g)
    shifted = torch.randn(1500, 2, generator=g) + 0.5
    assert abs(metrics.mmd(a, b)) < 2e-3 < metrics.mmd(a, shifted)
    assert abs(metrics.energy_distance(a, b)) < 1e-2 < metrics.energy_distance(a, shifted)
    assert metrics.sliced_wasserstein(a, b, 64) < 0.1 < metrics.sliced_wasserstein(a, shifted, 64)
    assert metrics.sliced_wasserstein(a, b[:1000], 64) < 0.1
    # Sliced W2 between N(0, I) and N(m, I) in D dims: sqrt(E[(m . theta)^2]) = |m| / sqrt(D) = 0.5 here.
    assert abs(metrics.sliced_wasserstein(a, shifted, 512) - 0.5) < 0.1
    with pytest.raises(ValueError, match="same dimension"):
        metrics.mmd(a, torch.randn(10, 3))


def test_mode_weights():
    gmm = fastgen.targets.eight_gaussians()
    x = gmm.means[[0, 0, 1, 7]].float()
    w = metrics.mode_weights(x, gmm)
    assert w.shape == (8,) and float(w.sum()) == 1.0 and float(w[0]) == 0.5
