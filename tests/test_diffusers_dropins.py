"""fastgen.diffusers equals diffusers' schedulers on the same noise over whole schedules."""

import inspect

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
from fastgen.integrations import diffusers as fast  # noqa: E402


def model(sample, t):
    """A deterministic stand-in for a network: any function of (x, t) will do."""
    t = float(t)
    return 0.3 * sample + torch.sin(sample * 2 + t / 100.0) * 0.5


def run(scheduler, steps, sample, seed, **step_kwargs):
    scheduler.set_timesteps(steps)
    generator = torch.Generator().manual_seed(seed)
    x = sample * scheduler.init_noise_sigma
    outs = []
    for t in scheduler.timesteps:
        inp = scheduler.scale_model_input(x, t)
        out = scheduler.step(model(inp, t), t, x, generator=generator, **step_kwargs)
        x = out.prev_sample
        outs.append((x, out.pred_original_sample))
    return outs


def assert_same(a, b, tol=1e-4):
    for (xa, x0a), (xb, x0b) in zip(a, b, strict=True):
        torch.testing.assert_close(xa, xb, rtol=tol, atol=tol)
        torch.testing.assert_close(x0a, x0b, rtol=tol, atol=tol)


@pytest.mark.parametrize("config", [
    dict(),
    dict(prediction_type="v_prediction", clip_sample=False),
    dict(prediction_type="sample", beta_schedule="squaredcos_cap_v2", variance_type="fixed_large"),
    dict(timestep_spacing="trailing", clip_sample_range=0.5),
])
def test_ddpm(config):
    sample = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    ours = fast.DDPMScheduler(**config)
    theirs = diffusers.DDPMScheduler(**config)
    assert_same(run(ours, 50, sample, 1), run(theirs, 50, sample, 1))


@pytest.mark.parametrize("eta", [0.0, 0.7])
@pytest.mark.parametrize("config", [dict(), dict(prediction_type="v_prediction", set_alpha_to_one=False),
                                    dict(prediction_type="sample", clip_sample=False)])
@pytest.mark.parametrize("use_clipped", [False, True])
def test_ddim(config, eta, use_clipped):
    sample = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    ours = fast.DDIMScheduler(**config)
    theirs = diffusers.DDIMScheduler(**config)
    kwargs = dict(eta=eta, use_clipped_model_output=use_clipped)
    assert_same(run(ours, 25, sample, 2, **kwargs), run(theirs, 25, sample, 2, **kwargs))


