"""Conditional generation: model keyword arguments through fastgen.sample / make_sampler, checked with the exact
class-conditional scores of a Gaussian mixture whose components are the classes."""

import math

import pytest
import torch

import fastgen
from fastgen.core.constants import COEF_WIDTH
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


# ---------------------------------------------------------------- classifier-free guidance

ALL_SAMPLERS = [("euler_maruyama", 100), ("pc", 50), ("ode_euler", 100), ("ode_heun", 40), ("ddpm", 100),
                ("ddim", 50), ("euler_ancestral", 60), ("dpmpp_2m", 30)]


def _process(sampler):
    return dict(schedule=fastgen.DDPMSchedule()) if sampler in ("ddpm", "ddim") else dict(sde=fastgen.VPSDE())


@pytest.mark.parametrize("sampler,steps", ALL_SAMPLERS)
def test_guidance_scale_one_samples_each_class_and_zero_the_whole_mixture(sampler, steps):
    gmm = _classes()
    process = _process(sampler)
    model = gmm.model(next(iter(process.values())), "eps", conditional=True)
    labels = torch.arange(3).repeat_interleave(600)
    null = torch.full((1,), -1)
    common = dict(sampler=sampler, steps=steps, prediction="eps", device="cpu", seed=1,
                  model_kwargs={"y": labels}, uncond_kwargs={"y": null}, **process)
    x = fastgen.sample(model, (len(labels), 2), guidance_scale=1.0, **common).double()
    for k in range(3):
        mine = x[labels == k]
        n, mean, std = len(mine), gmm.means[k], gmm.stds[k]
        assert ((mine.mean(0) - mean).abs() < 4.5 * std / math.sqrt(n) + 0.03 * std).all(), (k, mine.mean(0))
        ratio = mine.var(0) / std.square()
        assert ((ratio - 1).abs() < 4.5 * math.sqrt(2 / (n - 1)) + 0.08).all(), (k, ratio)
    x = fastgen.sample(model, (len(labels), 2), guidance_scale=0.0, **common)
    weights = fastgen.metrics.mode_weights(x, gmm)  # the labels are ignored: every mode at 1/3
    n = len(labels)
    assert (weights[:3] - 1 / 3).abs().max() < 4.5 * math.sqrt(2 / 9 / n) + 0.01, weights


