"""fastgen.ebm: the seeds' two-mode toy model (its four outcomes, against the gradient-flow predictions), the
replay buffer (uniform draws by chi-square, checkpoints, resumption), and the losses against closed forms."""

import itertools
import math

import pytest
import torch
from conftest import load_example
from scipy import stats

import fastgen
from fastgen.cli import toy_ebm as toy
from fastgen.mcmc import ebm

P_NULL = 1e-6  # chi-square tests reject a correct sampler with this probability
BATCH = 2048


@pytest.fixture(scope="module")
def toy_runs():
    """The four methods over the same budget: 400 updates at lr 0.1 (t = 40), batch 2048 (about 30 s)."""
    return {m: toy.run(m, 400, batch=BATCH) for m in toy.METHODS}


@pytest.mark.slow
def test_maximum_likelihood_converges_to_theta_star(toy_runs):
    assert abs(toy_runs["maximum likelihood"]["theta"][-1] - toy.THETA_STAR) < 0.05


@pytest.mark.slow
def test_score_matching_does_not_learn_the_mode_weights(toy_runs):
    assert max(abs(t - toy.THETA_0) for t in toy_runs["score matching"]["theta"]) < 0.05


@pytest.mark.slow
def test_nce_ends_at_the_derived_fixed_point_not_theta_star(toy_runs):
    end = toy_runs["NCE"]["theta"][-1]
    assert abs(end - toy.nce_fixed_point()) < 0.05
    assert abs(end - toy.THETA_STAR) > 1.0
    # the derived point zeroes the slide's flow equation; the slide's closed form does not (mu != theta*)
    def flow(theta, mu=toy.MU, theta_star=toy.THETA_STAR):
        qs, qm = toy.q(theta_star), toy.q(mu)
        e_t, e_m = math.exp(-theta), math.exp(-mu)
        return -qs + qs * e_t / (e_t + e_m) + qm * e_t / (e_t + e_m)

    assert abs(flow(toy.nce_fixed_point())) < 1e-12
    assert abs(flow(toy.lecture_nce_fixed_point())) > 0.1


@pytest.mark.slow
def test_pcd_collapses_with_walkers_stuck_in_their_modes(toy_runs):
    thetas, fractions = toy_runs["PCD"]["theta"], toy_runs["PCD"]["walker_fraction_b"]
    assert all(b < a for a, b in itertools.pairwise(thetas)), "PCD's theta must drift monotonically"
    # the flow predicts theta(0) + (q(theta(0)) - q*) t = -12 at t = 40; past theta* - 5 is far beyond any optimum
    assert thetas[-1] < toy.THETA_STAR - 5
    se = math.sqrt(toy.q(toy.THETA_0) * (1 - toy.q(toy.THETA_0)) / BATCH)
    assert abs(fractions[0] - toy.q(toy.THETA_0)) < 5 * se
    assert fractions[-1] == fractions[0], "no walker may cross between the modes"


def test_replay_buffer_draws_uniform_indices_and_reinitializations():
    buffer = ebm.ReplayBuffer(500, (3,), reinit_prob=0.2, seed=0)
    counts = torch.zeros(500)
    for _ in range(200):
        x, index = buffer.sample(100)
        counts += torch.bincount(index, minlength=500)
        buffer.write_(index, x)
    assert stats.chisquare(counts.numpy()).pvalue > P_NULL
    reinits, draws = int(buffer.reinits), int(buffer.draws)
    assert draws == 20_000
    assert stats.binomtest(reinits, draws, 0.2).pvalue > P_NULL


def test_replay_buffer_fresh_samples_come_from_init():
    buffer = ebm.ReplayBuffer(10, (2,), reinit_prob=1.0, init=lambda n: torch.full((n, 2), 7.0), seed=0)
    x, _ = buffer.sample(10)
    assert torch.equal(x, torch.full((10, 2), 7.0))
    kept = ebm.ReplayBuffer(10, (2,), reinit_prob=0.0, seed=0)
    x, index = kept.sample(10)
    assert torch.equal(x, kept.samples[index]) and float(kept.samples.abs().max()) <= 1.0


