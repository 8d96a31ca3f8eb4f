"""Affine coupling: the fused op on every backend against the reference (registry harness, SAMPLES), its exact
inverse, its log-determinant against autograd Jacobians, and its gradients against float64 autograd of the rule."""

import math

import pytest
import torch

import fastgen
from fastgen.ops import REGISTRY, affine_coupling
from fastgen.reference import coupling as R

from conftest import Sample, cpu_backends


def _inputs(device, dtype, shape, split, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    batch, size = shape[0], math.prod(shape[1:])
    x = (scale * torch.randn(shape, generator=g)).to(device, dtype)
    h = (2.0 * torch.randn(batch, size - split, generator=g)).to(device, dtype)
    t = torch.randn(batch, size - split, generator=g).to(device, dtype)
    return x, h, t


def _forward_samples(device, dtype):
    out = []
    for shape, split, inverse, mode in [((5, 4), 2, False, 0), ((3, 6), 1, True, 1), ((0, 4), 2, False, 0),
                                        ((2, 4, 3, 3), 18, False, 1), ((1, 1000003), 500000, True, 0),
                                        ((700, 2), 1, False, 0), ((4, 5), 0, True, 0)]:
        x, h, t = _inputs(device, dtype, shape, split)
        out.append(Sample(x=x, h=h, t=t, split=split, inverse=inverse, scale_mode=mode, clamp=1.5,
                          grad=("x", "h", "t")))
    return out


def _backward_samples(device, dtype):
    out = []
    for shape, split, inverse, mode in [((5, 4), 2, False, 0), ((3, 6), 1, True, 1), ((0, 4), 2, False, 0),
                                        ((2, 4, 3, 3), 18, True, 0), ((1, 1000003), 3, False, 1)]:
        x, h, _ = _inputs(device, dtype, shape, split, seed=1)
        g = torch.Generator().manual_seed(2)
        grad_out = torch.randn(shape, generator=g).to(device, dtype)
        grad_log_det = torch.randn(shape[0], generator=g).to(device)
        out.append(Sample(grad_out=grad_out, grad_log_det=grad_log_det, x=x, h=h, split=split, inverse=inverse,
                          scale_mode=mode, clamp=2.5))
    return out


SAMPLES = {"affine_coupling": _forward_samples, "affine_coupling_backward": _backward_samples}


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("scale", ["soft_clamp", "sigmoid"])
def test_inverse_undoes_forward_including_large_values(backend, scale):
    """inverse(forward(x)) = x within 1e-5, and the two log-dets cancel, for inputs up to 1e4; logits up to 1e3 with
    the soft clamp (its scale stays in (e^-clamp, e^clamp)), up to 4 with Glow's sigmoid (its scale goes to 0 as the
    logit goes to -inf, and below about -16 the float32 map is no longer invertible: why soft_clamp is the
    default)."""
    x, h, t = _inputs("cpu", torch.float32, (64, 6), 3, seed=3)
    x = x * torch.logspace(-2, 4, 64)[:, None]
    h = h * torch.logspace(-2, 3, 64)[:, None] if scale == "soft_clamp" else h.clamp(-4, 4)
    with fastgen.use_backend(backend):
        y, ld = affine_coupling(x, h, t, 3, scale=scale)
        back, ld_back = affine_coupling(y, h, t, 3, inverse=True, scale=scale)
    assert torch.isfinite(y).all() and torch.isfinite(ld).all()
    torch.testing.assert_close(back, x, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ld + ld_back, torch.zeros(64), rtol=0, atol=1e-4)


@pytest.mark.parametrize("scale,clamp", [("soft_clamp", 2.0), ("soft_clamp", 0.5), ("sigmoid", 2.0)])
def test_log_det_is_the_log_determinant_of_the_jacobian(scale, clamp):
    """A whole coupling (identity part feeding the conditioner, the fused op on the rest), D = 5: log_det equals
    log|det J| of torch.autograd.functional.jacobian within 1e-4, forward and inverse."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 6))

    def layer(v, inverse=False):
        h, t = net(v[:2]).unsqueeze(0).chunk(2, dim=1)
        out, log_det = affine_coupling(v.unsqueeze(0), h.contiguous(), t.contiguous(), 2, inverse=inverse,
                                       scale=scale, clamp=clamp)
        return out[0], log_det[0]

    for inverse in (False, True):
        for seed in range(3):
            v = torch.randn(5, generator=torch.Generator().manual_seed(seed)) * 2
            jac = torch.autograd.functional.jacobian(lambda u: layer(u, inverse)[0], v)
            torch.testing.assert_close(layer(v, inverse)[1], torch.linalg.slogdet(jac)[1], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("inverse", [False, True])
@pytest.mark.parametrize("scale", ["soft_clamp", "sigmoid"])
def test_fused_gradients_equal_float64_autograd_of_the_rule(inverse, scale):
    """The fused backward (every backend) against autograd of the rule written out in float64 torch."""
    x, h, t = _inputs("cpu", torch.float32, (6, 5, 2), 4, seed=4)
    w_out, w_ld = torch.randn(6, 5, 2, dtype=torch.float64), torch.randn(6, dtype=torch.float64)

    def rule(x, h, t):
        hb = h.double()
        s = 1.5 * torch.tanh(hb / 1.5) if scale == "soft_clamp" else torch.nn.functional.logsigmoid(hb + 2)
        xa, xb = x.double().reshape(6, -1)[:, :4], x.double().reshape(6, -1)[:, 4:]
        moved = (xb - t.double()) * torch.exp(-s) if inverse else xb * torch.exp(s) + t.double()
        return torch.cat([xa, moved], 1).reshape(6, 5, 2), (-s if inverse else s).sum(1)

    leaves = [v.double().requires_grad_() for v in (x, h, t)]
    out, ld = rule(*leaves)
    want = torch.autograd.grad((out * w_out).sum() + (ld * w_ld).sum(), leaves)
    for backend in cpu_backends():
        leaves = [v.clone().requires_grad_() for v in (x, h, t)]
        with fastgen.use_backend(backend):
            out, ld = affine_coupling(*leaves, 4, inverse=inverse, scale=scale, clamp=1.5)
            got = torch.autograd.grad((out.double() * w_out).sum() + (ld.double() * w_ld).sum(), leaves)
        for g, w in zip(got, want):
            torch.testing.assert_close(g.double(), w, rtol=2e-5, atol=2e-5, msg=backend)


def test_the_transformed_part_can_be_the_channels_of_an_image():
    """(B, C, H, W) split at channel c: split = c H W and h, t shaped (B, C - c, H, W)."""
    x, _, _ = _inputs("cpu", torch.float32, (2, 4, 3, 3), 0)
    h, t = torch.randn(2, 2, 3, 3), torch.randn(2, 2, 3, 3)
    y, ld = affine_coupling(x, h, t, 2 * 9)
    assert torch.equal(y[:, :2], x[:, :2])
    s = 2.0 * torch.tanh(h / 2.0)
    torch.testing.assert_close(y[:, 2:], x[:, 2:] * s.exp() + t)
    torch.testing.assert_close(ld, s.sum((1, 2, 3)))


def test_bad_input_names_the_argument():
    x, h, t = _inputs("cpu", torch.float32, (3, 4), 2)
    with pytest.raises(ValueError, match="split must leave elements to transform"):
        affine_coupling(x, h, t, 4)
    with pytest.raises(ValueError, match="h must be contiguous .* 3 elements per sample"):
        affine_coupling(x, h, t, 1)
    with pytest.raises(TypeError, match="t must have the dtype of x"):
        affine_coupling(x, h, t.double(), 2)
    with pytest.raises(ValueError, match="scale must be one of soft_clamp, sigmoid"):
        affine_coupling(x, h, t, 2, scale="exp")
    with pytest.raises(ValueError, match="clamp must be finite and > 0"):
        affine_coupling(x, h, t, 2, clamp=0.0)


# ---------------------------------------------------------------- fastgen.flows layers and models


def test_coupling_layer_inverts_and_its_log_det_is_the_jacobians():
    """AffineCoupling with a random (not zero-started) conditioner, D = 5 and D = 8, both scales: inverse(forward)
    within 1e-5 on inputs up to 1e2 (larger ones make t large, and (y - t) loses float32 digits to it), log|det| of autograd's Jacobian within 1e-4, and gradcheck in float64."""
    from fastgen.flows import AffineCoupling

    torch.manual_seed(1)
    for features, scale in ((5, "soft_clamp"), (8, "sigmoid")):
        layer = AffineCoupling(features, scale=scale)
        for p in layer.parameters():
            torch.nn.init.normal_(p, std=0.1)
        x = torch.randn(32, features) * torch.logspace(-1, 2, 32)[:, None]
        z, log_det = layer(x)
        torch.testing.assert_close(layer.inverse(z), x, rtol=1e-5, atol=1e-5)
        for v in x[:4]:
            jac = torch.autograd.functional.jacobian(lambda u: layer(u[None])[0][0], v)
            torch.testing.assert_close(layer(v[None])[1][0], torch.linalg.slogdet(jac)[1], rtol=1e-4, atol=1e-4)
        double = layer.double()
        assert torch.autograd.gradcheck(lambda u: double(u), (torch.randn(3, features, dtype=torch.float64,
                                                                        requires_grad=True),))
        layer.float()


def test_realnvp_example_learns_eight_gaussians_and_its_density_integrates_to_one():
    """examples/realnvp_2d.py: an 8-layer RealNVP trained by maximum likelihood on the 8-Gaussian target for 2,000
    steps (fixed seed, about 30 s): held-out cross-entropy within 0.3 nats of the target's exact entropy (the gap
    is KL(data || model) >= 0), its density integrates to 1 within 1% on a grid, and its samples put 1/8 on each
    mode within 0.03."""
    from conftest import load_example
    from fastgen.targets import eight_gaussians, toy_2d, toy_2d_entropy

    flow = load_example("realnvp_2d").train("eight_gaussians", 2000, seed=0)
    held_out = toy_2d("eight_gaussians", 20000, seed=1)
    with torch.no_grad():
        nll = -float(flow.log_prob(held_out).double().mean())
        assert nll - toy_2d_entropy("eight_gaussians", held_out) < 0.3, nll
        side = torch.linspace(-4.5, 4.5, 451)
        grid = torch.stack(torch.meshgrid(side, side, indexing="ij"), -1).reshape(-1, 2)
        mass = flow.log_prob(grid).double().exp().sum() * (side[1] - side[0]) ** 2
    assert abs(float(mass) - 1) < 0.01, float(mass)
    x = flow.sample(4000, seed=3)
    assert (fastgen.metrics.mode_weights(x, eight_gaussians())[:8] - 1 / 8).abs().max() < 0.03


def test_bad_flow_input_names_the_argument():
    from fastgen.flows import AffineCoupling, RealNVP

    with pytest.raises(ValueError, match="split must keep at least one feature and transform at least one"):
        AffineCoupling(4, split=4)
    with pytest.raises(ValueError, match="split must keep"):
        AffineCoupling(4, split=0)
    with pytest.raises(ValueError, match="features must be an int >= 2"):
        AffineCoupling(1)
    with pytest.raises(ValueError, match="scale must be one of"):
        AffineCoupling(4, scale="exp")
    with pytest.raises(ValueError, match=r"x must have shape \(B, 4\)"):
        AffineCoupling(4)(torch.randn(3, 5))
    with pytest.raises(ValueError, match=r"conditioner must return \(B, 4\)"):
        AffineCoupling(4, conditioner=torch.nn.Linear(2, 3))(torch.randn(3, 4))
    flow = RealNVP(3, layers=2)
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., 3\)"):
        flow.log_prob(torch.randn(5, 4))
    with pytest.raises(ValueError, match="x must be finite"):
        flow.log_prob(torch.tensor([[0.0, float("nan"), 1.0]]))