@pytest.mark.parametrize("prediction", ["eps", "x0", "v", "score"])
def test_the_guided_step_is_the_plain_step_on_the_combined_output(prediction):
    from conftest import cpu_backends

    g = torch.Generator().manual_seed(3)
    x, c, u = (torch.randn(6, 5, generator=g) for _ in range(3))
    coef = fastgen.ops.diffusion.ddim_coefficients(fastgen.DDPMSchedule(), 500, 480, eta=0.5).float()
    for w in (torch.tensor([2.5]), torch.linspace(-1, 7, 6)):
        for backend in cpu_backends():
            with fastgen.use_backend(backend):
                guided = fastgen.ops.diffusion.diffusion_step_(x.clone(), c, coef, prediction=prediction, uncond_out=u,
                                                     guidance=w, seed=4)
                plain = fastgen.ops.diffusion.diffusion_step_(x.clone(), u + w[:, None] * (c - u), coef,
                                                    prediction=prediction, seed=4)
            torch.testing.assert_close(guided, plain, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sampler,steps", ALL_SAMPLERS)
def test_guided_runs_equal_runs_of_the_combined_model(sampler, steps):
    """A guided run (one doubled-batch call per stage, the combination in the fused step) equals the same sampler
    run on a model returning u + w (c - u) itself, computed in float64; per-sample scales and an interval."""
    gmm = _classes()
    process = _process(sampler)
    model = gmm.model(next(iter(process.values())), "eps", conditional=True)
    labels = torch.tensor([0, 1, 2, 2, 1, 0, 1, 2])
    w = torch.linspace(0.0, 4.0, 8)
    seeds = torch.arange(8) * 11
    interval = (0.2, 0.8) if "sde" in process else (200, 800)

    def combined(x, t, y):
        inside = (t.double() >= interval[0]) & (t.double() <= interval[1])
        scale = torch.where(inside, w.double(), torch.ones_like(w, dtype=torch.float64))[:, None]
        c = model(x.double(), t, y).double()
        u = model(x.double(), t, torch.full_like(y, -1)).double()
        return (u + scale * (c - u)).float()

    common = dict(sampler=sampler, steps=steps // 4, prediction="eps", device="cpu", per_sample_seeds=seeds,
                  **process)
    guided = fastgen.sample(model, (8, 2), model_kwargs={"y": labels}, uncond_kwargs={"y": torch.tensor([-1])},
                            guidance_scale=w, guidance_interval=interval, **common)
    want = fastgen.sample(combined, (8, 2), model_kwargs={"y": labels}, **common)
    torch.testing.assert_close(guided, want, rtol=1e-4, atol=1e-4)


def test_guidance_calls_the_model_once_per_stage_on_the_doubled_batch_inside_the_interval_only():
    gmm, sde = _classes(), fastgen.VPSDE()
    model = gmm.model(sde, "eps", conditional=True)
    batches = []

    def counted(x, t, y):
        batches.append((x.shape[0], float(t[0])))
        return model(x, t, y)

    fastgen.sample(counted, (4, 2), sde=sde, sampler="ode_euler", steps=10, prediction="eps", device="cpu",
                   model_kwargs={"y": torch.zeros(4).long()}, uncond_kwargs={"y": torch.tensor([-1])},
                   guidance_scale=3.0, guidance_interval=(0.3, 0.7))
    assert len(batches) == 10
    assert all((size == 8) == (0.3 <= t <= 0.7) for size, t in batches)


def test_bad_guidance_input_names_the_argument():
    gmm, sde = _classes(), fastgen.VPSDE()
    model = gmm.model(sde, conditional=True)
    kwargs = dict(sde=sde, steps=2, device="cpu", model_kwargs={"y": torch.zeros(8).long()})
    with pytest.raises(ValueError, match=r"guidance_scale must be a number or a floating-point tensor of shape "
                                         r"\(8,\)"):
        fastgen.sample(model, (8, 2), guidance_scale=torch.ones(3), uncond_kwargs={"y": torch.tensor([-1])},
                       **kwargs)
    with pytest.raises(ValueError, match="guidance_scale must be a finite number"):
        fastgen.sample(model, (8, 2), guidance_scale=float("nan"), uncond_kwargs={"y": torch.tensor([-1])},
                       **kwargs)
    with pytest.raises(ValueError, match="guidance_scale needs model_kwargs"):
        fastgen.sample(model, (8, 2), guidance_scale=2.0, **kwargs)
    with pytest.raises(ValueError, match="uncond_kwargs must give the unconditional value of every model_kwargs"):
        fastgen.sample(model, (8, 2), guidance_scale=2.0, uncond_kwargs={"label": torch.tensor([-1])}, **kwargs)
    with pytest.raises(ValueError, match=r"uncond_kwargs\['y'\] must be a tensor batched"):
        fastgen.sample(model, (8, 2), guidance_scale=2.0, uncond_kwargs={"y": torch.zeros(3).long()}, **kwargs)
    with pytest.raises(ValueError, match="guidance_interval must be"):
        fastgen.sample(model, (8, 2), guidance_scale=2.0, uncond_kwargs={"y": torch.tensor([-1])},
                       guidance_interval=(0.8, 0.2), **kwargs)
    with pytest.raises(ValueError, match="give guidance_scale"):
        fastgen.sample(model, (8, 2), uncond_kwargs={"y": torch.tensor([-1])}, **kwargs)


def test_k_sampling_cfg_denoiser_is_k_diffusions_guidance_through_extra_args():
    """k-diffusion's samplers pass extra_args to the model; CFGDenoiser makes one call on the doubled batch and
    returns u + w (c - u), so sample_euler with it equals sample_euler on that combination computed directly."""
    gmm = _classes()
    calls = []

    def denoiser(x, sigma, cond):  # the exact x0 of the class (or of the mixture for the null label -1)
        calls.append(x.shape[0])
        score = gmm.model(fastgen.VESDE(sigma_min=0.002, sigma_max=80.0), "score", conditional=True)
        t = torch.log(sigma.double() / 0.002) / math.log(80.0 / 0.002)  # the VESDE time of sigma
        return (x.double() + sigma.double()[:, None] ** 2 * score(x.double(), t, cond)).float()

    sigmas = fastgen.k_sampling.get_sigmas_karras(12, 0.002, 80.0)
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(0)) * 80.0
    cond, uncond = torch.tensor([0, 1, 2, 0, 1, 2]), torch.tensor([-1])
    guided = fastgen.k_sampling.sample_euler(fastgen.k_sampling.CFGDenoiser(denoiser), x, sigmas, disable=True,
                                             extra_args={"cond": cond, "uncond": uncond, "cond_scale": 3.0})
    assert set(calls) == {12}

    def combined(x, sigma, cond):
        u = denoiser(x, sigma, torch.full_like(cond, -1))
        return u + 3.0 * (denoiser(x, sigma, cond) - u)

    want = fastgen.k_sampling.sample_euler(combined, x, sigmas, disable=True, extra_args={"cond": cond})
    torch.testing.assert_close(guided, want, rtol=1e-5, atol=1e-4)