def _training(buffer: ebm.ReplayBuffer, steps: int) -> torch.Tensor:
    def energy(x):
        return 0.5 * x.square().sum(1)

    for _ in range(steps):
        x, index = buffer.sample(8)
        buffer.write_(index, ebm.langevin_negatives(energy, x, n_steps=3, step_size=0.1, seed=int(buffer.offset)))
    return buffer.samples.clone()


def test_replay_buffer_checkpoint_resumes_exactly():
    straight = _training(ebm.ReplayBuffer(32, (2,), seed=3), 10)
    first = ebm.ReplayBuffer(32, (2,), seed=3)
    _training(first, 4)
    state = first.state_dict()
    resumed = ebm.ReplayBuffer(32, (2,), seed=99)
    resumed.load_state_dict(state)
    assert torch.equal(_training(resumed, 6), straight)


def test_persistent_chains_checkpoint_resumes_exactly():
    def energy(x):
        return 0.5 * x.square().sum(1)

    a = ebm.PersistentChains(torch.zeros(16, 2), seed=1)
    for _ in range(5):
        a.step(energy, n_steps=2, step_size=0.1)
    b = ebm.PersistentChains(torch.zeros(16, 2), seed=1)
    for _ in range(2):
        b.step(energy, n_steps=2, step_size=0.1)
    c = ebm.PersistentChains(torch.ones(16, 2), seed=7)
    c.load_state_dict(b.state_dict())
    for _ in range(3):
        c.step(energy, n_steps=2, step_size=0.1)
    assert torch.equal(a.x, c.x)


class Quadratic(torch.nn.Module):
    """U(x) = |x|^2 / (2 s) with s = exp(log_s): N(0, s I)."""

    def __init__(self, log_s=0.0):
        super().__init__()
        self.log_s = torch.nn.Parameter(torch.tensor(float(log_s)))

    def forward(self, x):
        return 0.5 * x.square().sum(1) / self.log_s.exp()


def test_contrastive_loss_gradient_is_the_likelihood_gradient():
    energy = Quadratic(0.3)
    data, negatives = torch.randn(64, 2), torch.randn(64, 2) * 2
    ebm.contrastive_loss(energy, data, negatives, regularization=0.5).backward()
    s = math.exp(0.3)
    u_d, u_n = 0.5 * data.square().sum(1) / s, 0.5 * negatives.square().sum(1) / s
    # dU/dlog_s = -U
    want = (-u_d).mean() - (-u_n).mean() + 0.5 * ((2 * u_d * -u_d).mean() + (2 * u_n * -u_n).mean())
    torch.testing.assert_close(energy.log_s.grad, want)


def test_dsm_loss_is_minimized_at_the_noised_variance():
    """Data N(0, 1), sigma = 0.5: the noised data are N(0, 1.25), the DSM optimum of a Gaussian energy."""
    data = torch.randn(200_000, 1, generator=torch.Generator().manual_seed(0))
    losses = {s: ebm.dsm_loss(Quadratic(math.log(s)), data, 0.5, seed=1).item() for s in (1.0, 1.25, 1.6)}
    assert losses[1.25] < losses[1.0] and losses[1.25] < losses[1.6]


def test_nce_loss_equals_its_formula():
    energy, noise = Quadratic(0.0), torch.distributions.Normal(torch.tensor(1.0), torch.tensor(2.0))

    class Noise:
        def log_prob(self, x):
            return noise.log_prob(x[:, 0])

    data, y = torch.randn(10, 1), torch.randn(12, 1)
    got = ebm.nce_loss(energy, data, Noise(), noise_samples=y)
    logit_d = -0.5 * data[:, 0] ** 2 - noise.log_prob(data[:, 0])
    logit_y = -0.5 * y[:, 0] ** 2 - noise.log_prob(y[:, 0])
    want = -torch.log(torch.sigmoid(logit_d)).mean() - torch.log(1 - torch.sigmoid(logit_y)).mean()
    torch.testing.assert_close(got, want)


