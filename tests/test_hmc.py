"""fastgen.mcmc.hmc and nuts against exact answers: Gaussians with known moments (Monte Carlo standard errors from
the draws' ESS), an exact stationarity test on a bimodal target, the leapfrog's reversibility and volume
preservation, NUTS's iterative U-turn checks against the recursive definition, the step-size, mass (diagonal and
dense) and trajectory-length adaptation, and bad input."""

import math

import pytest
import torch
from conftest import Sample

import fastgen
from fastgen.mcmc import ess, hmc, nuts
from fastgen.mcmc.hmc import _halton, leapfrog
from fastgen.mcmc.nuts import _checkpoints, _turning
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


def _gmm_hmc_samples(device, dtype):
    """Mixtures of several sizes (up to the 64 x 64 limit), ragged chain tiles, per-chain step sizes, a few
    transitions (an accept decision at a rounding boundary would make the backends part: the steps keep the
    acceptance away from 0 and 1 rarely enough)."""
    out = []
    for chains, dim, components, steps_per in [(5, 2, 8, 3), (0, 2, 8, 1), (3, 1, 1, 2), (70, 64, 64, 2),
                                              (301, 3, 4, 4), (37, 13, 5, 1)]:
        gen = torch.Generator().manual_seed(chains + dim)
        gmm = fastgen.targets.GaussianMixture(torch.randn(components, dim, generator=gen) * 2,
                                              torch.rand(components, dim, generator=gen) + 0.5,
                                              torch.rand(components, generator=gen) + 0.1)
        means, inv_vars, log_coef = gmm.kernel_params(device)
        steps = (torch.rand(chains, generator=gen) * 0.2 + 0.05).to(device)
        out.append(Sample(q=torch.randn(chains, dim, generator=gen).to(device, dtype), means=means,
                          inv_vars=inv_vars, log_coef=log_coef, step_sizes=steps, n_transitions=3,
                          n_leapfrog=steps_per, seed=3, offset=10))
    return out


SAMPLES = {"leapfrog_": _leapfrog_samples, "gmm_hmc_": _gmm_hmc_samples}


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


@pytest.mark.parametrize("sampler", ["hmc", pytest.param("nuts", marks=pytest.mark.slow)])
def test_ill_conditioned_gaussian_with_per_chain_masses(sampler):
    """100-D Gaussian with scales from 0.01 to 1 (condition number 1e4): with each chain's own diagonal mass (the
    inverse variances times a random factor per chain in [0.5, 2]) and per-chain adaptation the moments come out
    right and the acceptance is within 0.05 of the target, for HMC and NUTS."""
    scales = torch.logspace(-2, 0, 100)
    g = torch.Generator().manual_seed(2)
    chains = 128
    factor = 0.5 + 1.5 * torch.rand(chains, 1, generator=g)
    mass = factor / scales.square()
    x0 = torch.randn(chains, 100, generator=g) * scales
    kwargs = {"n_leapfrog": 10} if sampler == "hmc" else {}
    result = getattr(fastgen.mcmc, sampler)(x0, log_prob=gaussian(scales), n_steps=300, step_size=0.3, mass=mass,
                                           adapt_steps=150, adapt="per_chain", seed=3, **kwargs)
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


BIMODAL = fastgen.targets.GaussianMixture(torch.tensor([[-1.5], [1.5]]), torch.tensor([[0.6], [0.6]]),
                                          torch.tensor([0.3, 0.7]))


def check_bimodal_law(x: torch.Tensor) -> None:
    """20,000 states against BIMODAL's law: chi-square on 20 equiprobable bins below 76 (the chi-square(19)
    quantile at 1 - 1e-6 is 72.7; the bins' cdf grid adds ~1e-4 each)."""
    grid = torch.linspace(-6, 6, 20001, dtype=torch.float64)
    cdf = torch.cumsum(BIMODAL.log_prob(grid[:, None]).exp(), 0)
    cdf = cdf / cdf[-1]
    edges = grid[torch.searchsorted(cdf, torch.linspace(0, 1, 21, dtype=torch.float64)[1:-1])]
    counts = torch.bincount(torch.bucketize(x.double(), edges), minlength=20).double()
    assert float(((counts - 1000.0) ** 2 / 1000.0).sum()) < 76.0


