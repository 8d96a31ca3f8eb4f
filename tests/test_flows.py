"""fastgen.flows: the flow convention, and residual flows (i-ResNet blocks) against exact answers: the
inverse, the Russian-roulette log-det estimator against the exact log-det (small D), the Neumann-series
gradient against the gradient of the exact log-det, and the roulette length drawn from fastgen's stream."""

import math

import pytest
import torch
from conftest import load_example
from torch import nn

import fastgen
from fastgen.core.rng import reserve
from fastgen.flows import Flow, ResidualBlock, ResidualFlow
from fastgen.flows.residual import kept_probability, roulette_length

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
    return torch.cat([(torch.zeros_like(p) if g is None else g).flatten() for g, p in zip(grads, params, strict=True)])


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


@pytest.mark.slow
def test_residual_flow_example_learns_two_moons():
    """examples/residual_flow_2d.py, 300 steps (about 7 s): the exact test log-likelihood rises by more than
    0.3 nats from the initial flow (about -2.3 nats; a Gaussian fit of the data reaches -1.90)."""
    example = load_example("residual_flow_2d")
    start = example.test_log_likelihood(example.train("two_moons", 0, seed=0), "two_moons")
    trained = example.test_log_likelihood(example.train("two_moons", 300, seed=0), "two_moons")
    assert trained > start + 0.3, f"test log-likelihood {start:.3f} -> {trained:.3f}"


# ---------------------------------------------------------------- every transform of fastgen.flows


