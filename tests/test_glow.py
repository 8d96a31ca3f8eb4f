"""Glow's layer ops, ActNorm, the invertible 1x1 convolution and the squeeze: the fused ops on every backend against
the reference (registry harness, SAMPLES), their gradients against float64 autograd of the rule, and the
convolution and squeeze against PyTorch's own conv2d and pixel_unshuffle."""

import math

import pytest
import torch
from conftest import Sample, cpu_backends

from fastgen.ops import REGISTRY, actnorm, invconv1x1, squeeze2d
from fastgen.reference import glow as R

SHAPES = [(3, 4, 5, 6), (2, 3, 7), (0, 4, 2, 2), (5, 2), (1, 3, 1000, 101), (64, 12, 4, 4)]


def _x(device, dtype, shape, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(shape, generator=g)).to(device, dtype)


def _channel(device, channels, seed, scale=0.5):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(channels, generator=g)).to(device)


def _actnorm_samples(device, dtype):
    return [Sample(x=_x(device, dtype, shape), log_scale=_channel(device, shape[1], 1),
                   bias=_channel(device, shape[1], 2), inverse=k % 2 == 1, grad=("x", "log_scale", "bias"))
            for k, shape in enumerate(SHAPES)]


def _actnorm_backward_samples(device, dtype):
    out = []
    for k, shape in enumerate(SHAPES):
        out.append(Sample(grad_out=_x(device, dtype, shape, seed=3), grad_log_det=_channel(device, shape[0], 4, 1.0),
                          x=_x(device, dtype, shape), log_scale=_channel(device, shape[1], 1), inverse=k % 2 == 0))
    return out


def _weight(device, channels, seed=5):
    g = torch.Generator().manual_seed(seed)
    return (torch.eye(channels) + 0.3 * torch.randn(channels, channels, generator=g)).to(device)


CONV_SHAPES = [(3, 4, 5, 6), (2, 3, 7), (0, 4, 2, 2), (5, 2), (1, 40, 30, 31), (4, 48, 8, 8), (2, 12, 16, 16)]


def _invconv_samples(device, dtype):
    return [Sample(x=_x(device, dtype, shape), weight=_weight(device, shape[1]),
                   log_s=_channel(device, shape[1], 6), grad=("x", "weight", "log_s")) for shape in CONV_SHAPES]


def _invconv_backward_samples(device, dtype):
    return [Sample(grad_out=_x(device, dtype, shape, seed=3), x=_x(device, dtype, shape),
                   weight=_weight(device, shape[1])) for shape in CONV_SHAPES]


def _squeeze_samples(device, dtype):
    out = []
    for shape, inverse in [((2, 3, 4, 6), False), ((2, 12, 2, 3), True), ((0, 4, 2, 2), False),
                           ((1, 1, 2, 2), False), ((3, 5, 64, 32), False), ((3, 20, 32, 16), True)]:
        out.append(Sample(x=_x(device, dtype, shape), inverse=inverse, grad=("x",)))
    return out


SAMPLES = {"actnorm": _actnorm_samples, "actnorm_backward": _actnorm_backward_samples,
           "invconv1x1": _invconv_samples, "invconv1x1_backward": _invconv_backward_samples,
           "squeeze2d": _squeeze_samples}


def _float64_rule(x, log_scale, bias, inverse):
    """ActNorm written out in float64 (autograd differentiates it)."""
    shape = (1, -1) + (1,) * (x.dim() - 2)
    s, b = log_scale.reshape(shape), bias.reshape(shape)
    out = (x - b) * torch.exp(-s) if inverse else x * torch.exp(s) + b
    total = math.prod(x.shape[2:]) * log_scale.sum()
    return out, (-total if inverse else total).expand(x.shape[0])


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("inverse", [False, True])
def test_actnorm_gradients_equal_float64_autograd_of_the_rule(backend, inverse):
    x, s, b = _x("cpu", torch.float32, (6, 3, 5, 4)), _channel("cpu", 3, 1), _channel("cpu", 3, 2)
    w_out, w_ld = torch.randn(6, 3, 5, 4, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    leaves = [v.clone().requires_grad_() for v in (x, s, b)]
    out, log_det = REGISTRY["actnorm"](x=leaves[0], log_scale=leaves[1], bias=leaves[2], inverse=inverse,
                                       backend=backend)
    got = torch.autograd.grad((out.double() * w_out).sum() + (log_det.double() * w_ld).sum(), leaves)
    exact = [v.double().requires_grad_() for v in (x, s, b)]
    out64, ld64 = _float64_rule(*exact, inverse)
    want = torch.autograd.grad((out64 * w_out).sum() + (ld64 * w_ld).sum(), exact)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g.double(), w, rtol=1e-4, atol=1e-4)


