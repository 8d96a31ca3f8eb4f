"""The diffusion step ops on every backend against the reference, opcheck, and
the coefficient rules against their textbook update formulas."""

import math
import os

import pytest
import torch
from conftest import Sample, run_on

import fastgen
from fastgen.core.constants import COEF_WIDTH
from fastgen.diffusion.processes import VESDE, VPSDE, DDPMSchedule, SubVPSDE, get_sigmas_karras
from fastgen.ops import diffusion as D
from fastgen.reference import diffusion as R

PROCESSES = [VPSDE(), VPSDE(schedule="cosine"), SubVPSDE(), VESDE()]

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float16: dict(rtol=2e-3, atol=2e-3),
       torch.bfloat16: dict(rtol=2e-2, atol=2e-2)}


def rows(batch, g, per_sample):
    n = batch if per_sample else 1
    alpha = torch.rand(n, generator=g) * 0.8 + 0.2
    sigma = (1 - alpha.square()).sqrt()
    cols = [alpha, sigma, torch.rand(n, generator=g) + 0.5] + [torch.randn(n, generator=g) for _ in range(5)]
    cols += [-torch.rand(n, generator=g) - 0.5, torch.rand(n, generator=g) + 0.5]  # alpha', sigma': det >= 0.1
    return torch.stack(cols, 1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (3, 1), (1, 1000003), (37, 3, 5)])
@pytest.mark.parametrize("prediction", ["eps", "x0", "v", "score", "velocity"])
def test_diffusion_step_matches_reference(device_backend, dtype, shape, prediction):
    device, backend = device_backend
    if backend == "triton" and device == "cpu" and dtype == torch.bfloat16:
        pytest.skip("Triton's CPU interpreter mishandles bfloat16")
    g = torch.Generator().manual_seed(math.prod(shape))
    x = torch.randn(shape, generator=g).to(device, dtype)
    out = torch.randn(shape, generator=g).to(device, dtype)
    coef = rows(shape[0], g, per_sample=shape[0] > 1).to(device)
    aux = torch.randn(shape, generator=g).to(device)
    results = {}
    for name in (backend, "torch"):
        xs, auxs = x.clone(), aux.clone()
        run_on(name, D.diffusion_step_, xs, out, coef, prediction=prediction, clip=1.5, aux=auxs, aux_store="x0",
               seed=3, offset=2**32 - 5)
        results[name] = (xs, auxs)
    torch.testing.assert_close(results[backend][0], results["torch"][0], **TOL[dtype])
    torch.testing.assert_close(results[backend][1], results["torch"][1], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode", ["index-shared", "index-per-sample", "explicit-noise", "sample-seeds", "increment",
                                  "eps"])
def test_diffusion_step_modes_match_reference(device_backend, mode):
    device, backend = device_backend
    g = torch.Generator().manual_seed(5)
    x = torch.randn(9, 4, 3, generator=g).to(device)
    out = torch.randn(9, 4, 3, generator=g).to(device)
    table = rows(20, g, per_sample=True).to(device)
    kwargs = dict(prediction="eps", seed=11, offset=7)
    if mode == "index-shared":
        kwargs["index"] = torch.tensor([13], device=device)
    elif mode == "index-per-sample":
        kwargs["index"] = torch.randint(0, 20, (9,), generator=g).to(device)
    else:
        table = table[:1]
    if mode == "explicit-noise":
        kwargs["noise"] = torch.randn(9, 4, 3, generator=g).to(device)
    if mode == "sample-seeds":
        kwargs["sample_seeds"] = torch.randint(0, 2**40, (9,), generator=g).to(device)
        kwargs["sample_offset"] = 24
    aux = torch.randn(9, 4, 3, generator=g).to(device) if mode in ("increment", "eps") else None
    results = {}
    for name in (backend, "torch"):
        xs = x.clone()
        a = None if aux is None else aux.clone()
        run_on(name, D.diffusion_step_, xs, out, table, aux=a, aux_store=mode if a is not None else None, **kwargs)
        results[name] = (xs, a)
    torch.testing.assert_close(results[backend][0], results["torch"][0], rtol=1e-5, atol=1e-5)
    if aux is not None:
        torch.testing.assert_close(results[backend][1], results["torch"][1], rtol=1e-5, atol=1e-5)
        kept = results["torch"][0] - x if mode == "increment" else out  # eps prediction: the output is eps
        torch.testing.assert_close(results["torch"][1], kept, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(1, 1), (5, 2), (3, 1000)])
