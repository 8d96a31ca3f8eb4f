"""The fused Gaussian reparameterization (parity, opcheck, compile, gradcheck and bad input via the registry
harness and SAMPLES) and fastgen.vae against exact answers: the sample's law and log-density, the gradients
against float64 autograd of the closed form, the IWAE bound's order in k, and STL's zero variance at the optimum."""

import math

import pytest
import torch
from conftest import Sample, cpu_backends, load_example

import fastgen
from fastgen.cli.demo import image_grid
from fastgen.nn import vae
from fastgen.ops import gaussian_rsample


def _posterior(device, dtype, shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(shape, generator=g).to(device, dtype)
    return mean, (0.3 * torch.randn(shape, generator=g)).to(device, dtype)


def _rsample_samples(device, dtype):
    out = []
    for shape, path in [((3, 5), False), ((1, 7), True), ((0, 4), False), ((2, 3, 4, 5), True), ((1, 1000003), False),
                        ((700, 3), False)]:
        mean, log_std = _posterior(device, dtype, shape)
        out.append(Sample(mean=mean, log_std=log_std, seed=11, offset=5, path_derivative=path,
                          grad=("mean", "log_std")))
    return out


SAMPLES = {"gaussian_rsample": _rsample_samples}


@pytest.mark.parametrize("backend", cpu_backends())
def test_samples_have_the_posterior_law_and_exact_log_density(backend):
    n = 200_000
    mean = torch.tensor([[1.0, -2.0, 0.5]]).expand(n, 3).contiguous()
    log_std = torch.tensor([[0.0, -1.0, 0.7]]).expand(n, 3).contiguous()
    if backend == "triton":
        mean, log_std = mean[:5000].contiguous(), log_std[:5000].contiguous()
    z, log_prob = fastgen.ops.REGISTRY["gaussian_rsample"](mean=mean, log_std=log_std, seed=3, offset=0,
                                                           backend=backend)
    std = log_std.exp()
    exact = torch.distributions.Normal(mean.double(), std.double()).log_prob(z.double()).sum(1)
    torch.testing.assert_close(log_prob.double(), exact, rtol=1e-5, atol=1e-4)
    count = z.shape[0]
    sample_mean, sample_var = z.double().mean(0), z.double().var(0)
    assert ((sample_mean - mean[0].double()).abs() / (std[0].double() / math.sqrt(count)) < 5).all()
    # var of the sample variance of a normal: 2 s^4 / (n - 1)
    assert ((sample_var - std[0].double() ** 2).abs() / (std[0].double() ** 2 * math.sqrt(2 / count)) < 5).all()


@pytest.mark.parametrize("path_derivative", [False, True])
def test_gradients_equal_float64_autograd_of_the_closed_form(path_derivative):
    mean, log_std = _posterior("cpu", torch.float32, (4, 6), seed=2)
    m, s = mean.clone().requires_grad_(), log_std.clone().requires_grad_()
    z, log_prob = gaussian_rsample(m, s, 9, 2, path_derivative=path_derivative)
    w_z, w_lp = torch.randn(4, 6, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    got = torch.autograd.grad((z * w_z).sum() + (log_prob * w_lp).sum(), (m, s))
    eps = fastgen.ops.normal((4, 6), 9, 2).double()
    m64, s64 = mean.double().requires_grad_(), log_std.double().requires_grad_()

    def closed_form(m64, s64):
        z64 = m64 + s64.exp() * eps
        if path_derivative:  # log q(z) with q's parameters held fixed
            q = torch.distributions.Normal(m64.detach(), s64.detach().exp())
            lp64 = q.log_prob(z64).sum(1)
        else:
            lp64 = (-0.5 * eps.square() - s64).sum(1) - 3 * math.log(2 * math.pi)
        return (z64 * w_z).sum() + (lp64 * w_lp).sum()

    want = torch.autograd.grad(closed_form(m64, s64), (m64, s64))
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g.double(), w, rtol=1e-5, atol=1e-5)
    if not path_derivative:  # the total derivative: the closed form passes gradcheck in float64
        assert torch.autograd.gradcheck(closed_form, (m64, s64))


def _toy(k_seed=0):
    """An encoder/decoder pair fixed at random, latent 2, data 5 (a Bernoulli decoder)."""
    torch.manual_seed(k_seed)
    decoder = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 5))
    x = torch.bernoulli(torch.full((64, 5), 0.4), generator=torch.Generator().manual_seed(1))
    mean, log_std = 0.3 * torch.randn(64, 2), torch.full((64, 2), -0.4)
    return x, mean, log_std, decoder


def test_iwae_bound_increases_with_k_and_exceeds_the_elbo():
    x, mean, log_std, decoder = _toy()
    draws = 200
    with torch.no_grad():
        elbo = torch.stack([vae.elbo(x, mean, log_std, decoder, seed=s).mean() for s in range(draws)])
        bounds = {k: torch.stack([vae.iwae_bound(x, mean, log_std, decoder, k=k, seed=s).mean() for s in range(draws)])
                  for k in (1, 5, 50)}
    means = {k: float(v.mean()) for k, v in bounds.items()}
    se = {k: float(v.std()) / math.sqrt(draws) for k, v in bounds.items()}
    assert abs(means[1] - float(elbo.mean())) < 5 * math.hypot(se[1], float(elbo.std()) / math.sqrt(draws))
    assert means[5] > means[1] + 5 * math.hypot(se[5], se[1])
    assert means[50] > means[5] + 5 * math.hypot(se[50], se[5])
    assert means[50] > float(elbo.mean())