def test_actnorm_inverse_undoes_forward_and_negates_log_det():
    x, s, b = _x("cpu", torch.float32, (4, 5, 3, 3), scale=100.0), _channel("cpu", 5, 1, 2.0), _channel("cpu", 5, 2)
    y, ld = actnorm(x, s, b)
    back, ld_inv = actnorm(y, s, b, inverse=True)
    torch.testing.assert_close(back, x, rtol=1e-5, atol=1e-5 * 100)
    torch.testing.assert_close(ld_inv, -ld)
    torch.testing.assert_close(ld, torch.full((4,), 9 * s.sum().item()))


@pytest.mark.parametrize("backend", cpu_backends())
def test_invconv_equals_conv2d_and_its_gradients_float64_autograd(backend):
    x, w, log_s = _x("cpu", torch.float32, (3, 6, 5, 7)), _weight("cpu", 6), _channel("cpu", 6, 6)
    leaves = [v.clone().requires_grad_() for v in (x, w, log_s)]
    out, log_det = REGISTRY["invconv1x1"](x=leaves[0], weight=leaves[1], log_s=leaves[2], backend=backend)
    exact = [v.double().requires_grad_() for v in (x, w, log_s)]
    out64 = torch.nn.functional.conv2d(exact[0], exact[1][:, :, None, None])
    ld64 = (35 * exact[2].sum()).expand(3)
    torch.testing.assert_close(out.double(), out64.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(log_det.double(), ld64.detach(), rtol=1e-6, atol=1e-5)
    w_out, w_ld = torch.randn(out.shape, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    got = torch.autograd.grad((out.double() * w_out).sum() + (log_det.double() * w_ld).sum(), leaves)
    want = torch.autograd.grad((out64 * w_out).sum() + (ld64 * w_ld).sum(), exact)
    for g, want_g in zip(got, want, strict=True):
        torch.testing.assert_close(g.double(), want_g, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend", cpu_backends())
def test_squeeze_is_pixel_unshuffle_and_round_trips(backend):
    x = _x("cpu", torch.float32, (2, 3, 6, 4))
    y = REGISTRY["squeeze2d"](x=x, inverse=False, backend=backend)
    assert torch.equal(y, torch.nn.functional.pixel_unshuffle(x, 2))
    assert torch.equal(REGISTRY["squeeze2d"](x=y, inverse=True, backend=backend), x)
    leaf = x.clone().requires_grad_()
    w = torch.randn(y.shape)
    (grad,) = torch.autograd.grad((squeeze2d(leaf) * w).sum(), leaf)
    assert torch.equal(grad, torch.nn.functional.pixel_shuffle(w, 2))


def test_bad_arguments_name_themselves():
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match="log_scale"):
        actnorm(x, torch.zeros(4), torch.zeros(3))
    with pytest.raises(ValueError, match="bias"):
        actnorm(x, torch.zeros(3), torch.zeros(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="weight"):
        invconv1x1(x, torch.eye(4), torch.zeros(3))
    with pytest.raises(ValueError, match="x must have shape"):
        squeeze2d(torch.randn(2, 3, 5, 4))
    with pytest.raises(ValueError, match="x must have shape"):
        squeeze2d(torch.randn(2, 3, 4, 4), inverse=True)


def test_reference_log_det_counts_the_elements_of_a_channel():
    x = torch.randn(0, 3, 4, 5)
    assert R.actnorm(x, torch.ones(3), torch.zeros(3), False)[1].shape == (0,)
    _, ld = R.invconv1x1(torch.randn(2, 3, 4, 5), torch.eye(3), torch.ones(3))
    torch.testing.assert_close(ld, torch.full((2,), 60.0))