def test_ddim_variance_noise():
    sample = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    noise = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(9))
    results = []
    for cls in (fast.DDIMScheduler, diffusers.DDIMScheduler):
        s = cls()
        s.set_timesteps(10)
        t = s.timesteps[3]
        results.append(s.step(model(sample, t), t, sample, eta=1.0, variance_noise=noise).prev_sample)
    torch.testing.assert_close(results[0], results[1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("config", [dict(), dict(prediction_type="v_prediction", beta_schedule="scaled_linear")])
def test_euler_ancestral(config):
    sample = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    ours = fast.EulerAncestralDiscreteScheduler(**config)
    theirs = diffusers.EulerAncestralDiscreteScheduler(**config)
    assert_same(run(ours, 30, sample, 4), run(theirs, 30, sample, 4))


@pytest.mark.parametrize("config", [
    dict(),
    dict(prediction_type="v_prediction", beta_schedule="scaled_linear", use_karras_sigmas=True),
    dict(prediction_type="sample", timestep_spacing="trailing", final_sigmas_type="zero"),
    dict(timestep_type="continuous", prediction_type="v_prediction", use_exponential_sigmas=True),
])
def test_euler(config):
    sample = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    ours = fast.EulerDiscreteScheduler(**config)
    theirs = diffusers.EulerDiscreteScheduler(**config)
    assert_same(run(ours, 30, sample, 4), run(theirs, 30, sample, 4))


def test_euler_with_churn_runs_diffusers_step():
    """s_churn > 0: diffusers' own step (with its generator draws), so the runs are equal."""
    sample = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    churn = dict(s_churn=0.5, s_tmin=0.2, s_tmax=10.0)
    assert_same(run(fast.EulerDiscreteScheduler(), 20, sample, 5, **churn),
                run(diffusers.EulerDiscreteScheduler(), 20, sample, 5, **churn))


def run_flow(scheduler, steps, sample, seed, **set_kwargs):
    scheduler.set_timesteps(steps, **set_kwargs)
    generator = torch.Generator().manual_seed(seed)
    x, outs = sample, []
    for t in scheduler.timesteps:
        x = scheduler.step(model(x, t), t, x, generator=generator).prev_sample
        outs.append((x, x))
    return outs


@pytest.mark.parametrize("config,set_kwargs", [
    (dict(), {}),
    (dict(shift=3.0), {}),  # SD3
    (dict(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15), dict(mu=0.9)),  # Flux
    (dict(stochastic_sampling=True, shift=3.0), {}),
    (dict(use_karras_sigmas=True), {}),
    (dict(shift_terminal=0.1), {}),
])
def test_flow_match_euler(config, set_kwargs):
    """28 steps (SD3's default) from the same noise, deterministic and stochastic (diffusers' generator draws)."""
    sample = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    ours = fast.FlowMatchEulerDiscreteScheduler(**config)
    theirs = diffusers.FlowMatchEulerDiscreteScheduler(**config)
    assert_same(run_flow(ours, 28, sample, 4, **set_kwargs), run_flow(theirs, 28, sample, 4, **set_kwargs))


def run_prev(scheduler, steps, sample, seed, dtype=torch.float32):
    """Whole loop of a scheduler whose output holds prev_sample only."""
    scheduler.set_timesteps(steps)
    noise = {"generator": torch.Generator().manual_seed(seed)} if "generator" in inspect.signature(
        scheduler.step).parameters else {}
    x, outs = sample.to(dtype) * scheduler.init_noise_sigma, []
    for t in scheduler.timesteps:
        x = scheduler.step(model(scheduler.scale_model_input(x, t), t).to(dtype), t, x, **noise).prev_sample
        outs.append((x, x))
    return outs


DPM_CONFIGS = [dict(algorithm_type=a, solver_type=st, solver_order=o, prediction_type=p, **extra)
               for a, st, o, p, extra in [
                   ("dpmsolver++", "midpoint", 2, "epsilon", {}),  # Stable Diffusion's
                   ("dpmsolver++", "heun", 2, "v_prediction", dict(use_karras_sigmas=True)),
                   ("dpmsolver++", "midpoint", 3, "epsilon", dict(final_sigmas_type="sigma_min")),
                   ("dpmsolver++", "midpoint", 3, "sample", dict(lower_order_final=False, euler_at_final=True)),
                   ("dpmsolver++", "midpoint", 1, "v_prediction", dict(use_exponential_sigmas=True)),
                   ("dpmsolver++", "midpoint", 2, "epsilon", dict(use_lu_lambdas=True)),
                   ("dpmsolver", "midpoint", 2, "epsilon", dict(final_sigmas_type="sigma_min")),
                   ("dpmsolver", "heun", 3, "v_prediction", dict(final_sigmas_type="sigma_min")),
                   ("sde-dpmsolver++", "midpoint", 2, "epsilon", dict(use_karras_sigmas=True)),
                   ("sde-dpmsolver++", "heun", 3, "sample", {}),
                   ("sde-dpmsolver", "heun", 2, "epsilon", dict(final_sigmas_type="sigma_min")),
                   ("dpmsolver++", "midpoint", 2, "flow_prediction", dict(use_flow_sigmas=True, flow_shift=3.0)),
               ]]


@pytest.mark.parametrize("config", DPM_CONFIGS, ids=lambda c: "-".join(str(v) for v in c.values()))
@pytest.mark.parametrize("steps", [8, 30])
def test_dpm_solver_multistep(config, steps):
    """Whole loops from the same noise (the SDE variants on diffusers' generator draws) equal diffusers' own to 1e-3
    (diffusers' own loop tests' tolerance; the coefficients here are computed in float64, diffusers' in float32,
    and Karras sigmas start at 14.6)."""
    sample = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    assert_same(run_prev(fast.DPMSolverMultistepScheduler(**config), steps, sample, 4),
                run_prev(diffusers.DPMSolverMultistepScheduler(**config), steps, sample, 4), tol=1e-3)


def test_dpm_solver_multistep_every_solver_order_and_prediction():
    """30-step loops for every algorithm type, solver type, order and prediction type (diffusers' combinations:
    sde-dpmsolver has no third order, the eps-space types take no final sigma of 0) equal diffusers' own to 1e-3, or
    are non-finite where diffusers' are too (dpmsolver with Karras sigmas from 14.6 overflows in both)."""
    sample = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    for algorithm in ("dpmsolver++", "dpmsolver", "sde-dpmsolver++", "sde-dpmsolver"):
        for solver_type in ("midpoint", "heun"):
            for order in (1, 2, 3):
                if algorithm == "sde-dpmsolver" and order == 3:
                    continue
                for prediction in ("epsilon", "sample", "v_prediction"):
                    config = dict(algorithm_type=algorithm, solver_type=solver_type, solver_order=order,
                                  prediction_type=prediction)
                    if not algorithm.endswith("++"):
                        config["final_sigmas_type"] = "sigma_min"
                    ours = run_prev(fast.DPMSolverMultistepScheduler(**config), 30, sample, 4)[-1][0]
                    theirs = run_prev(diffusers.DPMSolverMultistepScheduler(**config), 30, sample, 4)[-1][0]
                    torch.testing.assert_close(ours, theirs, rtol=1e-3, atol=1e-3, equal_nan=True)


def test_unipc_every_solver_order_and_prediction():
    """30-step UniPC loops for bh1 and bh2, orders 1 to 3, every prediction type, x0 and eps forms equal diffusers'
    to 1e-3 (final sigma sigma_min: with 0, bh1's last step is NaN in diffusers and here alike)."""
    sample = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    for solver_type in ("bh1", "bh2"):
        for order in (1, 2, 3):
            for prediction in ("epsilon", "sample", "v_prediction"):
                for predict_x0 in (True, False):
                    config = dict(solver_type=solver_type, solver_order=order, prediction_type=prediction,
                                  predict_x0=predict_x0, final_sigmas_type="sigma_min")
                    ours = run_prev(fast.UniPCMultistepScheduler(**config), 30, sample, 4)[-1][0]
                    theirs = run_prev(diffusers.UniPCMultistepScheduler(**config), 30, sample, 4)[-1][0]
                    torch.testing.assert_close(ours, theirs, rtol=1e-3, atol=1e-3)


def test_dpm_solver_multistep_fp16_history_from_outside_and_passes(monkeypatch):
    """float16 samples; history put in ``model_outputs`` by the caller is read, never written; one fused pass per
    step with solver_order 2, plus one kernel from the third order on with solver_order 3; thresholding runs
    diffusers' step."""
    sample = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    for config in (dict(), dict(solver_order=3)):
        a = run_prev(fast.DPMSolverMultistepScheduler(**config), 12, sample, 1, torch.float16)
        b = run_prev(diffusers.DPMSolverMultistepScheduler(**config), 12, sample, 1, torch.float16)
        assert a[-1][0].dtype == torch.float16
        torch.testing.assert_close(a[-1][0], b[-1][0], rtol=2e-2, atol=2e-2)
    history = [torch.full_like(sample, 0.2), torch.full_like(sample, -0.1)]
    ours, theirs = fast.DPMSolverMultistepScheduler(), diffusers.DPMSolverMultistepScheduler()
    for s in (ours, theirs):
        s.set_timesteps(10)
        s.model_outputs, s.lower_order_nums = list(history), 1
    t = ours.timesteps[3]
    torch.testing.assert_close(ours.step(0.1 * sample, t, sample).prev_sample,
                               theirs.step(0.1 * sample, t, sample).prev_sample)
    assert (history[0] == 0.2).all() and (history[1] == -0.1).all()
    calls = []
    real = fast.ops.diffusion_step_
    monkeypatch.setattr(fast.ops, "diffusion_step_", lambda *a, **k: calls.append(1) or real(*a, **k))
    for config, thresholding in ((dict(), False), (dict(solver_order=3), False), (dict(), True)):
        calls.clear()
        run_prev(fast.DPMSolverMultistepScheduler(thresholding=thresholding, **config), 7, sample, 0)
        assert len(calls) == (0 if thresholding else 7)


def run_pair(scheduler, steps, sample, seed, dtype=torch.float32, **step_kwargs):
    """Whole loop of LCM / TCD: (prev_sample, second output) per step."""
    scheduler.set_timesteps(steps)
    generator = torch.Generator().manual_seed(seed)
    x, outs = sample.to(dtype), []
    for t in scheduler.timesteps:
        prev, second = scheduler.step(model(x, t).to(dtype), t, x, generator=generator, return_dict=False,
                                      **step_kwargs)
        outs.append((prev, second))
        x = prev
    return outs


@pytest.mark.parametrize("config", [dict(), dict(prediction_type="v_prediction", timestep_scaling=5.0),
                                    dict(prediction_type="sample", clip_sample=True, clip_sample_range=0.8),
                                    dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                         set_alpha_to_one=False)])
@pytest.mark.parametrize("steps", [1, 2, 4, 8])
def test_lcm(config, steps):
    """LCM loops (prev_sample and denoised at every step) equal diffusers' on its generator draws."""
    sample = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    assert_same(run_pair(fast.LCMScheduler(**config), steps, sample, 4),
                run_pair(diffusers.LCMScheduler(**config), steps, sample, 4))


@pytest.mark.parametrize("config", [dict(), dict(prediction_type="v_prediction"), dict(prediction_type="sample")])
@pytest.mark.parametrize("steps,eta", [(1, 0.3), (4, 0.0), (4, 0.3), (8, 1.0)])
def test_tcd(config, steps, eta):
    """TCD loops (prev_sample and pred_noised_sample) equal diffusers' at gamma 0, 0.3 and 1."""
    sample = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    assert_same(run_pair(fast.TCDScheduler(**config), steps, sample, 4, eta=eta),
                run_pair(diffusers.TCDScheduler(**config), steps, sample, 4, eta=eta))


def test_lcm_tcd_float16_and_passes(monkeypatch):
    """float16 loops stay float16 and near diffusers'; two fused passes per step, one on the last (its second
    output is prev)."""
    sample = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    for cls in ("LCMScheduler", "TCDScheduler"):
        a = run_pair(getattr(fast, cls)(), 4, sample, 1, torch.float16)
        b = run_pair(getattr(diffusers, cls)(), 4, sample, 1, torch.float16)
        assert a[-1][0].dtype == torch.float16
        torch.testing.assert_close(a[-1][0], b[-1][0], rtol=2e-2, atol=2e-2)
    calls = []
    real = fast.ops.diffusion_step_
    monkeypatch.setattr(fast.ops, "diffusion_step_", lambda *a, **k: calls.append(1) or real(*a, **k))
    for cls in ("LCMScheduler", "TCDScheduler"):
        calls.clear()
        run_pair(getattr(fast, cls)(), 4, sample, 1)
        assert len(calls) == 2 * 4 - 1


@pytest.mark.parametrize("config", [dict(), dict(prediction_type="v_prediction", use_karras_sigmas=True),
                                    dict(prediction_type="sample", clip_sample=True, clip_sample_range=1.5),
                                    dict(use_exponential_sigmas=True, timestep_spacing="trailing")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_heun(config, dtype):
    """Heun loops (both stages' prev_sample and pred_original_sample) equal diffusers' own, the model called on the
    scaled input as pipelines do. float16: the drop-in computes in float32 and rounds once per stage, diffusers in
    float16 throughout: its mean distance from diffusers' float32 loop is at most diffusers' float16 loop's."""
    sample = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))

    def loop(s, dtype):
        s.set_timesteps(30)
        x, out = sample.to(dtype) * s.init_noise_sigma, []
        for t in s.timesteps:
            step = s.step(model(s.scale_model_input(x, t), t).to(dtype), t, x)
            x = step.prev_sample
            out.append((x, step.pred_original_sample))
        return out

    ours, theirs = loop(fast.HeunDiscreteScheduler(**config), dtype), loop(
        diffusers.HeunDiscreteScheduler(**config), torch.float32)
    assert ours[-1][0].dtype == dtype
    if dtype == torch.float32:
        assert_same(ours, theirs)
    else:
        half = loop(diffusers.HeunDiscreteScheduler(**config), dtype)
        assert (ours[-1][0].float() - theirs[-1][0]).abs().mean() <= (half[-1][0].float() - theirs[-1][0]).abs().mean()


UNIPC_CONFIGS = [dict(), dict(solver_order=3),
                 dict(solver_type="bh1", use_karras_sigmas=True, final_sigmas_type="sigma_min"),
                 dict(prediction_type="v_prediction", solver_order=1), dict(disable_corrector=[0, 2], solver_order=3),
                 dict(predict_x0=False, final_sigmas_type="sigma_min"),
                 dict(prediction_type="sample", lower_order_final=False, final_sigmas_type="sigma_min"),
                 dict(use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=3.0)]


@pytest.mark.parametrize("config", UNIPC_CONFIGS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()) or "default")
@pytest.mark.parametrize("steps", [5, 30])
def test_unipc(config, steps):
    """Whole UniPC loops (corrector and predictor, every order) equal diffusers' own to 1e-3 (diffusers' loop
    tests' tolerance: the expanded one-pass form rounds differently where the eps form meets small sigmas)."""
    sample = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    assert_same(run_prev(fast.UniPCMultistepScheduler(**config), steps, sample, 4),
                run_prev(diffusers.UniPCMultistepScheduler(**config), steps, sample, 4), tol=1e-3)