def test_langevin_correct_matches_reference(device_backend, shape):
    device, backend = device_backend
    g = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=g).to(device)
    out = torch.randn(shape, generator=g).to(device)
    coef = torch.tensor([[0.8, 0.6, 1.0, 0.99, 0, 0, 0, 0, 0, 0]], device=device)
    got = run_on(backend, D.langevin_correct_, x.clone(), out, coef, snr=0.16, seed=4, offset=9)
    want = run_on("torch", D.langevin_correct_, x.clone(), out, coef, snr=0.16, seed=4, offset=9)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_sample_seeds_make_noise_independent_of_the_batch(device_backend):
    device, backend = device_backend
    seeds = torch.tensor([5, 9, 2**50 + 1, 77], device=device)
    coef = torch.tensor([[1.0, 1.0, 1.0, 0, 0, 0, 0, 1.0, 0, 0]], device=device)  # x <- xi
    batch = torch.zeros(4, 6, device=device)
    run_on(backend, D.diffusion_step_, batch, batch.clone(), coef, sample_seeds=seeds, sample_offset=12)
    for b in range(4):
        alone = torch.zeros(1, 6, device=device)
        run_on(backend, D.diffusion_step_, alone, alone.clone(), coef, sample_seeds=seeds[b:b + 1], sample_offset=12)
        assert torch.equal(alone[0], batch[b])
    torch.testing.assert_close(batch[0].cpu(), fastgen.ops.normal(6, 5, 12), rtol=0, atol=2e-6)


# ---------------------------------------------------------------- coefficient rules


def test_ddpm_rule_is_the_posterior_mean_plus_noise():
    sched = DDPMSchedule()
    t, s = 500, 480
    abar_t, abar_s = sched.alphas_cumprod[t], sched.alphas_cumprod[s]
    beta = 1 - abar_t / abar_s
    alpha, sigma, k, c_x, c_x0, c_eps, c_aux, c_noise = D.ddpm_coefficients(sched, t, s)[0].tolist()[:8]
    assert math.isclose(c_x0, abar_s.sqrt() * beta / (1 - abar_t))
    assert math.isclose(c_x, (1 - beta).sqrt() * (1 - abar_s) / (1 - abar_t))
    assert math.isclose(c_noise ** 2, beta * (1 - abar_s) / (1 - abar_t))
    assert D.ddpm_coefficients(sched, 0, -1)[0, 7] == 0  # no noise at the last step


def test_ddim_with_eta_one_is_ddpm():
    sched = DDPMSchedule()
    x = torch.randn(100, 3)
    eps = torch.randn(100, 3)
    a = D.diffusion_step_(x.clone(), eps, D.ddpm_coefficients(sched, 600, 580), seed=1)
    b = D.diffusion_step_(x.clone(), eps, D.ddim_coefficients(sched, 600, 580, eta=1.0), seed=1)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sde", PROCESSES, ids=lambda s: type(s).__name__)
def test_euler_maruyama_rule_matches_the_reverse_sde(sde):
    t, t_next = 0.6, 0.58
    x = torch.randn(50, 2, dtype=torch.float64)
    score = torch.randn(50, 2, dtype=torch.float64)
    row = D.euler_maruyama_coefficients(sde, t, t_next)[0]
    alpha, sigma = sde.marginal(t)
    eps = -sigma * score
    got = row[3] * x + row[5] * eps
    want = x - sde.reverse_drift(x, torch.tensor(t, dtype=torch.float64), score) * (t - t_next)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(row[7], sde.diffusion(t) * math.sqrt(t - t_next))