@pytest.mark.parametrize("path", ["fused", "general"])
def test_stationarity_on_a_bimodal_target(path):
    """Chains started from the exact law of a bimodal 1-D mixture stay in it: after 30 transitions the 20,000 chains'
    states pass a chi-square test on 20 equiprobable bins at p = 1e-6 (detailed balance makes the target
    invariant; a wrong Metropolis ratio or leapfrog would move mass); for the fused mixture kernel (energy= the
    mixture) and the general path (its log_prob by autograd)."""
    gmm = BIMODAL
    x0 = gmm.sample(20000, seed=4).float()
    target = dict(energy=gmm) if path == "fused" else dict(log_prob=lambda x: gmm.log_prob(x.double()).float())
    result = hmc(x0, n_steps=30, step_size=0.4, n_leapfrog=5, seed=5, **target)
    check_bimodal_law(result.draws[:, -1, 0])
    assert float(result.accept_rate.mean()) > 0.5


def test_fused_mixture_chains_equal_the_general_path():
    """hmc(energy=mixture) runs each transition as one gmm_hmc_ launch on the same noise as the general path
    (log p by autograd, the leapfrog op): the chains agree to 1e-3 except where float rounding flips an accept
    decision at its boundary (under 1% of chains); gmm_hmc_ over 3 transitions equals 3 calls a stride apart."""
    gmm = fastgen.targets.eight_gaussians()
    x0 = gmm.sample(2000, seed=1)
    a = hmc(x0, energy=gmm, n_steps=20, step_size=0.1, n_leapfrog=6, seed=2)
    b = hmc(x0, log_prob=lambda x: gmm.log_prob(x.double()).float(), n_steps=20, step_size=0.1, n_leapfrog=6,
            seed=2)
    agree = ((a.draws - b.draws).abs().amax((1, 2)) < 1e-3).double().mean()
    assert float(agree) > 0.99
    assert int(a.gradients[0]) == 20 * 6
    from fastgen.core.rng import hmc_layout
    from fastgen.ops import gmm_hmc_

    eps = torch.full((2000,), 0.1)
    q3 = x0.clone()
    total, _ = gmm_hmc_(q3, gmm, 3, 6, eps, 7, 5)
    q1, parts = x0.clone(), []
    for t in range(3):
        parts.append(gmm_hmc_(q1, gmm, 1, 6, eps, 7, 5 + t * hmc_layout(q1.numel(), 2000)[0])[0])
    torch.testing.assert_close(q3, q1, rtol=0, atol=0)
    torch.testing.assert_close(total, sum(parts), rtol=1e-6, atol=1e-6)


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


def correlated(dim: int, rho: float):
    """(log p, covariance) of N(0, S), S_ij = s_i s_j rho^|i - j|, scales s from 0.1 to 1."""
    scales = torch.logspace(-1, 0, dim, dtype=torch.float64)
    cov = scales[:, None] * scales[None, :] * rho ** (torch.arange(dim)[:, None] - torch.arange(dim)).abs()
    precision = torch.linalg.inv(cov).float()
    return (lambda x: -0.5 * ((x @ precision) * x).sum(1)), cov