def test_unipc_last_sample_edits_and_passes(monkeypatch):
    """last_sample (the corrected sample, never materialized by the fused step) reads as diffusers'; a sample edited
    between steps (as inpainting pipelines do) runs diffusers' step from it, with the same result; one fused pass
    per step; an order-2 step onto sigma = 0 is refused with the way out named."""
    sample = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    ours, theirs = fast.UniPCMultistepScheduler(), diffusers.UniPCMultistepScheduler()
    xs = []
    for s in (ours, theirs):
        s.set_timesteps(8)
        x = sample.clone()
        for k, t in enumerate(s.timesteps):
            x = s.step(model(x, t), t, x).prev_sample
            if k == 3:
                x = x * 0.9  # an edit between steps
        xs.append(x)
        if s is ours:
            last = s.last_sample
    torch.testing.assert_close(xs[0], xs[1], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(last, theirs.last_sample, rtol=1e-4, atol=1e-4)
    calls = []
    real = fast.ops.diffusion_step_
    monkeypatch.setattr(fast.ops, "diffusion_step_", lambda *a, **k: calls.append(1) or real(*a, **k))
    run_prev(fast.UniPCMultistepScheduler(solver_order=3), 9, sample, 0)
    assert len(calls) == 9
    with pytest.raises(ValueError, match="lower_order_final=True"):
        run_prev(fast.UniPCMultistepScheduler(lower_order_final=False, solver_type="bh1"), 6, sample, 0)


@pytest.mark.parametrize("config", [dict(), dict(clip_denoised=False, s_noise=0.9), dict(sigma_max=40.0, rho=5.0)])
@pytest.mark.parametrize("steps,timesteps", [(1, None), (2, None), (None, [30, 0]), (None, [39, 22, 0])])
def test_cm_stochastic_iterative(config, steps, timesteps):
    """Consistency models' multistep loops (one step, two, openai's custom timesteps) equal diffusers' on its
    generator draws."""
    sample = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    outs = []
    for s in (fast.CMStochasticIterativeScheduler(**config), diffusers.CMStochasticIterativeScheduler(**config)):
        s.set_timesteps(steps, timesteps=timesteps)
        g, x, out = torch.Generator().manual_seed(4), sample * s.init_noise_sigma, []
        for t in s.timesteps:
            x = s.step(model(s.scale_model_input(x, t), t), t, x, generator=g).prev_sample
            out.append((x, x))
        outs.append(out)
    assert_same(*outs)


def test_cm_add_noise_is_vectorized_and_names_an_off_schedule_timestep():
    """add_noise with a timestep per sample (repeated and distinct) equals diffusers'; one off the schedule is an
    IndexError naming it (diffusers: #6117's crash on nonzero().item())."""
    ours, theirs = fast.CMStochasticIterativeScheduler(), diffusers.CMStochasticIterativeScheduler()
    for s in (ours, theirs):
        s.set_timesteps(5)
    x, noise = torch.randn(4, 3, 5), torch.randn(4, 3, 5)
    t = theirs.timesteps[[0, 3, 3, 4]]
    torch.testing.assert_close(ours.add_noise(x, noise, t), theirs.add_noise(x, noise, t), rtol=0, atol=0)
    with pytest.raises(IndexError, match="12.5"):
        ours.add_noise(x, noise, torch.tensor([12.5]))


def test_flow_match_custom_sigmas_and_scale_noise():
    """Custom sigmas; scale_noise with a timestep per sample (repeated and distinct ones) equals diffusers' loop,
    and a host timestep off the schedule raises as diffusers' does."""
    sigmas = [1.0, 0.8, 0.5, 0.3, 0.1]
    sample = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    assert_same(run_flow(fast.FlowMatchEulerDiscreteScheduler(), None, sample, 4, sigmas=sigmas),
                run_flow(diffusers.FlowMatchEulerDiscreteScheduler(), None, sample, 4, sigmas=sigmas))
    ours, theirs = fast.FlowMatchEulerDiscreteScheduler(shift=3.0), diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    for s in (ours, theirs):
        s.set_timesteps(10)
    x, noise = torch.randn(4, 3, 5), torch.randn(4, 3, 5)
    t = theirs.timesteps[[0, 3, 3, 9]]
    torch.testing.assert_close(ours.scale_noise(x, t, noise), theirs.scale_noise(x, t, noise), rtol=0, atol=0)
    ours.set_begin_index(2)
    theirs.set_begin_index(2)
    torch.testing.assert_close(ours.scale_noise(x, t[:1], noise), theirs.scale_noise(x, t[:1], noise))
    ours = fast.FlowMatchEulerDiscreteScheduler()
    ours.set_timesteps(10)
    with pytest.raises(IndexError):
        ours.scale_noise(x, torch.tensor([12.5]), noise)


@pytest.mark.parametrize("cls", ["FlowMatchEulerDiscreteScheduler", "EulerDiscreteScheduler",
                                 "DPMSolverMultistepScheduler", "LCMScheduler", "TCDScheduler",
                                 "HeunDiscreteScheduler", "UniPCMultistepScheduler",
                                 "CMStochasticIterativeScheduler"])
def test_steps_read_no_tensor_value(cls, monkeypatch):
    """With the begin index set (as diffusers' pipelines do), step reads no tensor's value on the host (item,
    tolist, bool, int, float: each a device sync on a GPU): the fused op takes its row of a table built once per
    set_timesteps (from diffusers' host sigmas) by the step index. The noisy steps' seed is drawn from torch's CPU
    generator (resolve_seed, a host read that involves no device), counted apart."""
    seeds = []
    monkeypatch.setattr(fast, "resolve_seed", lambda: seeds.append(1) or len(seeds))
    s = getattr(fast, cls)()
    s.set_timesteps(6)
    s.set_begin_index(0)
    x = torch.randn(2, 4, 8, 8) * getattr(s, "init_noise_sigma", 1.0)
    s.step(model(x, s.timesteps[0]), s.timesteps[0], x)  # builds the table
    s.set_timesteps(6)
    s.set_begin_index(0)
    s.step(model(x, s.timesteps[0]), s.timesteps[0], x)
    reads, names = [], ("item", "tolist", "__bool__", "__int__", "__float__", "__index__")
    real = {name: getattr(torch.Tensor, name) for name in names}

    def spy(name):
        def read(self, *args):
            reads.append((name, tuple(self.shape)))
            return real[name](self, *args)
        return read

    try:
        for name in names:
            setattr(torch.Tensor, name, spy(name))
        for t in s.timesteps[1:]:  # (the stand-in model without its host read of t)
            net_in = s.scale_model_input(x, t) if cls != "FlowMatchEulerDiscreteScheduler" else x
            x = s.step(0.3 * net_in + 0.5 * torch.sin(2 * net_in + t / 100.0), t, x).prev_sample
    finally:
        for name in names:
            setattr(torch.Tensor, name, real[name])
    assert reads == [] and torch.isfinite(x).all()


def test_interface_and_fused_noise():
    s = fast.DDPMScheduler.from_config(diffusers.DDPMScheduler(num_train_timesteps=500).config)
    assert isinstance(s, diffusers.DDPMScheduler) and s.config.num_train_timesteps == 500
    s.set_timesteps(20)
    x = torch.randn(2, 3, 4, 4)
    t = s.timesteps[0]  # a tensor timestep: the row is read on the device
    a = s.step(model(x, t), t, x).prev_sample
    b = s.step(model(x, t), t, x).prev_sample  # fresh counters: different noise
    assert a.shape == x.shape and not torch.equal(a, b)
    noisy = s.add_noise(x, torch.randn_like(x), torch.tensor([10, 400]))
    assert noisy.shape == x.shape and s.order == 1


@pytest.mark.parametrize("cls", ["DDPMScheduler", "DDIMScheduler", "EulerAncestralDiscreteScheduler",
                                 "EulerDiscreteScheduler"])
def test_from_config_builds_what_the_config_says(cls):
    """A Stable-Diffusion-style config through from_config: the schedule is the config's, not the defaults."""
    theirs = getattr(diffusers, cls)(num_train_timesteps=500, beta_start=0.00085, beta_end=0.012,
                                     beta_schedule="scaled_linear")
    ours = getattr(fast, cls).from_config(theirs.config)
    assert type(ours) is getattr(fast, cls) and dict(ours.config) == dict(theirs.config)
    assert len(ours.alphas_cumprod) == 500 and torch.equal(ours.betas, theirs.betas)
    sample = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    assert_same(run(ours, 20, sample, 6), run(theirs, 20, sample, 6))


@pytest.mark.parametrize("cls", ["DDPMScheduler", "DDIMScheduler", "EulerAncestralDiscreteScheduler"])
def test_torch_manual_seed_reproduces_a_run_without_a_generator(cls):
    """As with diffusers: torch.manual_seed(s) before each run of one reused scheduler gives identical runs."""
    scheduler = getattr(fast, cls)()
    sample = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))

    def once(seed):
        torch.manual_seed(seed)
        scheduler.set_timesteps(10)
        x = sample * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            step = dict(eta=1.0) if cls == "DDIMScheduler" else {}
            x = scheduler.step(model(scheduler.scale_model_input(x, t), t), t, x, **step).prev_sample
        return x

    assert torch.equal(once(0), once(0)) and not torch.equal(once(0), once(1))