# ---------------------------------------------------------------- img2img / SDEdit


@pytest.mark.parametrize("sampler,steps", ALL_SAMPLERS)
def test_img2img_from_target_samples_keeps_the_target_and_small_strength_stays_near(sampler, steps):
    """Started from exact draws of the target, noised to any strength's time, the exact model brings the state
    back to the target's law (its three classes at 1/3 each within 4.5 binomial standard errors); at strength
    0.05 every sample stays near its start."""
    gmm = _classes()
    process = _process(sampler)
    model = gmm.model(next(iter(process.values())), "eps")
    n = 1800
    init = gmm.sample(n, seed=5)
    common = dict(sampler=sampler, steps=steps, prediction="eps", device="cpu", seed=2, init=init, **process)
    x = fastgen.sample(model, (n, 2), strength=0.6, **common)
    weights = fastgen.metrics.mode_weights(x, gmm)
    assert (weights[:3] - 1 / 3).abs().max() < 4.5 * math.sqrt(2 / 9 / n) + 0.01, weights
    near = fastgen.sample(model, (n, 2), strength=0.05, **common)
    assert (near - init).norm(dim=1).median() < 0.2


def test_img2img_at_full_strength_is_the_sampler_from_noised_data_and_conditioning_works_with_it():
    """strength 1 on a deterministic sampler: the result depends on init only through alpha(T) init, so from two
    inits it differs by little; with labels and guidance the run takes every option together."""
    gmm, sde = _classes(), fastgen.VPSDE()
    model = gmm.model(sde, "eps", conditional=True)
    labels = torch.tensor([0, 1, 2, 0])
    common = dict(sde=sde, sampler="ode_heun", steps=20, prediction="eps", device="cpu", seed=0, strength=1.0,
                  model_kwargs={"y": labels}, uncond_kwargs={"y": torch.tensor([-1])}, guidance_scale=1.0)
    a = fastgen.sample(model, (4, 2), init=torch.zeros(4, 2), **common)
    b = fastgen.sample(model, (4, 2), init=torch.full((4, 2), 0.5), **common)
    assert (a - b).abs().max() < 0.1
    assert (fastgen.metrics.mode_weights(a, gmm)[:3] > 0).sum() >= 2


def test_bad_img2img_input_names_the_argument():
    gmm, sde = _classes(), fastgen.VPSDE()
    model = gmm.model(sde)
    kwargs = dict(sde=sde, steps=10, device="cpu")
    with pytest.raises(ValueError, match=r"init must be a floating-point tensor of the samples' shape \(4, 2\)"):
        fastgen.sample(model, (4, 2), init=torch.zeros(3, 2), strength=0.5, **kwargs)
    for strength in (0.0, 1.5, None, float("nan")):
        with pytest.raises(ValueError, match="strength must be a number in"):
            fastgen.sample(model, (4, 2), init=torch.zeros(4, 2), strength=strength, **kwargs)
    with pytest.raises(ValueError, match="runs int"):
        fastgen.sample(model, (4, 2), init=torch.zeros(4, 2), strength=0.05, **kwargs)
    with pytest.raises(ValueError, match="give init"):
        fastgen.sample(model, (4, 2), strength=0.5, **kwargs)
    with pytest.raises(ValueError, match="init must be finite"):
        fastgen.sample(model, (4, 2), init=torch.full((4, 2), float("inf")), strength=0.5, **kwargs)


