"""fastgen.flows: the flow convention, and residual flows (i-ResNet blocks) against exact answers: the
inverse, the Russian-roulette log-det estimator against the exact log-det (small D), the Neumann-series
gradient against the gradient of the exact log-det, and the roulette length drawn from fastgen's stream."""

import math

import pytest
import torch
from torch import nn

import fastgen
from fastgen.flows import Flow, ResidualBlock, ResidualFlow
from fastgen.flows.residual import kept_probability, roulette_length
from fastgen.rng import reserve

from conftest import load_example

Z_MAX = 5.0  # |mean - exact| / standard error: two-sided p < 6e-7 per coordinate under the null


def _block(dim: int, seed: int = 0, lipschitz: float = 0.9, **options) -> ResidualBlock:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(dim, 16), nn.Tanh(), nn.Linear(16, dim))  # Lip(g) <= c^2, J far from 0
    block = ResidualBlock(net, lipschitz=lipschitz, seed=seed, **options)
    block.eval()  # no power-iteration step: the map stays fixed across the many draws below
    return block


@pytest.mark.parametrize("dim", [1, 2, 8])
def test_inverse_of_forward_is_the_identity(dim):
    flow = ResidualFlow(dim, blocks=3, hidden=32, seed=1)
    x = torch.randn(64, dim, generator=torch.Generator().manual_seed(2)) * 2
    z, _ = flow.transform(x)
    back = z
    for block in reversed(flow.transforms):
        back = block.inverse(back)
    torch.testing.assert_close(back, x, rtol=0, atol=1e-4)


@pytest.mark.parametrize("dim", [2, 5, 8])
def test_log_det_estimate_is_unbiased(dim):
    block = _block(dim)
    x = torch.randn(6, dim, generator=torch.Generator().manual_seed(3))
    block.exact = True
    with torch.no_grad():
        exact = block(x)[1]
    block.exact = False
    draws = 3000
    with torch.no_grad():
        estimates = torch.stack([block(x, seed=s)[1] for s in range(draws)]).double()
    mean, se = estimates.mean(0), estimates.std(0) / math.sqrt(draws)
    z = (mean - exact.double()).abs() / se
    assert exact.abs().min() > 0.05, "the test needs log-dets well away from 0"
    assert (z < Z_MAX).all(), f"z-scores {z.tolist()} (mean {mean.tolist()}, exact {exact.tolist()})"


def _flat_grad(value, params):
    grads = torch.autograd.grad(value, params, allow_unused=True)  # the last bias does not move the log-det
    return torch.cat([(torch.zeros_like(p) if g is None else g).flatten() for g, p in zip(grads, params)])


def test_neumann_gradient_agrees_with_the_gradient_of_the_exact_log_det():
    dim = 3
    block = _block(dim, seed=4)
    params = [p for p in block.parameters() if p.requires_grad]
    x = torch.randn(4, dim, generator=torch.Generator().manual_seed(5))
    block.exact = True
    exact = _flat_grad(block(x)[1].sum(), params)
    block.exact = False
    draws = 1500
    grads = torch.stack([_flat_grad(block(x, seed=s)[1].sum(), params) for s in range(draws)]).double()
    mean, se = grads.mean(0), grads.std(0) / math.sqrt(draws)
    moving = se > 0
    z = (mean - exact.double())[moving].abs() / se[moving]
    assert (z < Z_MAX + math.sqrt(2 * math.log(len(z)))).all(), f"largest z-score {z.max():.2f} of {len(z)}"
    # and x's gradient, for stacked blocks
    xg = x.clone().requires_grad_()
    block.exact = True
    exact_x = torch.autograd.grad(block(xg)[1].sum(), xg)[0]
    block.exact = False
    grads_x = torch.stack([torch.autograd.grad(block(xg, seed=s)[1].sum(), xg)[0] for s in range(draws)]).double()
    z = (grads_x.mean(0) - exact_x.double()).abs() / (grads_x.std(0) / math.sqrt(draws))
    assert (z < Z_MAX).all(), f"x-gradient z-scores {z.tolist()}"