def tiny_unet():
    torch.manual_seed(0)
    return diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1,
                                 block_out_channels=(8, 16), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                 up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8).eval()


@pytest.mark.parametrize("pipeline, scheduler, call", [
    ("DDPMPipeline", "DDPMScheduler", dict(num_inference_steps=40)),
    ("DDIMPipeline", "DDIMScheduler", dict(num_inference_steps=25, eta=0.0)),
    ("DDIMPipeline", "DDIMScheduler", dict(num_inference_steps=25, eta=1.0)),
])
def test_diffusers_pipelines_give_the_same_images(pipeline, scheduler, call):
    """A real client: diffusers' own pipeline with a small random UNet2DModel, run with diffusers' scheduler and with
    fastgen's (swapped in with from_config, as the README says) on the same generator."""
    unet = tiny_unet()
    theirs = getattr(diffusers, pipeline)(unet=unet, scheduler=getattr(diffusers, scheduler)(num_train_timesteps=200))
    ours = getattr(diffusers, pipeline)(unet=unet, scheduler=getattr(fast, scheduler).from_config(
        theirs.scheduler.config))
    images = [p(batch_size=2, generator=torch.Generator().manual_seed(7), output_type="np", **call).images
              for p in (theirs, ours)]
    assert images[0].shape == (2, 8, 8, 3)
    np = pytest.importorskip("numpy")
    assert np.abs(images[0] - images[1]).max() < 1e-4


