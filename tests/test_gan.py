"""fastgen.gan: each loss against its textbook formula on fixed logits, the penalties against closed forms and
gradcheck (float64, through the double backward), and the 8-Gaussian example's mode coverage with spectral norm."""

import math

import pytest
import torch
from conftest import load_example
from torch import nn

import fastgen
from fastgen.cli.demo import image_grid
from fastgen.nn import gan

REAL = torch.tensor([2.0, -0.5, 0.3, 4.0], dtype=torch.float64)
FAKE = torch.tensor([-1.0, 0.7, -3.0, 0.1], dtype=torch.float64)


def _sigmoid(t):
    return [1 / (1 + math.exp(-v)) for v in t.tolist()]


def _mean(values):
    return sum(values) / len(values)


def test_losses_equal_their_textbook_formulas():
    dr, df = _sigmoid(REAL), _sigmoid(FAKE)
    bce = _mean([-math.log(d) for d in dr]) + _mean([-math.log(1 - d) for d in df])
    want_d = {
        "minimax": bce,
        "non_saturating": bce,
        "least_squares": _mean([0.5 * (r - 1) ** 2 for r in REAL.tolist()])
        + _mean([0.5 * f**2 for f in FAKE.tolist()]),
        "wasserstein": _mean(FAKE.tolist()) - _mean(REAL.tolist()),
        "hinge": _mean([max(0, 1 - r) for r in REAL.tolist()]) + _mean([max(0, 1 + f) for f in FAKE.tolist()]),
    }
    want_g = {
        "minimax": _mean([math.log(1 - d) for d in df]),
        "non_saturating": _mean([-math.log(d) for d in df]),
        "least_squares": _mean([0.5 * (f - 1) ** 2 for f in FAKE.tolist()]),
        "wasserstein": -_mean(FAKE.tolist()),
        "hinge": -_mean(FAKE.tolist()),
    }
    for kind in gan.KINDS:
        assert float(gan.d_loss(REAL, FAKE, kind)) == pytest.approx(want_d[kind], rel=1e-12), kind
        assert float(gan.g_loss(FAKE, kind)) == pytest.approx(want_g[kind], rel=1e-12), kind


def test_saturating_logits_stay_finite():
    big = torch.tensor([1e4, -1e4])
    for kind in gan.KINDS:
        assert torch.isfinite(gan.d_loss(big, -big, kind)) and torch.isfinite(gan.g_loss(big, kind)), kind


class Linear(nn.Module):
    """D(x) = w . x: its input gradient is w everywhere."""

    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, x):
        return x.flatten(1) @ self.w


def _value(t: torch.Tensor) -> float:
    return t.detach().item()


def test_penalties_equal_closed_forms():
    w = torch.tensor([3.0, 4.0], dtype=torch.float64)  # |w| = 5
    real, fake = torch.randn(6, 2, dtype=torch.float64), torch.randn(6, 2, dtype=torch.float64)
    d = Linear(w)
    assert _value(gan.gradient_penalty(d, real, fake, "wgan_gp", seed=0)) == pytest.approx(16.0)
    assert _value(gan.gradient_penalty(d, real, fake, "dragan", seed=0, target=2.0)) == pytest.approx(9.0)
    assert _value(gan.gradient_penalty(d, real, kind="r1")) == pytest.approx(25.0)

    def half_square(x):  # D(x) = |x|^2 / 2: gradient x
        return 0.5 * x.square().sum(dim=1)

    assert _value(gan.gradient_penalty(half_square, real, kind="r1")) == pytest.approx(
        float(real.square().sum(dim=1).mean()))
    assert _value(gan.gradient_penalty(half_square, real, fake, "r2")) == pytest.approx(
        float(fake.square().sum(dim=1).mean()))