@pytest.mark.parametrize("sde", PROCESSES, ids=lambda s: type(s).__name__)
def test_sde_marginals_and_inverses(sde):
    t = torch.linspace(0.05, 0.95, 7, dtype=torch.float64)
    alpha, sigma = sde.marginal(t)
    torch.testing.assert_close(sde.time_of_sigma_ratio(sigma / alpha), t)
    # d/dt log alpha = f(t) (the drift coefficient), by finite differences.
    h = 1e-6
    dlog = (torch.log(sde.marginal(t + h)[0]) - torch.log(sde.marginal(t - h)[0])) / (2 * h)
    torch.testing.assert_close(dlog, sde.drift_coef(t), rtol=1e-5, atol=1e-6)
    # d/dt sigma^2 = 2 f sigma^2 + g^2 (the marginal variance ODE).
    dvar = (sde.marginal(t + h)[1] ** 2 - sde.marginal(t - h)[1] ** 2) / (2 * h)
    torch.testing.assert_close(dvar, 2 * sde.drift_coef(t) * sigma**2 + sde.diffusion(t) ** 2, rtol=1e-4, atol=1e-6)


def test_karras_sigmas():
    s = get_sigmas_karras(10, 0.002, 80.0)
    assert s.shape == (11,) and s[-1] == 0 and math.isclose(float(s[0]), 80.0, rel_tol=1e-6)
    assert math.isclose(float(s[-2]), 0.002, rel_tol=1e-5) and bool((s[:-1].diff() < 0).all())


# ---------------------------------------------------------------- registration and errors


def test_diffusion_step_bad_input():
    x = torch.randn(4, 3)
    out = torch.randn(4, 3)
    before = x.clone()
    with pytest.raises(ValueError, match="prediction must be one of eps, x0, v, score, velocity"):
        D.diffusion_step_(x, out, torch.zeros(COEF_WIDTH), prediction="noise")
    with pytest.raises(ValueError, match="model_out must have the shape of x"):
        D.diffusion_step_(x, out[:2], torch.zeros(COEF_WIDTH))
    with pytest.raises(ValueError, match="coef must have 1 or 4 rows"):
        D.diffusion_step_(x, out, torch.zeros(3, COEF_WIDTH))
    with pytest.raises(ValueError, match="coef must be a tensor of shape"):
        D.diffusion_step_(x, out, torch.zeros(7))
    with pytest.raises(ValueError, match="aux_store needs an aux tensor"):
        D.diffusion_step_(x, out, torch.zeros(COEF_WIDTH), aux_store="x0")
    with pytest.raises(ValueError, match="per_sample_seeds must be"):
        D.diffusion_step_(x, out, torch.zeros(COEF_WIDTH), sample_seeds=torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="snr must be"):
        D.langevin_correct_(x, out, torch.zeros(COEF_WIDTH), snr=0.0)
    assert torch.equal(x, before)


def test_convenience_steps_equal_the_generic_op_with_their_rule():
    sched, sde = DDPMSchedule(), VPSDE()
    x = torch.randn(6, 5)
    out = torch.randn(6, 5)
    pairs = [
        (D.ddpm_step_(x.clone(), out, sched, 300, 280, seed=2),
         D.diffusion_step_(x.clone(), out, D.ddpm_coefficients(sched, 300, 280), seed=2)),
        (D.ddim_step_(x.clone(), out, sched, 300, 280, eta=0.3, seed=2),
         D.diffusion_step_(x.clone(), out, D.ddim_coefficients(sched, 300, 280, 0.3), seed=2)),
        (D.euler_maruyama_step_(x.clone(), out, sde, 0.5, 0.49, seed=2),
         D.diffusion_step_(x.clone(), out, D.euler_maruyama_coefficients(sde, 0.5, 0.49), prediction="score", seed=2)),
        (D.euler_ancestral_step_(x.clone(), out, 2.0, 1.5, seed=2),
         D.diffusion_step_(x.clone(), out, D.euler_ancestral_coefficients(2.0, 1.5), seed=2)),
    ]
    for got, want in pairs:
        assert torch.equal(got, want)
    # Per-sample times give one row per sample.
    t = torch.tensor([900, 500, 100, 50, 10, 1])
    rows_ = D.ddpm_coefficients(sched, t, t - 1)
    assert rows_.shape == (6, COEF_WIDTH)
    D.diffusion_step_(x.clone(), out, rows_, seed=0)


