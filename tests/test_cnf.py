"""ODE solvers (fastgen.ode), continuous normalizing flows (fastgen.cnf), likelihoods of diffusion models through
the probability-flow ODE (fastgen.likelihood) and sliced / implicit score matching, against exact answers:
closed-form linear flows, tight-tolerance reference solves, torchdiffeq on the same dynamics, the exact
log-densities of Gaussian mixtures under VP and VE noising, and the Fisher-divergence identity."""

import math

import pytest
import torch
from conftest import load_example

import fastgen
from fastgen.diffusion.training import ism_loss, ssm_loss
from fastgen.flows.continuous import CNF, ContinuousFlow, MLPDynamics
from fastgen.flows.ode import odeint
from fastgen.targets import GaussianMixture


class TimeMLP(torch.nn.Module):
    """A small nonlinear dynamics f(t, y) (t a (B,) tensor, or 0-d as torchdiffeq passes it); counts calls."""

    def __init__(self, dim=2, width=32, scale=3.0, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.net = torch.nn.Sequential(torch.nn.Linear(dim + 1, width), torch.nn.Tanh(), torch.nn.Linear(width, dim))
        self.scale, self.calls = scale, 0

    def forward(self, t, y):
        self.calls += 1
        t = t.expand(y.shape[0]) if t.dim() == 0 else t
        return self.scale * self.net(torch.cat([y, t[:, None].to(y.dtype)], 1))


def _data(n=64, dim=2, seed=1):
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ---------------------------------------------------------------- solvers


@pytest.mark.parametrize("method,order", [("euler", 1), ("midpoint", 2), ("rk4", 4)])
def test_fixed_step_methods_converge_at_their_order(method, order):
    rate = torch.linspace(0.5, 2.0, 5, dtype=torch.float64)
    y0 = _data(5, 3)
    exact = y0 * torch.exp(-rate)[:, None]
    errors = [(odeint(lambda t, y: -rate[:, None] * y, y0, method=method, steps=n) - exact).abs().max().item()
              for n in (16, 32)]
    assert abs(math.log2(errors[0] / errors[1]) - order) < 0.25


@pytest.mark.parametrize("control", ["sample", "batch"])
@pytest.mark.parametrize("tol", [1e-3, 1e-5, 1e-7])
def test_dopri5_reaches_the_requested_tolerance(control, tol):
    f, x = TimeMLP().double(), _data(128)
    reference = odeint(f, x, rtol=1e-12, atol=1e-12)
    got = odeint(f, x, rtol=tol, atol=tol, control=control)
    assert ((got - reference).abs() / (tol + tol * reference.abs())).max() < 10


def test_per_sample_control_makes_every_sample_independent_of_its_batch():
    f, x = TimeMLP().double(), _data(40)
    together = odeint(f, x, rtol=1e-6, atol=1e-6)
    alone = torch.cat([odeint(f, x[i:i + 1], rtol=1e-6, atol=1e-6) for i in range(0, 40, 7)])
    torch.testing.assert_close(together[::7], alone, rtol=1e-12, atol=1e-12)


def test_batch_control_against_torchdiffeq_on_the_same_dynamics():
    """One step size for the batch and torchdiffeq's norm: at most one step more than torchdiffeq's dopri5 (the
    last step ends at t1 rather than overshooting and interpolating) and a solution at least as accurate."""
    torchdiffeq = pytest.importorskip("torchdiffeq")
    f, x = TimeMLP().double(), _data(256)
    reference = odeint(f, x, rtol=1e-12, atol=1e-12)
    for tol in (1e-3, 1e-5, 1e-7):
        stats = {}
        ours = odeint(f, x, rtol=tol, atol=tol, control="batch", stats=stats)
        f.calls = 0
        theirs = torchdiffeq.odeint(f, x, torch.tensor([0.0, 1.0], dtype=torch.float64), rtol=tol, atol=tol)[-1]
        assert stats["nfe"] <= f.calls + 6
        assert (ours - reference).abs().max() <= (theirs - reference).abs().max()


def test_reverse_time_and_tuple_states():
    rate = torch.tensor([1.0, 2.0], dtype=torch.float64)
    y0 = _data(2, 3)
    y, total = odeint(lambda t, s: (rate[:, None] * s[0], s[0].sum(1)), (y0, torch.zeros(2, dtype=torch.float64)),
                      1.0, 0.0, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(y, y0 * torch.exp(-rate)[:, None], rtol=1e-8, atol=1e-8)
    # total(0) = -int_0^1 sum y(s) ds with y(s) = y0 exp(rate (s - 1))
    torch.testing.assert_close(total, -y0.sum(1) * (1 - torch.exp(-rate)) / rate, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("adjoint", [False, True])
@pytest.mark.parametrize("control", ["sample", "batch"])
def test_gradients_pass_gradcheck(adjoint, control):
    g = torch.Generator().manual_seed(3)
    w = torch.randn(3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    x = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)

    def f(t, y):
        return torch.tanh(y @ w.T) * (1 + t[:, None])

    def solve(x, w):
        return odeint(f, x, rtol=1e-10, atol=1e-10, control=control, adjoint=adjoint, adjoint_params=(w,))

    assert torch.autograd.gradcheck(solve, (x, w))


@pytest.mark.parametrize("method", ["euler", "rk4"])
def test_fixed_step_gradients_pass_gradcheck(method):
    g = torch.Generator().manual_seed(4)
    w = torch.randn(3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    x = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w: odeint(lambda t, y: torch.sin(y @ w), x, method=method, steps=5),
                                    (x, w))


def test_adjoint_and_backpropagation_agree_on_a_module():
    f, x = TimeMLP().double(), _data(16)
    grads = []
    for adjoint in (False, True):
        f.zero_grad()
        x_ = x.clone().requires_grad_(True)
        odeint(f, x_, rtol=1e-10, atol=1e-10, adjoint=adjoint).square().sum().backward()
        grads.append([x_.grad] + [p.grad.clone() for p in f.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_without_host_syncs_the_solve_is_the_same_and_unfinished_samples_are_nan():
    f, x = TimeMLP().double(), _data(32)
    stats = {}
    synced = odeint(f, x, rtol=1e-5, atol=1e-5, stats=stats)
    free = odeint(f, x, rtol=1e-5, atol=1e-5, sync_every=0, max_steps=stats["attempts"])
    torch.testing.assert_close(free, synced, rtol=0, atol=0)
    short = odeint(f, x, rtol=1e-5, atol=1e-5, sync_every=0, max_steps=2)
    stats_short = {}
    odeint(f, x, rtol=1e-5, atol=1e-5, sync_every=0, max_steps=2, stats=stats_short)
    done = stats_short["done"]
    assert 0 < done.sum() < len(done) or not done.any()
    assert torch.isnan(short[~done]).all() and not torch.isnan(short[done]).any()


def test_bad_input_and_failures_are_clear_errors():
    f, x = TimeMLP().double(), _data(4)
    with pytest.raises(ValueError, match="f must return"):
        odeint(lambda t, y: y[:, :1], x)
    with pytest.raises(ValueError, match="y0 must be finite"):
        odeint(f, torch.full((2, 2), float("nan"), dtype=torch.float64))
    with pytest.raises(ValueError, match="method"):
        odeint(f, x, method="rk45")
    with pytest.raises(ValueError, match="steps"):
        odeint(f, x, method="rk4")
    with pytest.raises(ValueError, match="control"):
        odeint(f, x, control="global")
    with pytest.raises(ValueError, match="adjoint_params"):
        odeint(lambda t, y: -y, x, adjoint=True)
    with pytest.raises(RuntimeError, match="max_steps"):
        odeint(f, x, rtol=1e-9, atol=1e-9, max_steps=3)
    with pytest.raises(FloatingPointError, match="non-finite for 2 sample"):
        odeint(lambda t, y: torch.where((t[:, None] > 0.3) & (y < 0), y * math.inf, y), torch.tensor(
            [[1.0], [-1.0], [-2.0]], dtype=torch.float64), check_finite=True)
    with pytest.raises(RuntimeError, match=r"underflowed for 3 sample\(s\), at t in \[0.5"):  # y' = y^2: y(1/2) = inf
        odeint(lambda t, y: y.square(), torch.full((3, 1), 2.0, dtype=torch.float64))


# ---------------------------------------------------------------- continuous flows


def _random_cnf(**options):
    torch.manual_seed(0)
    cnf = CNF(MLPDynamics(2, (32, 32), torch.nn.Tanh), event_shape=(2,), **options)
    with torch.no_grad():
        for p in cnf.parameters():
            p.mul_(2.0)  # a flow far from the identity
    return cnf


def test_cnf_density_integrates_to_one():
    cnf, n, half = _random_cnf(), 161, 7.0
    grid = torch.linspace(-half, half, n)
    points = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 2)
    with torch.no_grad():
        mass = cnf.log_prob(points).exp().sum() * (2 * half / (n - 1)) ** 2
    assert abs(mass.item() - 1) < 0.01


def test_cnf_linear_dynamics_have_closed_form_log_det_and_regularizers():
    class Linear(torch.nn.Module):
        def forward(self, t, x):
            return 0.3 * x

    flow = ContinuousFlow(Linear(), T=2.0, kinetic=1.0, jacobian=0.0, rtol=1e-9, atol=1e-9)
    x = _data(6, 3)
    z, log_det, kinetic = flow.forward_with_regularization(x)
    torch.testing.assert_close(z, x * math.exp(0.6))
    torch.testing.assert_close(log_det, torch.full((6,), 0.3 * 3 * 2.0, dtype=torch.float64))
    # int_0^2 |0.3 x e^{0.3 t}|^2 dt = 0.09 |x|^2 (e^{1.2} - 1) / 0.6
    torch.testing.assert_close(kinetic, 0.09 * x.square().sum(1) * (math.exp(1.2) - 1) / 0.6)
    flow.kinetic, flow.jacobian = 0.0, 1.0
    torch.testing.assert_close(flow.forward_with_regularization(x)[2], torch.full((6,), 0.09 * 3 * 2.0,
                                                                                 dtype=torch.float64))
    torch.testing.assert_close(flow.inverse(z), x)


def test_cnf_sampling_and_its_log_prob_match_the_forward_direction():
    cnf = _random_cnf(rtol=1e-7, atol=1e-7)
    x, log_prob = cnf.rsample_and_log_prob(50, seed=3)
    torch.testing.assert_close(cnf.sample(50, seed=3), x.detach())
    torch.testing.assert_close(log_prob, cnf.log_prob(x.detach()), rtol=1e-4, atol=1e-4)


def test_cnf_hutchinson_log_prob_is_unbiased_and_fixed_per_seed():
    exact = _random_cnf()
    x = exact.sample(20, seed=0)
    truth = exact.log_prob(x).detach()
    draws = []
    for seed in range(30):
        hutch = _random_cnf(divergence="hutchinson", noise="gaussian", seed=seed)
        draws.append(hutch.log_prob(x).detach())
        if seed == 0:
            torch.testing.assert_close(hutch.log_prob(x).detach(), draws[0])
    diff = torch.stack(draws).mean(0) - truth  # per sample: mean over 30 solves
    se = torch.stack(draws).std(0) / math.sqrt(30)
    assert (diff.abs() < 4.5 * se + 1e-4).all()


@pytest.mark.slow
def test_ffjord_example_learns_eight_gaussians_to_within_a_third_of_a_nat():
    """examples/ffjord_2d.py, 300 steps of a 2-32-32-2 dynamics (about 20 s): FFJORD by maximum likelihood (exact
    divergence, RK4 with 6 steps), evaluated by dopri5 at 1e-5 on held-out points: the cross-entropy is within
    0.3 nats of the exact entropy (the gap is KL(data || model) >= 0)."""
    example = load_example("ffjord_2d")
    cnf = example.train("eight_gaussians", 300, hidden=(32, 32), seed=0)
    held_out = example.data("eight_gaussians", 2000, seed=10_000)
    with torch.no_grad():
        cross_entropy = -cnf.log_prob(held_out).mean().item()
    assert cross_entropy - example.exact_entropy("eight_gaussians", held_out) < 0.3


def test_cnf_adjoint_gradients_match_backpropagation():
    x = _data(32).float()
    grads = []
    for adjoint in (False, True):
        cnf = _random_cnf(adjoint=adjoint, rtol=1e-7, atol=1e-7, kinetic=0.1)
        log_prob, reg = cnf.log_prob_and_regularization(x)
        (-(log_prob - reg).mean()).backward()
        grads.append([p.grad for p in cnf.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=2e-3, atol=2e-4)


def test_cnf_bad_input():
    with pytest.raises(TypeError, match="dynamics"):
        CNF(lambda t, x: x, event_shape=(2,))
    with pytest.raises(ValueError, match="divergence"):
        CNF(MLPDynamics(2), event_shape=(2,), divergence="trace")
    with pytest.raises(ValueError, match="kinetic"):
        CNF(MLPDynamics(2), event_shape=(2,), kinetic=-1.0)
    with pytest.raises(ValueError, match="x must have shape"):
        CNF(MLPDynamics(2), event_shape=(2,)).log_prob(torch.zeros(4, 3))


# ---------------------------------------------------------------- likelihoods of diffusion models


def _mixture(dim):
    g = torch.Generator().manual_seed(dim)
    return GaussianMixture(torch.randn(4, dim, generator=g, dtype=torch.float64) * 1.5,
                           stds=0.5 + torch.rand(4, dim, generator=g, dtype=torch.float64),
                           weights=torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64))


def _exact_prior(gmm, sde):
    alpha, sigma = sde.marginal(torch.tensor(sde.T, dtype=torch.float64))
    return lambda z: gmm.noised_log_prob(z, alpha, sigma)


@pytest.mark.parametrize("dim", [2, 8])
@pytest.mark.parametrize("process", ["vp", "ve"])
def test_likelihood_matches_the_exact_mixture_density(dim, process):
    """The probability-flow ODE with the exact noised scores (and the exact p_T as prior, so only the solve and
    the divergence are tested) gives the mixture's density at t = eps, for every prediction type."""
    gmm, sde = _mixture(dim), (fastgen.VPSDE() if process == "vp" else fastgen.VESDE(sigma_max=50.0))
    x = gmm.sample(100, seed=1, dtype=torch.float64)
    eps = 1e-5
    alpha, sigma = sde.marginal(torch.tensor(eps, dtype=torch.float64))
    exact = gmm.noised_log_prob(x, alpha, sigma)
    predictions = ["score", "eps", "x0", "v"] if process == "vp" else ["score", "eps", "x0"]
    for prediction in predictions if dim == 2 else ["eps"]:
        result = fastgen.likelihood(gmm.model(sde, prediction), x, sde=sde, prediction=prediction, method="exact",
                                    eps=eps, rtol=1e-6, atol=1e-6, prior=_exact_prior(gmm, sde))
        assert (result.log_prob - exact).abs().max() < 0.01
        torch.testing.assert_close(result.bits_per_dim, -result.log_prob / (dim * math.log(2)))
    hutchinson = torch.stack([
        fastgen.likelihood(gmm.model(sde), x, sde=sde, seed=s, rtol=1e-6, atol=1e-6,
                           prior=_exact_prior(gmm, sde)).log_prob for s in range(3)]).mean(0)
    diff = hutchinson - exact
    assert diff.mean().abs() < 4 * diff.std() / math.sqrt(len(diff))


def test_likelihood_dequantization_is_the_density_of_the_jittered_data_plus_the_bin_volume():
    gmm, sde = _mixture(2), fastgen.VPSDE()
    levels = 256
    delta = 2 / (levels - 1)
    x = (torch.round((gmm.sample(20, seed=3, dtype=torch.float64).clamp(-1, 1) + 1) / delta) * delta - 1)
    got = fastgen.likelihood(gmm.model(sde), x, sde=sde, method="exact", seed=7, dequantize=levels)
    jitter = delta * (fastgen.ops.uniform(x.shape, 7, 0).double() - 0.5)
    plain = fastgen.likelihood(gmm.model(sde), x + jitter, sde=sde, method="exact")
    torch.testing.assert_close(got.log_prob, plain.log_prob + 2 * math.log(delta))


def test_likelihood_bad_input():
    gmm, sde = _mixture(2), fastgen.VPSDE()
    x = gmm.sample(4, seed=0)
    with pytest.raises(TypeError, match="sde"):
        fastgen.likelihood(gmm.model(sde), x, sde=fastgen.DDPMSchedule())
    with pytest.raises(ValueError, match="model must return"):
        fastgen.likelihood(lambda x, t: x[:, :1], x, sde=sde)
    with pytest.raises(ValueError, match="eps"):
        fastgen.likelihood(gmm.model(sde), x, sde=sde, eps=0.0)
    with pytest.raises(ValueError, match="prediction 'v'"):
        fastgen.likelihood(gmm.model(sde), x, sde=fastgen.VESDE(), prediction="v")
    with pytest.raises(ValueError, match="x must be finite"):
        fastgen.likelihood(gmm.model(sde), x * float("nan"), sde=sde)
    with pytest.raises(ValueError, match="probes"):
        fastgen.likelihood(gmm.model(sde), x, sde=sde, probes=0)


# ---------------------------------------------------------------- score matching


def test_sliced_score_matching_estimates_implicit_score_matching():
    """E_v[SSM] = E_v[SSM-VR] = ISM for any score model; each a mean over 200 seeds within 4 standard errors."""
    g = torch.Generator().manual_seed(5)
    a = torch.randn(3, 3, generator=g, dtype=torch.float64)
    x = torch.randn(64, 3, generator=g, dtype=torch.float64)

    def score(v):
        return torch.tanh(v @ a.T) - v

    target = ism_loss(score, x).item()
    for kwargs in ({}, {"variance_reduced": True}, {"noise": "gaussian"}):
        draws = torch.tensor([ssm_loss(score, x, seed=s, **kwargs).item() for s in range(200)])
        assert abs(draws.mean() - target) < 4 * draws.std() / math.sqrt(200) + 1e-9


def test_implicit_score_matching_is_minimized_by_the_true_score():
    """For N(0, I) data and models s(x) = -c x, ISM = -c D + c^2 E|x|^2 / 2, minimized at c = 1."""
    x = torch.randn(4000, 3, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    for c in (0.5, 1.0, 1.5):
        torch.testing.assert_close(ism_loss(lambda v: -c * v, x).item(),
                                   -3 * c + 0.5 * c * c * x.square().sum(1).mean().item())


@pytest.mark.slow
def test_ffjord_digits_example_learns_within_a_few_steps():
    """examples/ffjord_digits.py, 100 steps of a 64-64-64-64 dynamics with Hutchinson probes (about 10 s): the
    held-out bits/dim fall below a uniform model's log2(17) (the untrained flow, a standard normal, is at 4.7)."""
    example = load_example("ffjord_digits")
    cnf, held_out = example.train(100, hidden=64, seed=0)
    cnf.flow.solver.update(rtol=1e-3, atol=1e-3)
    assert example.held_out_bits_per_dim(cnf, held_out, probes=1) < math.log2(17)


@pytest.mark.parametrize("control", ["sample", "batch"])
def test_nan_dynamics_stop_the_solve_at_once_and_name_the_sample(control):
    """f returning NaN at the start (the step size from it is NaN too) used to spin to max_steps and then report
    "did not reach t1"; now the sample stops at its first attempt and the error names it."""
    y0 = torch.ones(4, 2, dtype=torch.float64)

    def f(t, y):
        return torch.where(torch.arange(4)[:, None] == 2, math.nan, -y)

    stats = {}
    with pytest.raises(FloatingPointError, match="non-finite for 1 sample" + (r"\(s\), the first sample 2 at t = 0"
                                                                            if control == "sample" else "")):
        odeint(f, y0, control=control, stats=stats)
    if control == "sample":  # the others solve on; the bad one never attempted a step
        assert int(stats["accepted"][2]) == int(stats["rejected"][2]) == 0 and bool(stats["done"][[0, 1, 3]].all())
    else:
        assert stats["attempts"] == 1
    dynamics = MLPDynamics(2, (8,), torch.nn.Tanh)
    with torch.no_grad():
        dynamics.layers[-1].bias.fill_(math.nan)
    with pytest.raises(FloatingPointError, match="non-finite"):
        CNF(dynamics, event_shape=(2,)).log_prob(torch.zeros(3, 2))