def _graph_size(t: torch.Tensor) -> int:
    nodes, stack = set(), [t.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is not None and fn not in nodes:
            nodes.add(fn)
            stack.extend(next_fn for next_fn, _ in fn.next_functions)
    return len(nodes)


def test_the_series_graph_is_not_kept():
    """Only one vector-Jacobian product keeps a graph: the backward's graph does not grow with the series length."""
    x = torch.randn(3, 4)
    many = _graph_size(_block(4, n_exact=40)(x, seed=0)[1])  # 40 terms at least
    few = _graph_size(_block(4, n_exact=1)(x, seed=0)[1])
    assert many <= few + 2, f"graph of {many} nodes with 40 terms against {few} with 1"


def test_roulette_length_and_probe_come_from_the_noise_stream():
    block = _block(3)
    x = torch.randn(5, 3)
    for seed in (0, 7, 2**62):
        probe, length = block._draw(x, seed)
        torch.testing.assert_close(probe, fastgen.ops.normal(x.shape, seed, 0))
        u = float(fastgen.ops.uniform((1,), seed, reserve(x.numel())))
        assert length == 2 + math.floor(math.log1p(-u) / math.log1p(-0.5))
    lengths = torch.tensor([roulette_length(s, 0, 2, 0.5) for s in range(4000)], dtype=torch.float64)
    assert lengths.min() >= 2
    # N - 2 ~ Geometric(1/2): mean 1, variance 2
    assert abs(float(lengths.mean()) - 3.0) < Z_MAX * math.sqrt(2 / 4000)
    assert kept_probability(2, 2, 0.5) == 1.0 and kept_probability(5, 2, 0.5) == 0.125
    a, b = block(x)[1], block(x)[1]  # successive calls draw fresh probes
    assert not torch.equal(a, b)


def test_flow_is_a_distribution():
    flow = ResidualFlow(2, blocks=2, hidden=16, seed=3)
    assert isinstance(flow, torch.distributions.Distribution) and flow.event_shape == (2,)
    x = flow.sample((7,))
    assert x.shape == (7, 2) and torch.isfinite(flow.log_prob(x)).all()
    for block in flow.transforms:
        block.exact = True
    # log p integrates to about 1 over a grid (a check of signs and of the base term)
    grid = torch.stack(torch.meshgrid(torch.linspace(-7, 7, 141), torch.linspace(-7, 7, 141), indexing="ij"), -1)
    with torch.no_grad():
        mass = flow.log_prob(grid.reshape(-1, 2)).exp().sum() * 0.1**2
    assert abs(float(mass) - 1.0) < 0.02
    with pytest.raises(ValueError, match="x must have shape"):
        flow.log_prob(torch.zeros(3, 5))


def test_bad_options_name_the_argument():
    net = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="lipschitz"):
        ResidualBlock(net, lipschitz=1.0)
    with pytest.raises(ValueError, match="n_exact"):
        ResidualBlock(nn.Linear(2, 2), n_exact=0)
    with pytest.raises(ValueError, match="p must"):
        ResidualBlock(nn.Linear(2, 2), p=1.0)
    with pytest.raises(ValueError, match="dim"):
        ResidualFlow(0)
    with pytest.raises(ValueError, match="event_shape"):
        Flow([])


def test_residual_flow_example_learns_two_moons():
    """examples/residual_flow_2d.py, 300 steps (about 7 s): the exact test log-likelihood rises by more than
    0.3 nats from the initial flow (about -2.3 nats; a Gaussian fit of the data reaches -1.90)."""
    example = load_example("residual_flow_2d")
    start = example.test_log_likelihood(example.train("two_moons", 0, seed=0), "two_moons")
    trained = example.test_log_likelihood(example.train("two_moons", 300, seed=0), "two_moons")
    assert trained > start + 0.3, f"test log-likelihood {start:.3f} -> {trained:.3f}"
