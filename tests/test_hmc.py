"""fastgen.hmc against exact answers: Gaussians with known moments (Monte Carlo standard errors from the draws'
ESS), an exact stationarity test on a bimodal target, the leapfrog's reversibility and volume preservation, the
step-size adaptation, and bad input."""

import math

import pytest
import torch
from conftest import Sample

import fastgen
from fastgen.mcmc import ess, hmc
from fastgen.mcmc.hmc import leapfrog
from fastgen.ops import leapfrog_
from fastgen.reference.hmc import leapfrog_ as reference_leapfrog


def _leapfrog_samples(device, dtype):
    """States of several shapes, per-chain step sizes, no / shared / per-chain inverse masses, each pass kind."""
    g = torch.Generator().manual_seed(0)
    out = []
    for shape, mass, kick, drift in [((5, 3), None, 0.5, True), ((4, 2, 3), "shared", 1.0, True),
                                     ((3, 1000003 // 3), "per_chain", 1.0, True), ((2, 7), "shared", 0.5, False),
                                     ((1, 1), None, 1.0, True)]:
        q, p, grad = (torch.randn(shape, generator=g).to(device, dtype) for _ in range(3))
        steps = (torch.rand(shape[0], generator=g) + 0.1).to(device)
        inverse_mass = None if mass is None else (torch.rand(shape[1:] if mass == "shared" else shape, generator=g)
                                                  + 0.5).to(device).contiguous()
        out.append(Sample(q=q, p=p, grad_log_prob=grad, step_sizes=steps, inverse_mass=inverse_mass, kick=kick,
                          drift=drift))
    return out


SAMPLES = {"leapfrog_": _leapfrog_samples}


def test_leapfrog_op_rule():
    """The fused pass is p <- p + kick eps_b grad, q <- q + eps_b M^-1 p (the new p)."""
    q, p, grad = torch.randn(3, 4), torch.randn(3, 4), torch.randn(3, 4)
    eps, m = torch.tensor([0.1, 0.2, 0.3]), torch.rand(4) + 0.5
    q2, p2 = leapfrog_(q.clone(), p.clone(), grad, eps, m, 0.5, True)
    torch.testing.assert_close(p2, p + 0.5 * eps[:, None] * grad)
    torch.testing.assert_close(q2, q + eps[:, None] * m * p2)
    q3, p3 = q.clone(), p.clone()
    reference_leapfrog(q3, p3, grad, eps, m, 0.5, True)
    torch.testing.assert_close((q3, p3), (q2, p2))


def gaussian(scales: torch.Tensor):
    """log p of independent N(0, scales^2) coordinates."""
    return lambda x: -0.5 * (x / scales).square().sum(1)


def z_bound(count: int, p: float = 1e-6) -> float:
    """The |z| that `count` standard normals all stay below with probability 1 - p (Bonferroni): 4 SEs for one
    statistic is 6e-5; here every dimension's mean and variance is tested."""
    return float(torch.special.ndtri(torch.tensor(1 - p / (2 * count), dtype=torch.float64)))


def check_moments(draws: torch.Tensor, scales: torch.Tensor) -> None:
    """Every coordinate's mean (0) and variance (scales^2) within the Bonferroni bound of Monte Carlo SEs, each SE
    from the ESS of the draws (mean) or of their squares (variance, whose sd is sqrt(2) scale^2)."""
    draws = draws.double()
    mean, var = draws.mean((0, 1)), draws.square().mean((0, 1))
    se_mean = scales.double() / ess(draws, method="mean").sqrt()
    se_var = math.sqrt(2) * scales.double() ** 2 / ess(draws.square(), method="mean").sqrt()
    bound = z_bound(2 * draws.shape[-1])
    assert float((mean / se_mean).abs().max()) < bound
    assert float(((var - scales.double() ** 2) / se_var).abs().max()) < bound


def test_isotropic_gaussian_moments_and_adaptation():
    """10-D standard normal, 128 chains started 3 sd wide, 150 adaptation (shared step size) and 400 kept
    transitions of 8 leapfrog steps: moments within the bound, acceptance within 0.05 of the 0.8 target, no
    divergence, split R-hat < 1.01."""
    scales = torch.ones(10)
    x0 = torch.randn(128, 10, generator=torch.Generator().manual_seed(0)) * 3
    result = hmc(x0, log_prob=gaussian(scales), n_steps=400, step_size=0.5, n_leapfrog=8, adapt_steps=150, seed=1)
    assert result.draws.shape == (128, 400, 10)
    check_moments(result.draws, scales)
    assert abs(float(result.accept_rate.mean()) - 0.8) < 0.05 and int(result.divergences.sum()) == 0
    assert float(fastgen.mcmc.rhat(result.draws).max()) < 1.01


def test_ill_conditioned_gaussian_with_per_chain_masses():
    """100-D Gaussian with scales from 0.01 to 1 (condition number 1e4): with each chain's own diagonal mass (the
    inverse variances times a random factor per chain in [0.5, 2]) and per-chain adaptation the moments come out
    right and the acceptance is within 0.05 of the target."""
    scales = torch.logspace(-2, 0, 100)
    g = torch.Generator().manual_seed(2)
    chains = 128
    factor = 0.5 + 1.5 * torch.rand(chains, 1, generator=g)
    mass = factor / scales.square()
    x0 = torch.randn(chains, 100, generator=g) * scales
    result = hmc(x0, log_prob=gaussian(scales), n_steps=300, step_size=0.3, n_leapfrog=10, mass=mass,
                 adapt_steps=150, adapt="per_chain", seed=3)
    check_moments(result.draws, scales)
    assert abs(float(result.accept_rate.mean()) - 0.8) < 0.05


def test_mass_adaptation_in_windows():
    """The same 100-D Gaussian (condition number 1e4) from an identity mass: Stan's windowed diagonal mass
    adaptation (600 warm-up transitions, variances pooled over 128 chains) recovers the variances within 20%, the
    step size grows ~50x over its unadapted scale, and the moments and acceptance come out right."""
    scales = torch.logspace(-2, 0, 100)
    g = torch.Generator().manual_seed(5)
    x0 = torch.randn(128, 100, generator=g) * scales
    result = hmc(x0, log_prob=gaussian(scales), n_steps=300, step_size=0.01, n_leapfrog=10, adapt_steps=600,
                 adapt_mass=True, seed=6)
    ratio = result.inverse_mass / scales.square()
    assert float(ratio.min()) > 0.8 and float(ratio.max()) < 1.25
    assert float(result.step_size.mean()) > 0.3
    check_moments(result.draws, scales)
    assert abs(float(result.accept_rate.mean()) - 0.8) < 0.05


def test_stationarity_on_a_bimodal_target():
    """Chains started from the exact law of a bimodal 1-D mixture stay in it: after 30 transitions the 20,000 chains'
    states pass a chi-square test on 20 equiprobable bins at p = 1e-6 (detailed balance makes the target
    invariant; a wrong Metropolis ratio or leapfrog would move mass)."""
    gmm = fastgen.targets.GaussianMixture(torch.tensor([[-1.5], [1.5]]), torch.tensor([[0.6], [0.6]]),
                                          torch.tensor([0.3, 0.7]))
    x0 = gmm.sample(20000, seed=4).float()
    result = hmc(x0, energy=gmm, n_steps=30, step_size=0.4, n_leapfrog=5, seed=5)
    x = result.draws[:, -1, 0].double()
    grid = torch.linspace(-6, 6, 20001, dtype=torch.float64)
    cdf = torch.cumsum(gmm.log_prob(grid[:, None]).exp(), 0)
    cdf = cdf / cdf[-1]
    edges = grid[torch.searchsorted(cdf, torch.linspace(0, 1, 21, dtype=torch.float64)[1:-1])]
    counts = torch.bincount(torch.bucketize(x, edges), minlength=20).double()
    chi2 = float(((counts - 1000.0) ** 2 / 1000.0).sum())
    assert chi2 < 76.0  # the chi-square(19) quantile at 1 - 1e-6 is 72.7; the bins' cdf grid adds ~1e-4 each
    assert float(result.accept_rate.mean()) > 0.5


def test_leapfrog_is_reversible_and_preserves_volume():
    """Forward n steps, momentum negated, n steps back: the start again (float64, to 1e-12); the map's Jacobian
    determinant is 1 (autograd, a 2-D non-Gaussian target)."""
    def evaluate(q):
        with torch.enable_grad():
            qg = q.detach().requires_grad_(True)
            lp = -(qg[:, 0] ** 4 / 4 + (qg[:, 1] - qg[:, 0] ** 2) ** 2)
            (grad,) = torch.autograd.grad(lp.sum(), qg)
        return lp.detach(), grad

    q = torch.tensor([[0.3, -0.2], [1.1, 0.5]], dtype=torch.float64)
    p = torch.tensor([[0.7, 0.1], [-0.4, 0.9]], dtype=torch.float64)
    eps, inverse_mass = torch.full((2,), 0.05, dtype=torch.float64), torch.tensor([1.0, 0.5], dtype=torch.float64)
    # (float64 states run the op's reference: the same rule, exact enough to see reversibility to 1e-12)
    q1, p1, _, _ = leapfrog(q, p, evaluate(q)[1], evaluate, eps, 12, inverse_mass)
    q2, p2, _, _ = leapfrog(q1, -p1, evaluate(q1)[1], evaluate, eps, 12, inverse_mass)
    torch.testing.assert_close(q2, q, rtol=0, atol=1e-12)
    torch.testing.assert_close(-p2, p, rtol=0, atol=1e-12)

    def flow(state):
        s = state.reshape(1, 4)
        qq, pp, _, _ = leapfrog(s[:, :2], s[:, 2:], evaluate(s[:, :2])[1], evaluate, eps[:1], 12, inverse_mass)
        return torch.cat([qq, pp], 1).reshape(4)

    jacobian = torch.autograd.functional.jacobian(flow, torch.cat([q[0], p[0]]))
    assert abs(float(torch.linalg.det(jacobian)) - 1) < 1e-10


def test_gradient_evaluations_per_transition():
    """n_leapfrog evaluations of log p (with its gradient) per transition, one more at the start: L, not L + 1."""
    calls = []

    def log_prob(x):
        calls.append(1)
        return -0.5 * x.square().sum(1)

    hmc(torch.zeros(4, 3), log_prob=log_prob, n_steps=7, step_size=0.1, n_leapfrog=5, seed=0)
    assert len(calls) == 1 + 7 * 5


def test_non_finite_energies_are_rejected_and_counted():
    """A target that is -inf outside x < 1 (and NaN beyond 2): chains never leave it, never hold NaN, and the
    rejected trajectories count as divergences (with a warning)."""
    def log_prob(x):
        lp = -0.5 * x.square().sum(1)
        lp = torch.where(x[:, 0] < 1.0, lp, torch.full_like(lp, -math.inf))
        return torch.where(x[:, 0] < 2.0, lp, torch.full_like(lp, math.nan))

    with pytest.warns(RuntimeWarning, match="divergent or non-finite"):
        result = hmc(torch.zeros(256, 2), log_prob=log_prob, n_steps=50, step_size=0.8, n_leapfrog=4, seed=2)
    assert torch.isfinite(result.draws).all() and bool((result.draws[..., 0] < 1.0).all())
    assert int(result.divergences.sum()) > 0


def test_bad_input():
    """Non-finite log p at the start, step size <= 0, a mass that is not positive definite or of the wrong shape,
    n_leapfrog 0: errors naming them."""
    lp = gaussian(torch.ones(2))
    x0 = torch.zeros(4, 2)
    def half_plane(x):
        return torch.where(x[:, 0] < 0.5, lp(x), torch.full_like(x[:, 0], -math.inf))

    with pytest.raises(ValueError, match="log_prob must be finite at x0 for every chain; it is not for 1 of 2"):
        hmc(torch.tensor([[0.0, 0.0], [1.0, 0.0]]), log_prob=half_plane, n_steps=1, step_size=0.1, n_leapfrog=1)
    with pytest.raises(ValueError, match="x0 must be finite"):
        hmc(torch.tensor([[0.0, 0.0], [math.inf, 0.0]]), log_prob=lp, n_steps=1, step_size=0.1, n_leapfrog=1)
    with pytest.raises(ValueError, match="adapt must be"):
        hmc(x0, log_prob=lp, n_steps=1, step_size=0.1, n_leapfrog=1, adapt="window")
    with pytest.raises(ValueError, match="step_size must be finite and > 0"):
        hmc(x0, log_prob=lp, n_steps=1, step_size=0.0, n_leapfrog=1)
    with pytest.raises(ValueError, match="mass must be positive"):
        hmc(x0, log_prob=lp, n_steps=1, step_size=0.1, n_leapfrog=1, mass=torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match="mass \\(a diagonal\\) must have the event shape"):
        hmc(x0, log_prob=lp, n_steps=1, step_size=0.1, n_leapfrog=1, mass=torch.ones(3))
    with pytest.raises(ValueError, match="n_leapfrog must be an int >= 1"):
        hmc(x0, log_prob=lp, n_steps=1, step_size=0.1, n_leapfrog=0)
    with pytest.raises(ValueError, match="give exactly one of log_prob"):
        hmc(x0, n_steps=1, step_size=0.1, n_leapfrog=1)