def test_kl_loss_differentiates_through_the_last_step_only():
    energy = Quadratic(0.2)
    x = torch.randn(32, 2)
    loss = ebm.kl_loss(energy, x, step_size=0.1, seed=4)
    s = math.exp(0.2)
    xi = fastgen.ops.normal(x.shape, 4, 0)
    x_next = x - 0.1 * x / s + math.sqrt(0.2) * xi
    torch.testing.assert_close(loss, (0.5 * x_next.square().sum(1) / s).mean())
    (grad,) = torch.autograd.grad(loss, energy.log_s)
    # d/dlog_s of mean U_frozen(x'(log_s)) = mean (x' / s) . (h x / s), with s frozen in U
    want = ((x_next / s) * (0.1 * x / s)).sum(1).mean()
    torch.testing.assert_close(grad, want)


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="capacity"):
        ebm.ReplayBuffer(0, (2,))
    with pytest.raises(ValueError, match="reinit_prob"):
        ebm.ReplayBuffer(10, (2,), reinit_prob=1.5)
    buffer = ebm.ReplayBuffer(10, (2,))
    with pytest.raises(ValueError, match="smaller than the batch"):
        buffer.sample(11)
    _, index = buffer.sample(4)
    with pytest.raises(ValueError, match="x must have shape"):
        buffer.write_(index, torch.zeros(4, 3))
    with pytest.raises(ValueError, match="negatives must have the sample shape"):
        ebm.contrastive_loss(Quadratic(), torch.zeros(4, 2), torch.zeros(4, 3))
    with pytest.raises(ValueError, match="energy must return shape"):
        ebm.contrastive_loss(lambda x: x, torch.zeros(4, 2), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="sigma"):
        ebm.dsm_loss(Quadratic(), torch.zeros(4, 2), 0.0)


def test_ebm_digits_example_step(tmp_path):
    pytest.importorskip("sklearn")
    example = load_example("ebm_digits")
    data = example.load_digits()
    energy = example.Energy(hidden=32)
    optimizer = torch.optim.Adam(energy.parameters(), lr=1e-3)
    buffer = ebm.ReplayBuffer(256, (64,), seed=0)
    before = buffer.samples.clone()
    e_data, e_neg = example.train_step(energy, optimizer, buffer, data[:32], seed=1, n_steps=3)
    assert math.isfinite(e_data) and math.isfinite(e_neg)
    assert not torch.equal(buffer.samples, before) and float(buffer.samples.abs().max()) <= 1.0


def test_toy_command_prints_the_table_and_plots(tmp_path, capsys):
    from fastgen.cli import main

    assert main(["toy", "ebm", "--steps", "3", "--out", str(tmp_path / "toy.png")]) == 0
    printed = capsys.readouterr().out
    assert "NCE" in printed and "derived" in printed and (tmp_path / "toy.png").stat().st_size > 0


def test_sliced_score_matching_on_an_energy_is_the_score_models():
    """ebm.ssm_loss differentiates the energy for the score: for U = |x|^2 / (2 c) it is training.ssm_loss of the
    score -x / c with the same probes, and its gradient reaches the energy's parameters."""
    c = torch.tensor(1.7, requires_grad=True)
    x = torch.randn(50, 3, generator=torch.Generator().manual_seed(0))
    for kwargs in ({}, {"variance_reduced": True}):
        got = ebm.ssm_loss(lambda v: v.square().sum(1) / (2 * c), x, seed=4, **kwargs)
        want = fastgen.training.ssm_loss(lambda v: -v / c, x, seed=4, **kwargs)
        torch.testing.assert_close(got, want)
        (grad,) = torch.autograd.grad(got, c)
        assert torch.isfinite(grad) and grad != 0
