"""Conditional generation: model keyword arguments through fastgen.sample / make_sampler, checked with the exact
class-conditional scores of a Gaussian mixture whose components are the classes."""

import math

import pytest
import torch

import fastgen
from fastgen.targets import GaussianMixture


def _classes() -> GaussianMixture:
    """Three well-separated classes in 2-D with unequal spreads."""
    means = torch.tensor([[-3.0, 0.0], [3.0, 0.0], [0.0, 3.0]], dtype=torch.float64)
    stds = torch.tensor([[0.3, 0.5], [0.6, 0.2], [0.4, 0.4]], dtype=torch.float64)
    return GaussianMixture(means, stds)


@pytest.mark.parametrize("sampler,steps", [("dpmpp_2m", 40), ("ode_heun", 40), ("euler_maruyama", 200)])
def test_labels_reach_their_class_law(sampler, steps):
    """Samples drawn with y = k follow component k: the sample mean and variance of each class within 4.5 of their
    standard errors (and the sampler's own error, a few percent of the spread, below the resolution at 2000)."""
    gmm, sde = _classes(), fastgen.VPSDE()
    labels = torch.arange(3).repeat_interleave(2000)
    x = fastgen.sample(gmm.model(sde, conditional=True), (len(labels), 2), sde=sde, sampler=sampler, steps=steps,
                       seed=0, device="cpu", model_kwargs={"y": labels}).double()
    for k in range(3):
        mine = x[labels == k]
        n, mean, std = len(mine), gmm.means[k], gmm.stds[k]
        assert ((mine.mean(0) - mean).abs() < 4.5 * std / math.sqrt(n) + 0.02 * std).all(), (k, mine.mean(0))
        ratio = mine.var(0) / std.square()  # relative SE of a sample variance: sqrt(2 / (n - 1))
        assert ((ratio - 1).abs() < 4.5 * math.sqrt(2 / (n - 1)) + 0.06).all(), (k, ratio)


def test_conditioning_stays_with_its_sample_at_any_batch_size_and_position():
    gmm, sde = _classes(), fastgen.VPSDE()
    model = gmm.model(sde, conditional=True)
    g = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 3, (64,), generator=g)
    seeds = torch.randint(0, 2 ** 40, (64,), generator=g)
    full = fastgen.sample(model, (64, 2), sde=sde, sampler="dpmpp_2m", steps=10, device="cpu",
                          per_sample_seeds=seeds, model_kwargs={"y": labels})
    for index in ([5], [40, 3, 17, 60, 9, 0, 33]):
        index = torch.tensor(index)
        part = fastgen.sample(model, (len(index), 2), sde=sde, sampler="dpmpp_2m", steps=10, device="cpu",
                              per_sample_seeds=seeds[index], model_kwargs={"y": labels[index]})
        torch.testing.assert_close(part, full[index], rtol=1e-5, atol=1e-5)


def test_draw_refills_the_conditioning_and_broadcast_values_pass_through():
    gmm, sde = _classes(), fastgen.VPSDE()
    conditional = gmm.model(sde, conditional=True)
    calls = []

    def model(x, t, y, scale, tag):
        calls.append((scale, tag))
        return conditional(x, t, y) * scale.squeeze(0)

    seeds = torch.arange(8)
    one = torch.ones(1, 1, dtype=torch.float32)
    runner = fastgen.make_sampler(model, (8, 2), sde=sde, sampler="dpmpp_2m", steps=6, device="cpu",
                                  per_sample_seeds=seeds, model_kwargs={"y": torch.zeros(8, dtype=torch.long),
                                                                        "scale": one, "tag": "a"})
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    got = runner.draw(seeds, model_kwargs={"y": labels, "scale": one, "tag": "a"})
    want = fastgen.sample(conditional, (8, 2), sde=sde, sampler="dpmpp_2m", steps=6, device="cpu",
                          per_sample_seeds=seeds, model_kwargs={"y": labels})
    torch.testing.assert_close(got, want)
    assert all(tag == "a" and scale is one for scale, tag in calls)


def test_bad_model_kwargs_name_the_argument():
    gmm, sde = _classes(), fastgen.VPSDE()
    model = gmm.model(sde, conditional=True)
    with pytest.raises(ValueError, match=r"model_kwargs\['y'\] must be batched along dim 0 with the samples' batch "
                                         r"size 8"):
        fastgen.sample(model, (8, 2), sde=sde, steps=2, device="cpu", model_kwargs={"y": torch.zeros(5).long()})
    with pytest.raises(TypeError, match="model_kwargs must be a dict"):
        fastgen.sample(model, (8, 2), sde=sde, steps=2, device="cpu", model_kwargs=[1, 2])
    runner = fastgen.make_sampler(model, (8, 2), sde=sde, steps=2, device="cpu",
                                  model_kwargs={"y": torch.zeros(8).long()})
    with pytest.raises(ValueError, match=r"model_kwargs must have the keys"):
        runner.draw(model_kwargs={"label": torch.zeros(8).long()})
    with pytest.raises(ValueError, match=r"model_kwargs\['y'\] must have shape \(8,\)"):
        runner.draw(model_kwargs={"y": torch.zeros(4).long()})