@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE(), VESDE()], ids=lambda s: type(s).__name__)
def test_marginal_prob_and_prior(sde):
    x0 = torch.randn(4, 3, dtype=torch.float64)
    mean, std = sde.marginal_prob(x0, torch.full((4,), 0.3, dtype=torch.float64))
    alpha, sigma = sde.marginal(0.3)
    torch.testing.assert_close(mean, alpha * x0)
    torch.testing.assert_close(std, sigma.expand(4))
    prior = sde.prior_sample((20000, 2), seed=1)
    assert abs(float(prior.std()) - sde.prior_std()) < 0.05 * sde.prior_std()
    assert torch.equal(DDPMSchedule().prior_sample((3, 2), seed=4), DDPMSchedule().prior_sample((3, 2), seed=4))


# ---------------------------------------------------------------- registry harness inputs (tests/test_registry.py)


def _table(device, rows_=6, seed=4):
    g = torch.Generator().manual_seed(seed)
    return (rows(rows_, g, True)).to(device).contiguous()


def _step_samples(device, dtype):
    out = []
    g = torch.Generator().manual_seed(1)
    for shape, prediction in [((1, 1), 0), ((3, 1), 1), ((1, 1000003), 2), ((37, 3, 5), 3), ((0, 4), 0), ((9, 7), 4)]:
        x = torch.randn(shape, generator=g).to(device, dtype)
        model_out = torch.randn(shape, generator=g).to(device, dtype)
        out.append(Sample(x=x, model_out=model_out, coef=rows(1, g, False).to(device), prediction=prediction,
                          seed=3, offset=5))
    x = torch.randn(37, 5, generator=g).to(device, dtype)
    model_out = torch.randn(37, 5, generator=g).to(device, dtype)
    write_only = _table(device)
    write_only[:, 6] = 0.0  # c_aux = 0: aux is only written (x0), so it can be poisoned
    out.append(Sample(poison=("aux",), x=x, model_out=model_out, coef=write_only, index=(torch.arange(37) % 6).to(
        device), prediction=0, clip=1.0, aux=torch.zeros(37, 5, device=device), aux_store=1,
        sample_seeds=(torch.arange(37) * 3 + 1).to(device), sample_offset=10))
    out.append(Sample(x=x, model_out=model_out, coef=rows(37, g, True).to(device), prediction=2, clip_eps=False,
                      clip=0.5, noise=torch.randn(37, 5, generator=g).to(device)))
    # classifier-free guidance: one scale for the batch, and one per sample
    out.append(Sample(x=x, model_out=model_out, coef=rows(1, g, False).to(device), prediction=0, seed=2,
                      uncond_out=torch.randn(37, 5, generator=g).to(device, dtype),
                      guidance=torch.tensor([3.5], device=device)))
    out.append(Sample(x=torch.randn(6, 3, 4, generator=g).to(device, dtype),
                      model_out=torch.randn(6, 3, 4, generator=g).to(device, dtype),
                      coef=rows(6, g, True).to(device), prediction=3, sample_seeds=torch.arange(6, device=device),
                      uncond_out=torch.randn(6, 3, 4, generator=g).to(device, dtype),
                      guidance=torch.linspace(0, 5, 6).to(device)))
    # guidance rescale (per-sample standard deviations; a sample longer than one reduction block, one of length 1)
    for shape, w in [((4, 3, 700), [7.5]), ((3, 1), [2.0, 0.5, 4.0])]:
        out.append(Sample(x=torch.randn(shape, generator=g).to(device, dtype),
                          model_out=torch.randn(shape, generator=g).to(device, dtype) + 0.3,
                          coef=rows(1, g, False).to(device), prediction=2, seed=4, offset=7,
                          uncond_out=(0.5 * torch.randn(shape, generator=g)).to(device, dtype),
                          guidance=torch.tensor(w, device=device), guidance_rescale=0.7))
    # inpainting: a per-element mask on a noisy step with per-sample seeds; one mask for every sample on a step
    # without noise of its own (the known region still draws it), with guidance and rescale
    known = torch.randn(5, 2, 9, generator=g).to(device)
    out.append(Sample(x=torch.randn(5, 2, 9, generator=g).to(device, dtype),
                      model_out=torch.randn(5, 2, 9, generator=g).to(device, dtype), coef=rows(5, g, True).to(device),
                      prediction=0, sample_seeds=torch.arange(5, device=device) + 11, sample_offset=3, known=known,
                      known_mask=(torch.rand(5, 2, 9, generator=g) < 0.4).to(device), known_keep=0.8,
                      known_std=0.6))
    ode = rows(1, g, False)
    ode[:, 7] = 0.0
    out.append(Sample(x=torch.randn(5, 2, 9, generator=g).to(device, dtype),
                      model_out=torch.randn(5, 2, 9, generator=g).to(device, dtype), coef=ode.to(device), prediction=1,
                      seed=6, offset=2, known=known, known_mask=(torch.rand(2, 9, generator=g) < 0.5).to(device),
                      known_keep=0.3, known_std=0.95,
                      uncond_out=torch.randn(5, 2, 9, generator=g).to(device, dtype),
                      guidance=torch.tensor([3.0], device=device), guidance_rescale=1.0))
    return out