def tiny_dit():
    torch.manual_seed(0)
    transformer = diffusers.DiTTransformer2DModel(
        sample_size=8, num_layers=2, patch_size=2, attention_head_dim=8, num_attention_heads=2, in_channels=4,
        out_channels=8, num_embeds_ada_norm=1000, norm_type="ada_norm_zero", norm_elementwise_affine=False,
        activation_fn="gelu-approximate").eval()
    vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8,),
                                  norm_num_groups=8, sample_size=8).eval()
    return transformer, vae


@pytest.mark.parametrize("scheduler", ["DDIMScheduler", "DDPMScheduler", "EulerAncestralDiscreteScheduler",
                                       "EulerDiscreteScheduler", "DPMSolverMultistepScheduler", "LCMScheduler",
                                       "TCDScheduler", "HeunDiscreteScheduler", "UniPCMultistepScheduler"])
def test_diffusers_guided_dit_pipeline_runs_the_drop_ins_unchanged(scheduler):
    """diffusers' class-conditional DiTPipeline, classifier-free guidance included (it concatenates the batch, splits
    the output, combines and steps on the doubled latents), with a small random DiT and VAE and fastgen's scheduler
    swapped in with from_config. DDIM, Euler, Heun, DPM-Solver++ and UniPC (deterministic) give diffusers' images;
    DDPM, Euler ancestral, LCM and TCD, whose step the pipeline calls without a generator, draw fastgen's stream
    (module docstring of fastgen.diffusers), so their runs repeat under torch.manual_seed as diffusers' do.
    """
    transformer, vae = tiny_dit()
    theirs = diffusers.DiTPipeline(transformer=transformer, vae=vae, scheduler=getattr(diffusers, scheduler)())
    ours = diffusers.DiTPipeline(transformer=transformer, vae=vae,
                                 scheduler=getattr(fast, scheduler).from_config(theirs.scheduler.config))

    def run(pipe, seed=11):
        torch.manual_seed(seed)
        return pipe(class_labels=[1, 7, 3], guidance_scale=4.0, num_inference_steps=20,
                    generator=torch.Generator().manual_seed(3), output_type="np").images

    images = run(ours)
    assert images.shape == (3, 8, 8, 3) and (images >= 0).all() and (images <= 1).all()
    if scheduler in ("DDIMScheduler", "EulerDiscreteScheduler", "DPMSolverMultistepScheduler", "HeunDiscreteScheduler",
                     "UniPCMultistepScheduler"):
        assert abs(run(theirs) - images).max() < 1e-4
    else:
        assert (run(ours) == images).all() and (run(ours, seed=12) != images).any()