def _randomized(transform: nn.Module, std: float = 0.3, seed: int = 0) -> nn.Module:
    """The transform with every parameter drawn at random (not the identity start)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in transform.parameters():
            p.copy_(std * torch.randn(p.shape, generator=g))
    return transform


def _transforms(features: int):
    from fastgen.flows import (
        AffineCoupling,
        InverseAutoregressive,
        MaskedAutoregressive,
        Planar,
        Radial,
        Reverse,
        SplineCoupling,
        Sylvester,
    )
    return {
        "affine": AffineCoupling(features, hidden=(16,)),
        "affine_sigmoid": AffineCoupling(features, hidden=(16,), scale="sigmoid"),
        "spline": SplineCoupling(features, hidden=(16,), bins=5, bound=3.0),
        "maf": MaskedAutoregressive(features, hidden=(16, 16)),
        "iaf": InverseAutoregressive(features, hidden=(16, 16)),
        "planar": Planar(features),
        "radial": Radial(features),
        "sylvester_householder": Sylvester(features),
        "sylvester_triangular": Sylvester(features, kind="triangular", reverse=True),
        "reverse": Reverse(),
    }


@pytest.mark.parametrize("name", list(_transforms(2)))
@pytest.mark.parametrize("features", [2, 5, 8])
def test_every_transform_inverts_and_its_log_det_is_the_jacobians(name, features):
    """With random parameters: inverse(forward(x)) = x within 1e-5 (float32, inputs to 1e2; the autoregressive and
    coupling shifts grow with x, and (y - t) loses float32 digits to them beyond), the forward log|det| and the
    sampling pass's (inverse_and_log_det) equal log|det| of autograd's Jacobian within 1e-4, and gradcheck holds in
    float64 through both directions. Two layers take inputs to 10 and conditioner weights of std 0.1 rather than
    0.3 for the float32 check, since their conditioners' logits grow with the input: Glow's sigmoid scale underflows
    for logits below about -16, and a spline whose logits reach 25 gets bins so flat (slope 5e-5) that one float32
    step of y spans 1e-3 of x — for any float32 implementation (the ops themselves take inputs to 1e4: see
    tests/test_coupling.py). With the larger weights and inputs the spline's inverse(forward(x)) = x holds within
    1e-9 in float64."""
    torch.manual_seed(features)
    conditioned = name in ("spline", "affine_sigmoid")
    layer = _randomized(_transforms(features)[name], std=0.1 if conditioned else 0.3, seed=features)
    x = torch.randn(64, features) * torch.logspace(-1, 1 if conditioned else 2, 64)[:, None]
    z, log_det = layer(x)
    assert z.shape == x.shape and log_det.shape == (64,)
    torch.testing.assert_close(layer.inverse(z), x, rtol=1e-5, atol=1e-5)
    if name == "spline":
        exact = _randomized(_transforms(features)[name], seed=features).double()
        wide = x.double() * 10
        torch.testing.assert_close(exact.inverse(exact(wide)[0]), wide, rtol=1e-9, atol=1e-9)
    for v in x[:6:2]:
        jac = torch.autograd.functional.jacobian(lambda u: layer(u[None])[0][0], v)
        torch.testing.assert_close(layer(v[None])[1][0], torch.linalg.slogdet(jac)[1], rtol=1e-4, atol=1e-4)
        u = layer(v[None])[0]
        back, forward_log_det = layer.inverse_and_log_det(u)
        torch.testing.assert_close(back[0], v, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(forward_log_det[0], torch.linalg.slogdet(jac)[1], rtol=1e-4, atol=1e-4)
    double = layer.double()
    inputs = (torch.randn(3, features, dtype=torch.float64, requires_grad=True),)
    assert torch.autograd.gradcheck(lambda v: double(v), inputs)
    assert torch.autograd.gradcheck(lambda v: double.inverse_and_log_det(v), inputs)
    params = list(double.parameters())
    if params:  # the parameters get gradients too (they train)
        out, ld = double(inputs[0].detach())
        grads = torch.autograd.grad(out.sum() + ld.sum(), params, allow_unused=True)
        assert any(g is not None and bool(g.abs().sum() > 0) for g in grads)


def test_made_is_autoregressive():
    """Every output block of MADE at feature i depends on x_<i only: the Jacobian of each block is strictly lower
    triangular (checked with random weights, where nothing vanishes by accident)."""
    from fastgen.flows import MADE

    made = _randomized(MADE(6, hidden=(32, 32), outputs=3), std=0.5)
    jac = torch.autograd.functional.jacobian(lambda v: made(v[None])[0], torch.randn(6))
    for block in jac.reshape(3, 6, 6):
        assert torch.equal(block.triu() != 0, torch.zeros(6, 6, dtype=torch.bool))
        assert (block.tril(-1) != 0).sum() >= 10  # and it does depend on the earlier features


def test_iaf_and_coupling_log_densities_from_the_sampling_pass_equal_log_prob():
    """Flow.rsample_and_log_prob takes log-dets on the sampling pass (one pass for IAF and couplings); they equal
    log_prob of the draws (the density direction) within float32."""
    from fastgen.flows import IAF, MAF, NSF, RealNVP

    for flow in (IAF(3, layers=3, hidden=(16,)), MAF(3, layers=2, hidden=(16,)), RealNVP(3, layers=3, hidden=(16,)),
                 NSF(3, layers=2, hidden=(16,), bins=4, bound=3.0)):
        _randomized(flow, std=0.2)
        x, log_prob = flow.rsample_and_log_prob(256, seed=1)
        with torch.no_grad():
            torch.testing.assert_close(log_prob, flow.log_prob(x), rtol=1e-4, atol=1e-4)


def test_non_invertible_planar_and_radial_parameters_are_errors():
    from fastgen.flows import Planar, Radial

    planar = Planar(3, reparametrize=False)
    with torch.no_grad():
        planar.w.copy_(torch.tensor([1.0, 0.0, 0.0]))
        planar.u.copy_(torch.tensor([-2.0, 0.0, 0.0]))
    with pytest.raises(ValueError, match=r"planar parameters are not invertible: w.u = -2 < -1"):
        planar(torch.randn(4, 3))
    Planar(3).u.data.copy_(torch.tensor([-2.0, 0.0, 0.0]))  # reparametrized: fine
    radial = Radial(3, reparametrize=False)
    with torch.no_grad():
        radial.b.fill_(-5.0)
    with pytest.raises(ValueError, match="radial parameters are not invertible: beta = -5 < -alpha"):
        radial.inverse(torch.randn(4, 3))
    with pytest.raises(ValueError, match=r"x must have shape \(B, 3\)"):
        Planar(3)(torch.randn(4, 2))
    with pytest.raises(ValueError, match="features must be an int >= 1"):
        Radial(0)


def test_reparametrized_planar_and_radial_stay_invertible_for_any_parameters():
    """With reparametrize on, parameters far into the non-invertible region still give an invertible map."""
    from fastgen.flows import Planar, Radial

    x = torch.randn(32, 4, dtype=torch.float64)
    planar, radial = Planar(4).double(), Radial(4).double()
    with torch.no_grad():
        planar.w.copy_(torch.tensor([1.0, 0.5, 0.0, 0.0]))
        planar.u.copy_(torch.tensor([-30.0, -10.0, 0.0, 0.0]))
        radial.a.fill_(2.0)
        radial.b.fill_(-40.0)
    for layer in (planar, radial):
        z, _ = layer(x)
        torch.testing.assert_close(layer.inverse(z), x)
        assert torch.isfinite(layer(x)[1]).all()


@pytest.mark.slow
@pytest.mark.parametrize("flow,steps,within", [("nsf", 800, 0.15), ("maf", 800, 0.5)])
def test_flow_example_learns_eight_gaussians_and_its_density_integrates_to_one(flow, steps, within):
    """examples/flows_2d.py: an NSF (4 spline couplings, 8 bins) trained by maximum likelihood on the 8-Gaussian
    target for 800 steps (fixed seed, about 20 s) comes within 0.15 nats of the target's exact entropy on held-out
    data (the gap is KL(data || model) >= 0); a MAF (8 layers) within 0.5; both densities integrate to 1 within 1%
    on a grid."""
    from fastgen.targets import toy_2d, toy_2d_entropy

    model = load_example("flows_2d").train("eight_gaussians", steps, flow=flow, seed=0)
    held_out = toy_2d("eight_gaussians", 20000, seed=1)
    with torch.no_grad():
        nll = -float(model.log_prob(held_out).double().mean())
        assert nll - toy_2d_entropy("eight_gaussians", held_out) < within, nll
        side = torch.linspace(-4.5, 4.5, 451)
        grid = torch.stack(torch.meshgrid(side, side, indexing="ij"), -1).reshape(-1, 2)
        mass = model.log_prob(grid).double().exp().sum() * (side[1] - side[0]) ** 2
    assert abs(float(mass) - 1) < 0.01, float(mass)


# ---------------------------------------------------------------- Glow


def _image_transforms():
    from fastgen.flows import ActNorm, ChannelCoupling, InvConv1x1LU, Split, Squeeze, Unsqueeze, gaussian_prior

    return {
        "actnorm": ActNorm(2),
        "invconv": InvConv1x1LU(2, seed=3),
        "coupling": ChannelCoupling(2, hidden=8),
        "coupling_soft_clamp": ChannelCoupling(2, hidden=8, scale="soft_clamp"),
        "squeeze": Squeeze(),
        "squeeze_unsqueeze": Split(1, [Squeeze(), ActNorm(4), Unsqueeze()]),
        "split": Split(1, [ActNorm(1), InvConv1x1LU(1)]),
        # the prior's default clamp 5 allows scales to e^5: its float32 inverse of inputs to 1e2 then loses more
        # than 1e-5 (conditioning); clamp 2 as the coupling's soft clamp
        "split_prior": Split(1, [ActNorm(1), InvConv1x1LU(1)], prior=gaussian_prior(2, 1, clamp=2.0)),
    }


@pytest.mark.parametrize("name", list(_image_transforms()))
def test_glow_layers_invert_and_their_log_dets_are_the_jacobians(name):
    """Each Glow layer on (B, 2, 2, 2) (D = 8) with random parameters: inverse(forward(x)) = x within 1e-5 for
    inputs to 1e2, log|det| forward and from the sampling pass equal to autograd's Jacobian within 1e-4, gradcheck
    in float64."""
    # the couplings' conditioners take weights of std 0.1, and Glow's sigmoid scale inputs to 10, as in
    # test_every_transform_inverts_and_its_log_det_is_the_jacobians (logits below about -16 underflow the scale)
    std = 0.1 if name.startswith(("coupling", "split_prior")) else 0.3
    layer = _randomized(_image_transforms()[name], std=std, seed=1)
    layer.eval()  # ActNorm: no data-dependent initialization here (its own test below)
    x = torch.randn(16, 2, 2, 2, generator=torch.Generator().manual_seed(0)) * torch.logspace(-1, 2, 16)[
        :, None, None, None]
    if name == "coupling":
        x = x.clamp(-10, 10)
    z, log_det = layer(x)
    torch.testing.assert_close(layer.inverse(z), x, rtol=1e-5, atol=1e-5)
    for v in x[:3]:
        jac = torch.autograd.functional.jacobian(lambda u: layer(u.reshape(1, 2, 2, 2))[0].reshape(-1),
                                                 v.reshape(-1))
        want = torch.linalg.slogdet(jac)[1]
        torch.testing.assert_close(layer(v[None])[1][0], want, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(layer.inverse_and_log_det(layer(v[None])[0])[1][0], want, rtol=1e-4, atol=1e-4)
    double = layer.double()
    inputs = (torch.randn(2, 2, 2, 2, dtype=torch.float64, requires_grad=True),)
    assert torch.autograd.gradcheck(lambda v: double(v), inputs)
    outputs = (double(inputs[0])[0].detach().requires_grad_(),)
    assert torch.autograd.gradcheck(lambda v: double.inverse(v), outputs)


def test_actnorm_initializes_from_the_first_batch():
    """The first forward call in training mode sets the parameters so that the output has zero mean and unit
    variance per channel; later calls keep them; an eval-mode first call does not initialize."""
    from fastgen.flows import ActNorm

    layer = ActNorm(3)
    x = torch.randn(64, 3, 4, 4) * torch.tensor([0.1, 2.0, 30.0])[:, None, None] + torch.tensor([5.0, -1.0, 0.0])[
        :, None, None]
    z, log_det = layer(x)
    torch.testing.assert_close(z.mean((0, 2, 3)), torch.zeros(3), rtol=0, atol=1e-5)
    torch.testing.assert_close(z.std((0, 2, 3), unbiased=False), torch.ones(3), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(log_det, torch.full((64,), float(-16 * torch.log(x.std((0, 2, 3), unbiased=False))
                                                                .sum())), rtol=1e-4, atol=1e-4)
    before = layer.log_scale.detach().clone()
    layer(x * 2)
    assert torch.equal(layer.log_scale.detach(), before)
    fresh = ActNorm(3).eval()
    assert torch.equal(fresh(x)[0], x)


def test_glow_inverts_and_its_log_det_is_the_jacobians():
    """A whole multiscale Glow on (1, 4, 4) (two levels, a split between them) with random parameters."""
    from fastgen.flows import Glow

    glow = Glow((1, 4, 4), levels=2, depth=2, hidden=8)
    glow.log_prob(torch.randn(32, 1, 4, 4))  # ActNorm's initialization
    _randomized(glow, std=0.1, seed=2)
    x = torch.randn(8, 1, 4, 4)
    z, log_det = glow.transform(x)
    back = z
    for t in reversed(glow.transforms):
        back = t.inverse(back)
    torch.testing.assert_close(back, x, rtol=1e-5, atol=1e-5)
    jac = torch.autograd.functional.jacobian(lambda u: glow.transform(u.reshape(1, 1, 4, 4))[0].reshape(-1),
                                             x[0].reshape(-1))
    torch.testing.assert_close(log_det[0], torch.linalg.slogdet(jac)[1], rtol=1e-4, atol=1e-4)
    draws, log_prob = glow.rsample_and_log_prob(16, seed=0)
    with torch.no_grad():
        torch.testing.assert_close(log_prob, glow.log_prob(draws), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_glow_example_beats_a_gaussian_on_digits():
    """examples/glow_digits.py, 400 steps (about 17 s; 3,000 reach 2.35): held-out bits/dim of the dequantized
    digits more than 0.3 below a diagonal Gaussian's (3.41; the uniform's is 4.09), and finite samples."""
    example = load_example("glow_digits")
    flow, test_set = example.train(400, seed=0)
    bpd = example.test_bits_per_dim(flow, test_set)
    gaussian = example.gaussian_bits_per_dim(*example.load_digits())
    assert bpd < gaussian - 0.3 and gaussian < math.log2(17), (bpd, gaussian)
    assert torch.isfinite(flow.sample(8, seed=0)).all()


def test_bad_glow_input_names_the_argument():
    from fastgen.flows import ChannelCoupling, Glow, InvConv1x1LU, Squeeze

    with pytest.raises(ValueError, match=r"H and W must be divisible by 2\^levels = 8"):
        Glow((1, 8, 12), levels=3)
    with pytest.raises(ValueError, match=r"x must have shape \(B, 3, H, W\)"):
        InvConv1x1LU(3)(torch.randn(2, 4, 2, 2))
    with pytest.raises(ValueError, match="H and W even"):
        Squeeze()(torch.randn(2, 1, 3, 4))
    with pytest.raises(ValueError, match=r"conditioner must return \(B, 4, H, W\)"):
        ChannelCoupling(4, conditioner=torch.nn.Conv2d(2, 3, 1))(torch.randn(2, 4, 2, 2))


# ---------------------------------------------------------------- conditional flows


def _conditional_target(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x, c, log p(x | c)): c ~ U(-1, 1), x | c ~ N((2c, -c), diag((0.3 + 0.5 |c|)^2, 0.5^2))."""
    g = torch.Generator().manual_seed(seed)
    c = 2 * torch.rand(n, 1, generator=g) - 1
    mean = torch.cat([2 * c, -c], dim=1)
    std = torch.cat([0.3 + 0.5 * c.abs(), torch.full_like(c, 0.5)], dim=1)
    x = mean + std * torch.randn(n, 2, generator=g)
    return x, c, torch.distributions.Normal(mean.double(), std.double()).log_prob(x.double()).sum(1)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["nsf", "maf"])
