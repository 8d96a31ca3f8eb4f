"""The Hutchinson reduction (parity, opcheck, compile, gradcheck and bad input via the registry harness and
SAMPLES) and fastgen.divergence against exact traces: exact for diagonal Jacobians with Rademacher probes,
unbiased (within the standard error) for dense ones, the exact method equal to tr J."""

import math

import pytest
import torch
from conftest import Sample, cpu_backends

import fastgen
from fastgen.ops import hutchinson_dot, probe


def _samples(device, dtype):
    g = torch.Generator().manual_seed(0)
    out = []
    for shape, rademacher in [((3, 5), True), ((2, 7), False), ((0, 4), True), ((2, 3, 4, 5), False),
                              ((1, 1000003), True), ((700, 3), True)]:
        out.append(Sample(vjp=torch.randn(shape, generator=g).to(device, dtype), seed=5, offset=3,
                          rademacher=rademacher, grad=("vjp",)))
    return out


SAMPLES = {"hutchinson_dot": _samples}


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("rademacher", [True, False])
def test_reduction_is_the_dot_with_the_probe(backend, rademacher):
    vjp = torch.randn(6, 50)
    eps = probe(vjp.shape, 9, 4, rademacher=rademacher)
    got = fastgen.ops.REGISTRY["hutchinson_dot"](vjp=vjp, seed=9, offset=4, rademacher=rademacher, backend=backend)
    torch.testing.assert_close(got, (vjp * eps).sum(1), rtol=1e-5, atol=1e-5)
    if rademacher:
        assert set(eps.unique().tolist()) == {-1.0, 1.0}


def test_rademacher_probes_give_the_exact_trace_of_a_diagonal_jacobian():
    scale = torch.linspace(-2, 3, 7)
    x = torch.randn(5, 7)
    div = fastgen.divergence(lambda x: x * scale, x, seed=1)
    torch.testing.assert_close(div, scale.sum().expand(5), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("noise", ["rademacher", "gaussian"])
def test_estimate_is_unbiased_for_a_dense_jacobian(noise):
    g = torch.Generator().manual_seed(2)
    a = torch.randn(6, 6, generator=g)

    def f(x):
        return torch.tanh(x @ a.T)

    x = torch.randn(4, 6, generator=g)
    exact, exact_frob = fastgen.divergence(f, x, method="exact", frobenius=True)
    draws = 2000
    estimates = torch.stack([torch.stack(fastgen.divergence(f, x, seed=s, noise=noise, frobenius=True))
                             for s in range(draws)]).double()  # (draws, 2, B)
    mean, se = estimates.mean(0), estimates.std(0) / math.sqrt(draws)
    z = (mean - torch.stack([exact, exact_frob]).double()).abs() / se
    assert (z < 5).all(), f"z-scores {z.tolist()}"
    # the exact method is the trace of the autograd Jacobian
    jac = torch.func.vmap(torch.func.jacrev(lambda v: f(v[None])[0]))(x)
    torch.testing.assert_close(exact, jac.diagonal(dim1=1, dim2=2).sum(1), rtol=1e-5, atol=1e-5)


def test_more_probes_average_and_gradients_flow_with_create_graph():
    w = torch.tensor(0.7, requires_grad=True)
    x = torch.randn(3, 4)
    div = fastgen.divergence(lambda x: w * x.square(), x, probes=4, seed=0, create_graph=True)
    (grad,) = torch.autograd.grad(div.sum(), w)
    # div = w * 2 * sum(x) exactly (diagonal Jacobian, Rademacher probes)
    torch.testing.assert_close(grad, 2 * x.sum(), rtol=1e-5, atol=1e-5)


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="method"):
        fastgen.divergence(lambda x: x, torch.zeros(2, 2), method="brute")
    with pytest.raises(ValueError, match="noise"):
        fastgen.divergence(lambda x: x, torch.zeros(2, 2), noise="uniform")
    with pytest.raises(ValueError, match="probes"):
        fastgen.divergence(lambda x: x, torch.zeros(2, 2), probes=0)
    with pytest.raises(ValueError, match="f must map x"):
        fastgen.divergence(lambda x: x.sum(1), torch.zeros(2, 2))
    with pytest.raises(TypeError, match="vjp"):
        hutchinson_dot(torch.zeros(2, 2, dtype=torch.int64), 0)


@pytest.mark.parametrize("rademacher", [True, False])
def test_the_same_seed_and_offset_give_the_same_probe_on_every_backend(rademacher):
    probes = []
    for backend in cpu_backends():
        with fastgen.use_backend(backend):
            probes.append(probe((5, 37), 11, 2 ** 33 + 5, rademacher=rademacher))
            assert torch.equal(probes[-1], probe((5, 37), 11, 2 ** 33 + 5, rademacher=rademacher))
    for other in probes[1:]:  # uniforms are bit-exact across backends, normals agree within 2e-6
        torch.testing.assert_close(other, probes[0], rtol=0, atol=0 if rademacher else 2e-6)


def test_rademacher_variance_is_below_gaussians_and_both_match_their_formulas():
    """For f(x) = A x: Var(eps^T A eps) = 2 |S|_F^2 for Gaussian probes and 2 (|S|_F^2 - sum_i S_ii^2) for
    Rademacher ones, S = (A + A^T) / 2; sample variances over 4000 probes within 5 of their standard errors."""
    g = torch.Generator().manual_seed(7)
    a = torch.randn(5, 5, generator=g, dtype=torch.float64)
    s = (a + a.T) / 2
    want = {"gaussian": 2 * s.square().sum(), "rademacher": 2 * (s.square().sum() - s.diagonal().square().sum())}
    x = torch.zeros(4000, 5, dtype=torch.float64)
    got = {}
    for noise in want:
        estimates = fastgen.divergence(lambda v: v @ a.T, x, noise=noise, seed=3)
        got[noise] = estimates.var()
        # the standard error of a sample variance, from the empirical fourth central moment
        centred = estimates - estimates.mean()
        se = ((centred.pow(4).mean() - got[noise] ** 2) / len(estimates)).sqrt()
        assert abs(got[noise] - want[noise]) < 5 * se, (noise, float(got[noise]), float(want[noise]))
    assert got["rademacher"] < got["gaussian"]