def _mixture_run(cls, steps, config, n=16000, module=fast, dtype=torch.float32):
    """The drop-in's loop (or diffusers' own, ``module=diffusers``) on the 8-Gaussian mixture with its exact model
    (Euler, DPM-Solver, UniPC: eps at the scaled input; FlowMatchEuler: the linear path's velocity), from seeded
    noise."""
    import fastgen

    gmm = fastgen.targets.eight_gaussians()
    s = getattr(module, cls)(**config)
    s.set_timesteps(steps)
    x = torch.randn(n, 2, generator=torch.Generator().manual_seed(0)).to(dtype) * getattr(s, "init_noise_sigma", 1.0)
    velocity = gmm.velocity(fastgen.flows.LinearPath())
    for i, t in enumerate(s.timesteps):
        sigma = float(s.sigmas[i])
        if cls in ("EulerDiscreteScheduler", "DPMSolverMultistepScheduler", "UniPCMultistepScheduler"):
            alpha = 1 / (sigma**2 + 1) ** 0.5
            out = gmm.posterior(s.scale_model_input(x, t), alpha, sigma * alpha)[1]
        else:
            out = velocity(x, torch.full((n,), sigma))
        x = s.step(out, t, x).prev_sample
    return gmm, x


@pytest.mark.parametrize("cls,steps,config,spread", [
    ("EulerDiscreteScheduler", 50, {}, None),
    ("EulerDiscreteScheduler", 30, dict(use_karras_sigmas=True), None),
    ("FlowMatchEulerDiscreteScheduler", 28, {}, 0.05),
    ("FlowMatchEulerDiscreteScheduler", 28, dict(shift=3.0), None),
])
def test_new_drop_ins_with_exact_models_reproduce_the_mixture_modes(cls, steps, config, spread):
    """16,000 draws at the schedulers' usual step counts: mode weights within 4 binomial SEs of 1/8. The within-mode
    spread is within 5% for FlowMatchEuler at 28 unshifted steps; Euler at 50 steps (0.935 of the true spread) and
    with Karras sigmas at 30 (1.12), and FlowMatchEuler with SD3's shift 3 (0.933), are first-order steps too coarse
    at low noise to keep narrow modes' width: the method's, not the fusion's (the same runs through diffusers' own
    classes agree to 1e-4, test_euler and test_flow_match_euler)."""
    from fastgen.metrics import mode_weights, within_mode_spread

    gmm, x = _mixture_run(cls, steps, config)
    n = x.shape[0]
    assert float((mode_weights(x, gmm)[:8] - 1 / 8).abs().max()) < 4 * (1 / 8 * 7 / 8 / n) ** 0.5
    if spread is not None:
        assert abs(float(within_mode_spread(x, gmm).mean()) - 1) < spread