def test_sticking_the_landing_has_zero_variance_at_the_optimum():
    """p(z) = N(0, 1), p(x | z) = N(z, 1): the posterior is N(x / 2, 1 / 2). With q equal to it, the
    STL gradient of the sampled ELBO is zero for every draw; the standard one is not."""
    x = torch.tensor([[0.8], [-1.5], [2.0]])
    mean = (x / 2).requires_grad_()
    log_std = torch.full_like(x, -0.5 * math.log(2)).requires_grad_()

    def grads(path_derivative, seed):
        bound = vae.iwae_bound(x, mean, log_std, lambda z: z, k=1, likelihood="gaussian", seed=seed,
                               path_derivative=path_derivative).sum()
        return torch.cat([g.flatten() for g in torch.autograd.grad(bound, (mean, log_std))])

    stl = torch.stack([grads(True, s) for s in range(200)])
    standard = torch.stack([grads(False, s) for s in range(200)])
    assert stl.abs().max() < 1e-5
    assert standard.var(0).min() > 0.05


def test_kl_and_likelihoods_equal_torch_distributions():
    mean, log_std = _posterior("cpu", torch.float64, (4, 3))
    q = torch.distributions.Normal(mean, log_std.exp())
    p = torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(mean))
    torch.testing.assert_close(vae.gaussian_kl(mean, log_std), torch.distributions.kl_divergence(q, p).sum(1))
    x, logits = torch.bernoulli(torch.full((4, 3), 0.5, dtype=torch.float64)), torch.randn(4, 3, dtype=torch.float64)
    torch.testing.assert_close(vae.log_likelihood(x, logits, "bernoulli"),
                               torch.distributions.Bernoulli(logits=logits).log_prob(x).sum(1))
    torch.testing.assert_close(vae.log_likelihood(x, logits, "gaussian", std=0.5),
                               torch.distributions.Normal(logits, 0.5).log_prob(x).sum(1))


def test_bad_input_names_the_argument():
    mean, log_std = torch.zeros(3, 2), torch.zeros(3, 2)
    with pytest.raises(ValueError, match="log_std"):
        gaussian_rsample(mean, torch.zeros(3, 3), 0)
    with pytest.raises(TypeError, match="log_std"):
        gaussian_rsample(mean, torch.zeros(3, 2, dtype=torch.float64), 0)
    with pytest.raises(ValueError, match="mean and log_std"):
        vae.gaussian_kl(mean, torch.zeros(2, 2))
    with pytest.raises(ValueError, match="likelihood"):
        vae.log_likelihood(mean, mean, "poisson")
    with pytest.raises(ValueError, match="k must"):
        vae.iwae_bound(mean, mean, log_std, lambda z: z, k=0)
    with pytest.raises(ValueError, match="beta"):
        vae.elbo(mean, mean, log_std, lambda z: z, beta=-1.0)
    with pytest.raises(ValueError, match="batch size"):
        vae.elbo(torch.zeros(4, 2), mean, log_std, lambda z: z)


def test_vae_digits_example_step_bounds_and_grids(tmp_path):
    pytest.importorskip("sklearn")
    example = load_example("vae_digits")
    data = example.load_digits()
    assert data.shape == (1797, 64) and 0 <= float(data.min()) and float(data.max()) <= 1
    torch.manual_seed(0)
    model = example.VAE(latent=4, hidden=32)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = [example.train_step(model, optimizer, data[:64], seed=s) for s in range(30)]
    assert losses[-1] < losses[0]
    report = example.bounds(model, data[64:128], ks=(1, 20))
    assert report["IWAE-20"] > report["IWAE-1"]
    image_grid(torch.rand(6, 64), str(tmp_path / "grid.png"), 3, "test", (0, 1))
    assert (tmp_path / "grid.png").stat().st_size > 0


def test_a_chunked_encoder_output_is_taken_as_it_comes():
    """What ``encoder(x).chunk(2, dim=1)`` returns (non-contiguous halves) goes into the ELBO and IWAE-1 as a copy
    would: the same values, and gradients to the encoder's output."""
    x = torch.rand(5, 3)
    encoded = torch.randn(5, 4, requires_grad=True)
    mean, log_std = encoded.chunk(2, dim=1)
    assert not mean.is_contiguous()
    decoder = torch.nn.Linear(2, 3)
    got = vae.elbo(x, mean, log_std, decoder, seed=3)
    want = vae.elbo(x, mean.contiguous(), log_std.contiguous(), decoder, seed=3)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(vae.iwae_bound(x, mean, log_std, decoder, k=1, seed=3),
                               vae.iwae_bound(x, mean.contiguous(), log_std.contiguous(), decoder, k=1, seed=3))
    got.sum().backward()
    assert encoded.grad is not None and torch.isfinite(encoded.grad).all()