@pytest.mark.slow
def test_cfg_digits_example_guidance_raises_class_accuracy():
    """examples/cfg_digits.py with 300 training steps (about 10 s): samples at guidance scale 3 are of their class
    (by the example's classifier) at least 10 points more often than at scale 1 (the conditional model alone)."""
    from conftest import load_example

    example = load_example("cfg_digits")
    model, judge = example.train(300, seed=0), example.classifier(0)
    acc = {scale: example.accuracy(judge, *example.guided_samples(model, scale, per_class=30)) for scale in (1.0, 3.0)}
    assert acc[3.0] > acc[1.0] + 0.1, acc


# ---------------------------------------------------------------- guidance rescale


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_guidance_rescale_in_the_step_is_diffusers_rescale_noise_cfg(prediction):
    """The fused step with guidance_rescale phi equals the plain step on diffusers' own rescale_noise_cfg(u + w
    (c - u), c, phi) (per-sample standard deviations), on every backend, for a scalar and per-sample scales."""
    from conftest import cpu_backends
    from diffusers.guiders.guider_utils import rescale_noise_cfg

    g = torch.Generator().manual_seed(4)
    x, c, u = (torch.randn(5, 4, 8, 8, generator=g) for _ in range(3))
    c = 1.3 * c + 0.2
    coef = fastgen.ops.diffusion.ddim_coefficients(fastgen.DDPMSchedule(), 700, 650, eta=1.0).float()
    for w in (torch.tensor([7.5]), torch.linspace(1, 9, 5)):
        for phi in (0.0, 0.7, 1.0):
            combined = rescale_noise_cfg(u + w[:, None, None, None] * (c - u), c, guidance_rescale=phi)
            for backend in cpu_backends():
                with fastgen.use_backend(backend):
                    fused = fastgen.ops.diffusion.diffusion_step_(x.clone(), c, coef, prediction=prediction,
                                                                  uncond_out=u, guidance=w, guidance_rescale=phi,
                                                                  seed=4)
                    plain = fastgen.ops.diffusion.diffusion_step_(x.clone(), combined, coef, prediction=prediction,
                                                                  seed=4)
                torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-5, msg=f"{backend} w={w} phi={phi}")