@pytest.mark.parametrize("steps,config,tol", [
    (25, {}, 0.05),  # diffusers' defaults: DPM-Solver++ 2M, final step to sigma = 0
    (25, dict(solver_order=3), 0.05),
    (20, dict(use_karras_sigmas=True), 0.05),
    (25, dict(algorithm_type="sde-dpmsolver++", use_karras_sigmas=True), 0.10),
])
def test_dpm_solver_with_exact_model_reaches_its_law_on_the_mixture(steps, config, tol):
    """16,000 draws with the mixture's exact eps: mode weights within 4 binomial SEs of 1/8. With
    final_sigmas_type "zero" the last step returns the denoiser E[x0 | x] at the schedule's last sigma s_N, whose
    within-mode spread (components of std s) is s / sqrt(s^2 + s_N^2) of the data's: 0.72 at diffusers' default 25
    steps (s_N = 0.144), 0.998 with 20 Karras sigmas (s_N = 0.010). The ODE solvers land within 5% of that
    law (measured 0.716, 0.723, 1.022); the SDE solver's first-order noise adds a few percent (1.07 at 25 Karras
    steps, tested within 10%)."""
    from fastgen.metrics import mode_weights, within_mode_spread

    gmm, x = _mixture_run("DPMSolverMultistepScheduler", steps, config)
    n = x.shape[0]
    assert float((mode_weights(x, gmm)[:8] - 1 / 8).abs().max()) < 4 * (1 / 8 * 7 / 8 / n) ** 0.5
    s = fast.DPMSolverMultistepScheduler(**config)
    s.set_timesteps(steps)
    last, std = float(s.sigmas[-2]), float(gmm.stds[0, 0])
    assert abs(float(within_mode_spread(x, gmm).mean()) / (std / (std**2 + last**2) ** 0.5) - 1) < tol


@pytest.mark.parametrize("steps,config", [(20, dict(use_karras_sigmas=True)), (10, {}), (15, {}), (20, {}),
                                          (10, dict(use_karras_sigmas=True))])
def test_unipc_with_exact_model_keeps_its_own_law_on_the_mixture(steps, config):
    """16,000 draws with the mixture's exact eps: mode weights within 4 binomial SEs of 1/8, and the within-mode
    spread that of UniPC itself, diffusers' UniPC run in float64 on the same noise (within 1%). The method is too
    coarse at these step counts to keep narrow modes' width: 1.12, 0.78, 0.70 of the data's at 10, 15, 20 default
    steps (the exact denoiser at the last sigma would give 0.40, 0.54, 0.65), 1.61 at 10 Karras steps; at 20 Karras
    steps it is within 5% of the data's (1.036)."""
    from fastgen.metrics import mode_weights, within_mode_spread

    gmm, x = _mixture_run("UniPCMultistepScheduler", steps, config)
    n = x.shape[0]
    assert float((mode_weights(x, gmm)[:8] - 1 / 8).abs().max()) < 4 * (1 / 8 * 7 / 8 / n) ** 0.5
    spread = float(within_mode_spread(x, gmm).mean())
    _, ref = _mixture_run("UniPCMultistepScheduler", steps, config, module=diffusers, dtype=torch.float64)
    assert abs(spread / float(within_mode_spread(ref, gmm).mean()) - 1) < 0.01
    if config.get("use_karras_sigmas") and steps == 20:
        assert abs(spread - 1) < 0.05