def test_wgan_gp_interpolates_with_weights_from_the_noise_stream():
    """D(x) = |x|^2 / 2 has |grad| = |x|: the penalty reveals the interpolation points, which must be
    e real + (1 - e) fake with e the stream's uniforms at positions 0 .. B - 1."""
    real, fake = torch.randn(5, 3), torch.randn(5, 3)
    e = fastgen.ops.uniform((5,), 11)[:, None]
    x_hat = e * real + (1 - e) * fake
    want = (x_hat.norm(dim=1) - 1).square().mean()
    got = gan.gradient_penalty(lambda x: 0.5 * x.square().sum(dim=1), real, fake, "wgan_gp", seed=11)
    torch.testing.assert_close(got, want)
    other = gan.gradient_penalty(lambda x: 0.5 * x.square().sum(dim=1), real, fake, "wgan_gp", seed=12)
    assert not torch.equal(got, other)


@pytest.mark.parametrize("kind", gan.PENALTIES)
def test_gradient_penalty_passes_gradcheck_in_float64(kind):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 1)).double()
    names = [n for n, _ in net.named_parameters()]
    real, fake = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)

    def penalty(*params):
        def discriminator(x):
            return torch.func.functional_call(net, dict(zip(names, params, strict=True)), (x,))

        return gan.gradient_penalty(discriminator, real, fake, kind, seed=3)

    params = tuple(p.detach().clone().requires_grad_() for p in net.parameters())
    assert torch.autograd.gradcheck(penalty, params)


def test_clip_weights_clamps_every_parameter_in_place():
    net = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(10)
    params = gan.clip_weights_(net, 0.01)
    assert all(p.abs().max() <= 0.01 for p in net.parameters())
    assert all(a is b for a, b in zip(params, net.parameters(), strict=True))


def test_bad_input_names_the_argument():
    d = Linear(torch.ones(2))
    with pytest.raises(ValueError, match="kind"):
        gan.d_loss(REAL, FAKE, "bce")
    with pytest.raises(ValueError, match="real_logits and fake_logits"):
        gan.d_loss(torch.zeros(4, 2), torch.zeros(4, 3))
    with pytest.raises(TypeError, match="fake_logits"):
        gan.g_loss(torch.zeros(4, dtype=torch.int64))
    with pytest.raises(ValueError, match="fake must have the shape"):
        gan.gradient_penalty(d, torch.zeros(4, 2), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="fake is required"):
        gan.gradient_penalty(d, torch.zeros(4, 2), kind="r2")
    with pytest.raises(ValueError, match="kind"):
        gan.gradient_penalty(d, torch.zeros(4, 2), torch.zeros(4, 2), kind="gp")
    with pytest.raises(ValueError, match="clip"):
        gan.clip_weights_(d, -1.0)


@pytest.mark.slow
def test_spectrally_normalized_gan_covers_all_eight_modes():
    """The example's GAN with a spectrally normalized discriminator, 1,500 steps (about 25 s on 2 cores):
    every mode of the 8-Gaussian ring gets at least 5% of 4,000 samples."""
    example = load_example("gan_8gaussians")
    weights = example.mode_weights(example.train(1500, spectral_norm=True, seed=0))
    assert weights.min() >= 0.05, f"mode weights {weights.tolist()}"


def test_sngan_digits_example_step_and_grid(tmp_path):
    pytest.importorskip("sklearn")
    example = load_example("sngan_digits")
    data = example.load_digits()
    generator, discriminator = example.generator_net(hidden=32), example.discriminator_net(hidden=32)
    fastgen.nn.SpectralNorm.apply(discriminator)
    g_opt = torch.optim.Adam(generator.parameters(), lr=1e-3)
    d_opt = torch.optim.Adam(discriminator.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in generator.parameters()]
    d, g = example.train_step(generator, discriminator, g_opt, d_opt, [data[:16], data[16:32]])
    assert math.isfinite(d) and math.isfinite(g)
    assert all(not torch.equal(a, b) for a, b in zip(before, generator.parameters(), strict=True))
    with torch.no_grad():
        image_grid(generator(torch.randn(20, 32)), str(tmp_path / "grid.png"))
    assert (tmp_path / "grid.png").stat().st_size > 0