@pytest.mark.parametrize("sampler,steps", [("pc", 50), ("ddim", 50), ("dpmpp_2m", 30)])
def test_rescaled_guided_runs_equal_runs_of_the_rescaled_combined_model(sampler, steps):
    gmm = _classes()
    process = _process(sampler)
    model = gmm.model(next(iter(process.values())), "eps", conditional=True)
    labels = torch.tensor([0, 1, 2, 2, 1, 0])
    w, phi = torch.linspace(1.0, 3.0, 6), 0.6

    def combined(x, t, y):
        c = model(x.double(), t, y).double()
        u = model(x.double(), t, torch.full_like(y, -1)).double()
        g = u + w.double()[:, None] * (c - u)
        return (g * (phi * c.std(1, keepdim=True) / g.std(1, keepdim=True) + 1 - phi)).float()

    common = dict(sampler=sampler, steps=steps // 5, prediction="eps", device="cpu", per_sample_seeds=torch.arange(6),
                  **process)
    guided = fastgen.sample(model, (6, 2), model_kwargs={"y": labels}, uncond_kwargs={"y": torch.tensor([-1])},
                            guidance_scale=w, guidance_rescale=phi, **common)
    want = fastgen.sample(combined, (6, 2), model_kwargs={"y": labels}, **common)
    torch.testing.assert_close(guided, want, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- inpainting


def _product():
    """Known coordinate 0 in {-2, 2} (1/2 each), independent of coordinate 1 in {-1.5, 1.5} (0.3, 0.7); std 0.4."""
    means = torch.tensor([[a, b] for a in (-2.0, 2.0) for b in (-1.5, 1.5)])
    return GaussianMixture(means, 0.4, torch.tensor([0.15, 0.35, 0.15, 0.35]))


def _check_law(u: torch.Tensor, law: GaussianMixture, tag) -> None:
    """1-D samples u against a mixture of two separated components: the weight of the upper one within 4.5
    binomial standard errors, each component's mean and variance within 4.5 standard errors (+ 3% of the spread for
    the sampler's own error)."""
    live = law.weights > 1e-9  # (components of weight ~0 given the data play no part)
    means, stds, weights = law.means[live, 0], law.stds[live, 0], law.weights[live]
    assert len(means) == 2, law
    upper, middle = int(means.argmax()), float(means.mean())
    u = u.double()
    n, p = len(u), float(weights[upper])
    got = float((u > middle).double().mean())
    assert abs(got - p) < 4.5 * math.sqrt(p * (1 - p) / n) + 0.005, (tag, got, p)
    for k in range(2):
        mine = u[(u > middle) == (k == upper)]
        mean, std = float(means[k]), float(stds[k])
        assert abs(float(mine.mean()) - mean) < 4.5 * std / math.sqrt(len(mine)) + 0.03 * std, (tag, k, mine.mean())
        assert abs(float(mine.var()) / std ** 2 - 1) < 4.5 * math.sqrt(2 / (len(mine) - 1)) + 0.06, (tag, k)


@pytest.mark.parametrize("sampler,steps", ALL_SAMPLERS)
def test_inpainting_keeps_the_data_exactly_and_the_unknown_follows_its_conditional_law(sampler, steps):
    """Known and unknown coordinates independent (a product mixture): replacement is exact there, so the unknown
    coordinate follows the exact conditional law (GaussianMixture.conditional) and the known one is the data,
    bit for bit, whatever the sampler; a per-element mask and one shared mask give the same run."""
    gmm = _product()
    process = _process(sampler)
    n = 3000
    known = torch.zeros(n, 2)
    known[:, 0] = 2.3
    mask = torch.tensor([True, False])
    common = dict(sampler=sampler, steps=steps, prediction="eps", device="cpu", seed=3, known=known, **process)
    x = fastgen.sample(gmm.model(next(iter(process.values())), "eps"), (n, 2), known_mask=mask, **common)
    assert torch.equal(x[:, 0], known[:, 0])
    _check_law(x[:, 1], gmm.conditional(mask, torch.tensor([2.3, 0.0])), sampler)
    per_element = fastgen.sample(gmm.model(next(iter(process.values())), "eps"), (n, 2),
                                 known_mask=mask.expand(n, 2).contiguous(), **common)
    assert torch.equal(per_element, x)


@pytest.mark.parametrize("sampler,steps", [("euler_maruyama", 200), ("ddpm", 200), ("euler_ancestral", 100),
                                           ("pc", 100)])
def test_inpainting_with_known_coordinates_that_decide_first_follows_the_conditional_law(sampler, steps):
    """Correlated coordinates whose known one separates the components long before the unknown one does (means
    (-6, -1) and (6, 1), std 0.4): with a stochastic sampler the unknown coordinate follows the exact conditional
    law given a known value between the components, nearer one. (Replacement is not exact in general: the model
    sees the known value noised. At high noise that makes the unknown coordinate drift toward the mixture; the
    stochastic samplers' noise forgets it, the deterministic ones carry it to the end: ddim, dpmpp_2m and ode_heun
    end here with mean 0.90-0.91 for the exact 1.0, at 30 to 200 steps.)"""
    gmm = GaussianMixture(torch.tensor([[-6.0, -1.0], [6.0, 1.0]]), 0.4, torch.tensor([0.6, 0.4]))
    process = _process(sampler)
    n, value = 3000, 5.2
    known = torch.zeros(n, 2)
    known[:, 0] = value
    mask = torch.tensor([True, False])
    x = fastgen.sample(gmm.model(next(iter(process.values())), "eps"), (n, 2), sampler=sampler, steps=steps,
                       prediction="eps", device="cpu", seed=4, known=known, known_mask=mask, **process)
    law = gmm.conditional(mask, torch.tensor([value, 0.0]))
    assert float(law.weights[1]) > 0.999
    u = x[:, 1].double()
    assert abs(float(u.mean()) - 1.0) < 4.5 * 0.4 / math.sqrt(n) + 0.012, u.mean()
    assert abs(float(u.var()) / 0.16 - 1) < 4.5 * math.sqrt(2 / (n - 1)) + 0.06, u.var()


def test_inpainting_per_sample_masks_and_seeds_stay_with_their_sample_and_work_with_guidance():
    """Each sample its own mask and data; a sample is the same at batch sizes 1, 7 and 64 at any position, with
    labels and guidance in the same run; masked coordinates equal their data."""
    gmm, sde = _classes(), fastgen.VPSDE()
    model = gmm.model(sde, "eps", conditional=True)
    g = torch.Generator().manual_seed(7)
    labels = torch.randint(0, 3, (64,), generator=g)
    seeds = torch.randint(0, 2 ** 40, (64,), generator=g)
    known = gmm.sample(64, seed=8)
    mask = torch.rand(64, 2, generator=g) < 0.5
    common = dict(sde=sde, sampler="dpmpp_2m", steps=12, prediction="eps", device="cpu", guidance_scale=2.0,
                  uncond_kwargs={"y": torch.tensor([-1])})

    def run(index):
        return fastgen.sample(model, (len(index), 2), per_sample_seeds=seeds[index], model_kwargs={"y": labels[index]},
                              known=known[index], known_mask=mask[index], **common)

    full = run(torch.arange(64))
    assert torch.equal(full[mask], known[mask])
    for index in ([5], [40, 3, 17, 60, 9, 0, 33]):
        index = torch.tensor(index)
        torch.testing.assert_close(run(index), full[index], rtol=1e-5, atol=1e-5)


def test_bad_inpainting_input_names_the_argument():
    gmm, sde = _classes(), fastgen.VPSDE()
    model = gmm.model(sde)
    kwargs = dict(sde=sde, steps=4, device="cpu")
    known = torch.zeros(4, 2)
    with pytest.raises(ValueError, match="known and known_mask go together"):
        fastgen.sample(model, (4, 2), known=known, **kwargs)
    with pytest.raises(ValueError, match=r"known must be a floating-point tensor of the samples' shape \(4, 2\)"):
        fastgen.sample(model, (4, 2), known=torch.zeros(3, 2), known_mask=torch.ones(2, dtype=torch.bool), **kwargs)
    with pytest.raises(ValueError, match=r"known_mask must be a bool tensor .* of shape \(4, 2\) or \(2,\)"):
        fastgen.sample(model, (4, 2), known=known, known_mask=torch.ones(3, dtype=torch.bool), **kwargs)
    with pytest.raises(ValueError, match="known_mask must be a bool tensor"):
        fastgen.sample(model, (4, 2), known=known, known_mask=torch.ones(2), **kwargs)
    with pytest.raises(ValueError, match="known must be finite"):
        fastgen.sample(model, (4, 2), known=torch.full((4, 2), float("nan")),
                       known_mask=torch.ones(2, dtype=torch.bool), **kwargs)
    with pytest.raises(ValueError, match="guidance_rescale must be a number in"):
        fastgen.sample(gmm.model(sde, conditional=True), (4, 2), model_kwargs={"y": torch.zeros(4).long()},
                       uncond_kwargs={"y": torch.tensor([-1])}, guidance_scale=3.0, guidance_rescale=1.5, **kwargs)
    with pytest.raises(ValueError, match="give guidance_scale"):
        fastgen.sample(model, (4, 2), guidance_rescale=0.5, **kwargs)
    x = torch.randn(4, 2)
    before = x.clone()  # the op itself: a float mask is an error naming it, and nothing is written
    with pytest.raises((TypeError, ValueError), match="known_mask"):
        fastgen.ops.diffusion.diffusion_step_(x, torch.randn(4, 2), torch.rand(COEF_WIDTH) + 0.5, known=known,
                                              known_mask=torch.ones(4, 2))
    assert torch.equal(x, before)


def test_draw_refills_the_inpainting_data():
    gmm, sde = _product(), fastgen.VPSDE()
    model = gmm.model(sde, "eps")
    mask = torch.tensor([True, False])
    first, second = gmm.sample(16, seed=1), gmm.sample(16, seed=2)
    common = dict(sde=sde, sampler="euler_maruyama", steps=10, prediction="eps", device="cpu", seed=5,
                  known_mask=mask)
    runner = fastgen.make_sampler(model, (16, 2), known=first, **common)
    assert torch.equal(runner.draw(known=second), fastgen.sample(model, (16, 2), known=second, **common))
    assert torch.equal(runner.draw(known=first), fastgen.sample(model, (16, 2), known=first, **common))
    with pytest.raises(ValueError, match="built without inpainting"):
        fastgen.make_sampler(model, (16, 2), sde=sde, steps=2, device="cpu").draw(known=first)