def check_covariance(draws: torch.Tensor, cov: torch.Tensor) -> None:
    """Every entry of the draws' covariance within the Bonferroni bound of its Monte Carlo SE, SE_ij =
    sqrt((S_ii S_jj + S_ij^2) / ESS_ij) (the Gaussian variance of a product), ESS_ij that of the products."""
    x = draws.double()
    products = x.unsqueeze(-1) * x.unsqueeze(-2)
    estimate = products.mean((0, 1))
    d = cov.shape[0]
    effective = ess(products.reshape(*x.shape[:2], d * d), method="mean").reshape(d, d)
    se = ((cov.diagonal()[:, None] * cov.diagonal()[None, :] + cov.square()) / effective).sqrt()
    assert float(((estimate - cov) / se).abs().max()) < z_bound(d * (d + 1) // 2)


def test_nuts_isotropic_gaussian_moments_and_adaptation():
    """10-D standard normal, 128 chains started 3 sd wide, 150 adaptation and 300 kept NUTS transitions: moments
    within the bound, acceptance statistic within 0.05 of the target, no divergence, R-hat < 1.01; trees of depth
    ~3 (a U-turn after ~pi / eps steps), the depth and the gradients per chain reported."""
    scales = torch.ones(10)
    x0 = torch.randn(128, 10, generator=torch.Generator().manual_seed(0)) * 3
    result = nuts(x0, log_prob=gaussian(scales), n_steps=300, step_size=0.5, adapt_steps=150, seed=1)
    check_moments(result.draws, scales)
    assert abs(float(result.accept_rate.mean()) - 0.8) < 0.05 and int(result.divergences.sum()) == 0
    assert float(fastgen.mcmc.rhat(result.draws).max()) < 1.01
    assert result.tree_depth.shape == (128, 300) and 2 <= float(result.tree_depth.float().mean()) <= 4
    assert bool((result.gradients >= result.tree_depth.sum(1)).all())


def test_nuts_stationarity_on_a_bimodal_target():
    """NUTS keeps the exact law of a bimodal 1-D mixture (20,000 chains started from it, 20 transitions,
    chi-square on 20 equiprobable bins at p = 1e-6): the multinomial choice among the leaves, the biased merge and
    the U-turn checks must all be right for the target to stay invariant."""
    x0 = BIMODAL.sample(20000, seed=4).float()
    result = nuts(x0, energy=BIMODAL, n_steps=20, step_size=0.3, seed=5)
    check_bimodal_law(result.draws[:, -1, 0])
    assert float(result.tree_depth.float().mean()) > 2


def _turns_recursively(p: torch.Tensor) -> bool:
    """Does any binary subtree (of two or more leaves) of the leaves p (2^d, n) make a U-turn? (the definition)"""
    if len(p) < 2:
        return False
    half = len(p) // 2
    whole = bool(_turning(p[:1], p[-1:], p.sum(0, keepdim=True), None)[0])
    return whole or _turns_recursively(p[:half]) or _turns_recursively(p[half:])


def test_nuts_checkpoints_equal_the_recursive_u_turn_checks():
    """Leaf by leaf, the checkpointed checks (NumPyro's slots, as the subtree builder runs them) flag a U-turn at
    the first leaf where a completed binary subtree of the leaves so far turns, on random momenta."""
    g = torch.Generator().manual_seed(0)
    for trial in range(200):
        d = 1 + trial % 5
        p = torch.randn(2**d, 3, generator=g) + torch.tensor([1.5, 0.0, 0.0])
        ck_p, ck_sum = torch.zeros(d, 1, 3), torch.zeros(d, 1, 3)
        total = torch.zeros(1, 3)
        first = None
        for n in range(2**d):
            total = total + p[n:n + 1]
            lo, hi = _checkpoints(n)
            if n % 2 == 0:
                ck_p[hi], ck_sum[hi] = p[n:n + 1], total
            turned = any(bool(_turning(ck_p[i], p[n:n + 1], total - ck_sum[i] + ck_p[i], None)[0])
                         for i in range(lo, hi + 1))
            if turned and first is None:
                first = n
        expected = None
        for n in range(2**d):  # the subtrees completed at leaf n end at n: sizes 2, 4, ... dividing n + 1
            size = 2
            while (n + 1) % size == 0 and size <= 2**d:
                if _turns_recursively(p[n + 1 - size:n + 1]) and expected is None:
                    expected = n
                size *= 2
        assert first == expected, (trial, first, expected)


def test_nuts_stops_at_max_tree_depth():
    """A step size far too small for the target: every tree grows to max_tree_depth doublings (2^depth - 1
    leapfrog steps and as many gradients), and the moments still come out (here only checked finite)."""
    result = nuts(torch.zeros(8, 2), log_prob=gaussian(torch.ones(2)), n_steps=3, step_size=1e-3, max_tree_depth=5,
                  seed=0)
    assert bool((result.tree_depth == 5).all())
    assert bool((result.gradients == 3 * 31).all())


@pytest.mark.parametrize("sampler", ["hmc", pytest.param("nuts", marks=pytest.mark.slow)])
def test_dense_mass_adaptation_on_a_correlated_gaussian(sampler):
    """A 10-D Gaussian with neighbour correlation 0.95 and scales 0.1 to 1 (condition number ~1e4): windowed dense
    mass adaptation (pooled over 128 chains) recovers the covariance (M^-1 within 25% of S in the relative
    Frobenius norm), the step size grows past 0.5 (a diagonal mass cannot: ~0.15), and every entry of the draws'
    covariance is within the bound of its Monte Carlo SE."""
    log_p, cov = correlated(10, 0.95)
    x0 = torch.randn(128, 10, generator=torch.Generator().manual_seed(7)) * 0.1
    kwargs = {"n_leapfrog": 8} if sampler == "hmc" else {}
    result = getattr(fastgen.mcmc, sampler)(x0, log_prob=log_p, n_steps=200, step_size=0.05, adapt_steps=300,
                                           adapt_mass=True, dense_mass=True, seed=8, **kwargs)
    assert result.inverse_mass.shape == (10, 10)
    assert float(torch.linalg.norm(result.inverse_mass.double() - cov) / torch.linalg.norm(cov)) < 0.25
    assert float(result.step_size.mean()) > 0.5
    check_covariance(result.draws, cov)
    assert abs(float(result.accept_rate.mean()) - 0.8) < 0.05


def test_dense_mass_per_chain_equals_the_whitened_target():
    """A dense mass is the identity on w = C^-1 q: HMC with M^-1 = S (per chain, every chain the same) on N(0, S)
    takes the same steps as HMC with the identity on N(0, I) mapped by C (one seed; float32 rounding apart)."""
    log_p, cov = correlated(4, 0.8)
    factor = torch.linalg.cholesky(cov).float()
    precision = torch.linalg.inv(cov).float()
    z0 = torch.randn(6, 4, generator=torch.Generator().manual_seed(1))
    mass = precision.expand(6, 4, 4).clone()
    a = hmc(z0 @ factor.T, log_prob=lambda x: -0.5 * ((x @ precision) * x).sum(1), n_steps=5, step_size=0.3,
            n_leapfrog=4, mass=mass, dense_mass=True, seed=3)
    b = hmc(z0, log_prob=lambda z: -0.5 * z.square().sum(1), n_steps=5, step_size=0.3, n_leapfrog=4, seed=3)
    torch.testing.assert_close(a.draws, b.draws @ factor.T, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(a.inverse_mass[0].double(), cov, rtol=1e-5, atol=1e-6)


def test_chees_trajectory_length_adaptation():
    """ChEES from a trajectory of one leapfrog step (T = 0.05): on a 20-D standard normal with 256 chains the
    adapted length lands near the criterion's optimum for a jittered trajectory on a unit Gaussian (~1.2-2.3
    measured over seeds: a quarter to a third of the period 2 pi), the draws' moments are right, and the step
    size follows the target acceptance."""
    scales = torch.ones(20)
    x0 = torch.randn(256, 20, generator=torch.Generator().manual_seed(3))
    result = hmc(x0, log_prob=gaussian(scales), n_steps=200, step_size=0.05, n_leapfrog=1, adapt_steps=300,
                 adapt_length=True, seed=4)
    assert 0.8 < result.trajectory_length < 3.0
    check_moments(result.draws, scales)
    assert abs(float(result.accept_rate.mean()) - 0.8) < 0.05
    assert [_halton(i) for i in range(1, 5)] == [0.5, 0.25, 0.75, 0.125]


def test_nuts_bad_input():
    """NUTS's own arguments, and a dense mass that is not positive definite or of the wrong shape."""
    lp = gaussian(torch.ones(2))
    x0 = torch.zeros(4, 2)
    with pytest.raises(ValueError, match="max_tree_depth must be an int in \\[1, 16\\]"):
        nuts(x0, log_prob=lp, n_steps=1, max_tree_depth=0)
    with pytest.raises(ValueError, match="step_size must be finite and > 0"):
        nuts(x0, log_prob=lp, n_steps=1, step_size=-0.1)
    with pytest.raises(ValueError, match="mass must be positive definite"):
        nuts(x0, log_prob=lp, n_steps=1, mass=torch.tensor([[1.0, 2.0], [2.0, 1.0]]), dense_mass=True)
    with pytest.raises(ValueError, match="mass must be a finite symmetric matrix"):
        nuts(x0, log_prob=lp, n_steps=1, mass=torch.tensor([[1.0, 0.5], [0.0, 1.0]]), dense_mass=True)
    with pytest.raises(ValueError, match="mass \\(dense\\) must have shape \\(2, 2\\)"):
        nuts(x0, log_prob=lp, n_steps=1, mass=torch.ones(2), dense_mass=True)
    with pytest.raises(ValueError, match="adapt_length \\(ChEES\\) tunes one trajectory length"):
        hmc(x0, log_prob=lp, n_steps=1, step_size=0.1, n_leapfrog=1, adapt_length=True, adapt="per_chain")


@pytest.mark.slow
def test_nuts_on_the_funnel_without_a_tuned_step():
    """Neal's funnel (10-D), 256 chains from N(0, I), the step size adapted from 0.1 (never tuned by hand):
    non-centred, NUTS has no divergence, its acceptance is within 0.05 of the 0.9 target, and v's mean, sd and
    neck probability P(v < -4) (exactly 9.1%) are within the Bonferroni bound of their Monte Carlo SEs; centred,
    the divergences are counted and reported (the neck is the reason to reparametrize)."""
    x0 = torch.randn(256, 10, generator=torch.Generator().manual_seed(11))
    target = fastgen.targets.funnel(10, centred=False)
    result = nuts(x0, log_prob=target.log_prob, n_steps=300, adapt_steps=300, target_accept=0.9, seed=12)
    assert int(result.divergences.sum()) == 0 and abs(float(result.accept_rate.mean()) - 0.9) < 0.05
    v = result.draws[..., :1].double()
    bound = z_bound(3)
    se_mean = 3.0 / float(ess(v, method="mean"))**0.5
    assert abs(float(v.mean())) / se_mean < bound
    se_var = math.sqrt(2) * 9.0 / float(ess(v.square(), method="mean"))**0.5
    assert abs(float(v.square().mean()) - 9.0) / se_var < bound
    neck = (v < -4).double()
    exact = 0.5 * math.erfc(4 / 3 / math.sqrt(2))
    se_neck = math.sqrt(exact * (1 - exact) / float(ess(neck, method="mean")))
    assert abs(float(neck.mean()) - exact) / se_neck < bound
    with pytest.warns(RuntimeWarning, match="divergent"):
        centred = nuts(x0, log_prob=fastgen.targets.funnel(10).log_prob, n_steps=100, adapt_steps=100,
                       target_accept=0.9, seed=13)
    assert int(centred.divergences.sum()) > 0