ALL_DROP_INS = ["DDPMScheduler", "DDIMScheduler", "EulerAncestralDiscreteScheduler", "EulerDiscreteScheduler",
                "FlowMatchEulerDiscreteScheduler", "DPMSolverMultistepScheduler", "UniPCMultistepScheduler",
                "HeunDiscreteScheduler", "LCMScheduler", "TCDScheduler", "CMStochasticIterativeScheduler"]


@pytest.mark.parametrize("cls", ALL_DROP_INS)
@pytest.mark.parametrize("case", ["step before set_timesteps", "timestep off the schedule", "output of wrong shape"])
def test_bad_input_as_diffusers(cls, case):
    """Each drop-in answers bad input as diffusers' class does: the same exception type and message (DDPM and DDIM
    name an off-schedule timestep where diffusers raises an IndexError from its own indexing: same type, a clearer
    message), or, where diffusers accepts the call (a step before set_timesteps on the full training schedule, an
    off-schedule timestep read as the last step), the same result."""
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    out = torch.randn(2, 3 if case == "output of wrong shape" else 4, 8, 8, generator=torch.Generator().manual_seed(1))
    outcomes = []
    for module in (fast, diffusers):
        s = getattr(module, cls)()
        if case != "step before set_timesteps":
            s.set_timesteps(10)
        t = s.timesteps[0] if case != "timestep off the schedule" else torch.tensor(12345).to(s.timesteps.dtype)
        try:
            outcomes.append(("ok", s.step(out, t, x, generator=torch.Generator().manual_seed(2))
                             if "generator" in inspect.signature(s.step).parameters else s.step(out, t, x)))
        except Exception as err:  # noqa: BLE001 - the type is what is compared
            outcomes.append((type(err), str(err)))
    (ours, a), (theirs, b) = outcomes
    assert ours == theirs
    if ours == "ok":
        torch.testing.assert_close(a.prev_sample, b.prev_sample, rtol=1e-4, atol=1e-4)
    elif cls in ("DDPMScheduler", "DDIMScheduler") and case == "timestep off the schedule":
        assert "12345" in a
    else:
        assert a == b


@pytest.mark.parametrize("cls", ALL_DROP_INS)
def test_signatures_are_diffusers(cls):
    """Pipelines read set_timesteps' and step's parameters (custom timesteps or sigmas, eta, generator):
    each drop-in's names, kinds and defaults are its diffusers class's."""
    def params(fn):
        return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]

    for method in ("set_timesteps", "step"):
        assert params(getattr(getattr(fast, cls), method)) == params(getattr(getattr(diffusers, cls), method))


def tiny_flow_pipeline(kind: str, scheduler):
    """diffusers' StableDiffusion3Pipeline or FluxPipeline with tiny random transformer and VAE and no text
    encoders (the prompt embeddings are given)."""
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4,),
                                  layers_per_block=1, latent_channels=4 if kind == "sd3" else 1, norm_num_groups=1,
                                  use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609,
                                  scaling_factor=1.5035).eval()
    if kind == "sd3":
        transformer = diffusers.SD3Transformer2DModel(
            sample_size=8, patch_size=1, in_channels=4, num_layers=1, attention_head_dim=8, num_attention_heads=4,
            caption_projection_dim=32, joint_attention_dim=32, pooled_projection_dim=64, out_channels=4).eval()
        return diffusers.StableDiffusion3Pipeline(transformer=transformer, vae=vae, scheduler=scheduler,
                                                  text_encoder=None, tokenizer=None, text_encoder_2=None,
                                                  tokenizer_2=None, text_encoder_3=None, tokenizer_3=None)
    transformer = diffusers.FluxTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8]).eval()
    return diffusers.FluxPipeline(transformer=transformer, vae=vae, scheduler=scheduler, text_encoder=None,
                                  tokenizer=None, text_encoder_2=None, tokenizer_2=None)


@pytest.mark.parametrize("kind,config", [
    ("sd3", dict(shift=3.0)),
    ("flux", dict(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                  max_image_seq_len=4096, shift=3.0)),
])
def test_sd3_and_flux_pipelines_run_the_flow_match_drop_in(kind, config):
    """SD3 (classifier-free guidance, shift 3) and Flux (guidance embedding, dynamic shifting with the pipeline's mu,
    its custom sigmas) pipelines with tiny random components give diffusers' images with the FlowMatchEuler
    drop-in swapped in."""
    pytest.importorskip("transformers")
    g = torch.Generator().manual_seed(1)
    embeds, pooled = torch.randn(2, 7, 32, generator=g), torch.randn(2, 64 if kind == "sd3" else 32, generator=g)
    call = dict(prompt_embeds=embeds[:1], pooled_prompt_embeds=pooled[:1], num_inference_steps=8, height=16,
                width=16, output_type="np")
    if kind == "sd3":
        call.update(negative_prompt_embeds=embeds[1:], negative_pooled_prompt_embeds=pooled[1:], guidance_scale=5.0)
    else:
        call.update(guidance_scale=3.5)
    images = []
    for scheduler in (diffusers.FlowMatchEulerDiscreteScheduler(**config), fast.FlowMatchEulerDiscreteScheduler(
            **config)):
        pipe = tiny_flow_pipeline(kind, scheduler)
        pipe.set_progress_bar_config(disable=True)
        images.append(pipe(generator=torch.Generator().manual_seed(3), **call).images)
    assert images[0].shape == (1, 16, 16, 3)
    assert abs(images[0] - images[1]).max() < 1e-4