def test_conditional_flow_learns_a_conditional_law(kind):
    """A conditional NSF / MAF (context_features=1) trained by maximum likelihood on (x, c) pairs for 400 steps:
    its held-out cross-entropy -E log q(x | c) comes within 0.1 nats of the exact conditional entropy, and
    samples drawn at c = 0.8 and c = -0.8 have the conditional mean within 0.15 (of +-1.6, -+0.8) and the
    conditional spread within 15% (a trained model's error; the sampling noise is 0.01)."""
    from fastgen.flows import MAF, NSF

    torch.manual_seed(0)
    flow = (NSF(2, layers=2, hidden=(32, 32), bins=6, bound=4.0, context_features=1) if kind == "nsf" else
            MAF(2, layers=4, hidden=(32, 32), context_features=1))
    optimizer = torch.optim.Adam(flow.parameters(), lr=3e-3)
    for step in range(400):
        x, c, _ = _conditional_target(256, seed=step)
        loss = -flow.log_prob(x, c).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    x, c, exact = _conditional_target(10000, seed=10_000)
    with torch.no_grad():
        gap = float(-flow.log_prob(x, c).double().mean() + exact.mean())
    assert 0 <= gap + 0.02 and gap < 0.1, gap  # (the gap is a KL, >= 0 up to the held-out noise)
    for c, mean, std in ((0.8, [1.6, -0.8], [0.7, 0.5]), (-0.8, [-1.6, 0.8], [0.7, 0.5])):
        draws = flow.sample(4000, seed=1, context=torch.tensor([c]))
        assert ((draws.mean(0) - torch.tensor(mean)).abs() < 0.15).all(), draws.mean(0)
        assert ((draws.std(0) / torch.tensor(std) - 1).abs() < 0.15).all(), draws.std(0)


def test_context_is_checked():
    from fastgen.flows import NSF, AffineCoupling, RealNVP

    flow = NSF(2, layers=1, context_features=3)
    with pytest.raises(ValueError, match=r"this flow is conditional: give context"):
        flow.log_prob(torch.randn(4, 2))
    with pytest.raises(ValueError, match=r"context must have shape \(C,\) or \(4, C\)"):
        flow.log_prob(torch.randn(4, 2), torch.randn(5, 3))
    with pytest.raises(ValueError, match=r"context must have shape \(4, 3\)"):
        flow.log_prob(torch.randn(4, 2), torch.randn(4, 2))
    with pytest.raises(ValueError, match="context given to a flow with no conditional transform"):
        RealNVP(2, layers=1).log_prob(torch.randn(4, 2), torch.randn(4, 3))
    with pytest.raises(ValueError, match="context_features must be an int >= 0"):
        AffineCoupling(2, context_features=-1)
    with pytest.raises(ValueError, match=r"AffineCoupling was built without context"):
        AffineCoupling(2)(torch.randn(4, 2), torch.randn(4, 1))