def _correct_samples(device, dtype):
    out = []
    g = torch.Generator().manual_seed(2)
    for shape in [(1, 1), (3, 2), (2, 100003), (37, 3, 5), (0, 4)]:
        x = torch.randn(shape, generator=g).to(device, dtype)
        model_out = torch.randn(shape, generator=g).to(device, dtype)
        table = _table(device).abs()
        out.append(Sample(x=x, model_out=model_out, coef=table[:1], prediction=3, snr=0.16, seed=9, offset=4))
    x = torch.randn(37, 4, generator=g).to(device, dtype)
    out.append(Sample(x=x, model_out=torch.randn(37, 4, generator=g).to(device, dtype), coef=_table(device).abs(),
                      index=torch.full((37,), 2, device=device), prediction=0, snr=0.1,
                      sample_seeds=torch.arange(37, device=device)))
    return out


SAMPLES = {"diffusion_step_": _step_samples, "langevin_correct_": _correct_samples}


@pytest.mark.parametrize("index", [[6], [-1], [10**12], [2, 6, 1]])
def test_out_of_range_index_is_an_error_on_every_backend_and_writes_nothing(index):
    """An index naming no row of coef never reads outside it: an IndexError on every backend, x untouched. (A GPU
    index is read by the kernel: test_gpu_kernels_flag_an_out_of_range_index.)"""
    from conftest import cpu_backends

    x = torch.randn(3, 4)
    before = x.clone()
    idx = torch.tensor(index)  # one shared row, or one per sample
    for backend in cpu_backends():
        with fastgen.use_backend(backend), pytest.raises(IndexError, match="index"):
            D.diffusion_step_(x, torch.randn(3, 4), torch.rand(6, COEF_WIDTH) + 0.5, index=idx, seed=0)
        with fastgen.use_backend(backend), pytest.raises(IndexError, match="index"):
            D.langevin_correct_(x, torch.randn(3, 4), torch.rand(6, COEF_WIDTH) + 0.5, index=idx, snr=0.1)
        assert torch.equal(x, before), backend


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="the Triton kernels run on the CPU here only "
                    "in the interpreter (on a GPU: tests/test_gpu.py)")
def test_gpu_kernels_flag_an_out_of_range_index():
    """The GPU kernels read index on the device (checking it on the host would sync): a sample whose index names
    no row of coef gets a NaN state, read by check_finite after a loop, and nothing is read outside coef; the other
    samples are as the reference makes them. The raw Triton launchers, past the registry's host check, show it."""
    from fastgen.kernels import diffusion as K

    g = torch.Generator().manual_seed(0)
    x, out, table = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g), _table("cpu").abs()
    index = torch.tensor([1, len(table), -3, 2])
    good = torch.tensor([True, False, False, True])
    for launch, reference, extra in ((K.diffusion_step_, R.diffusion_step_, {}),
                                     (K.langevin_correct_, R.langevin_correct_, {"snr": 0.1})):
        args = dict(model_out=out, coef=table, prediction=0, seed=3, offset=0, rng_state=None, sample_seeds=None,
                    sample_offset=0, **extra)
        if launch is K.diffusion_step_:
            args.update(clip=None, clip_eps=False, aux=None, aux_store=0, noise=None)
        y = x.clone()
        launch(y, index=index, **args)
        expected = x.clone()
        reference(expected, index=torch.where(good, index, 0), **args)
        assert torch.isnan(y[~good]).all(), launch.__name__
        torch.testing.assert_close(y[good], expected[good], rtol=1e-5, atol=1e-5)
