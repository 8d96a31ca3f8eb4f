"""Diffusion steps and loops: fastgen vs eager PyTorch, torch.compile, diffusers and torchsde
(where installed), with the copy-bandwidth limit measured in the same run.

    python -m bench diffusion [--device cpu|cuda] [--out DIR]
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

import fastgen
from fastgen.diffusion.processes import VPSDE, DDPMSchedule
from fastgen.ops import diffusion as D

from .common import copy_fn, count_per_call, environment, markdown_table, time_interleaved_us, time_us, write_report


def eager_ddpm_step(model_output, sample, abar_t: float, abar_prev: float, clip: float = 1.0):
    """diffusers' DDPM step (epsilon, fixed_small, clip_sample) written as plain PyTorch."""
    beta_t, beta_prev = 1 - abar_t, 1 - abar_prev
    alpha = abar_t / abar_prev
    x0 = ((sample - beta_t**0.5 * model_output) / abar_t**0.5).clamp(-clip, clip)
    mean = (abar_prev**0.5 * (1 - alpha)) / beta_t * x0 + alpha**0.5 * beta_prev / beta_t * sample
    std = ((beta_prev / beta_t) * (1 - alpha)) ** 0.5
    return mean + std * torch.randn_like(sample)


def scheduler_steps(out, x, device: str) -> dict:
    """diffusers' DDPMScheduler.step and fastgen's drop-in on the same inputs, when diffusers is installed."""
    try:
        import diffusers

        from fastgen.integrations.diffusers import DDPMScheduler as FusedDDPM
    except ImportError:
        return {}
    theirs, ours = diffusers.DDPMScheduler(), FusedDDPM()
    theirs.set_timesteps(50, device)
    ours.set_timesteps(50, device)
    t = theirs.timesteps[10]
    return {"diffusers": lambda: theirs.step(out, t, x), "fastgen drop-in": lambda: ours.step(out, t, x)}


def bench_ddpm_step(device: str, shapes) -> list[dict]:
    rows = []
    sched = DDPMSchedule()
    t, t_prev = 500, 480
    abar_t, abar_prev = float(sched.alphas_cumprod[t]), float(sched.alphas_cumprod[t_prev])
    coef = D.ddpm_coefficients(sched, t, t_prev).float().to(device)
    compiled = torch.compile(eager_ddpm_step, dynamic=False)
    for shape in shapes:
        x = torch.randn(shape, device=device)
        out = torch.randn(shape, device=device)
        row = {"shape": "x".join(map(str, shape))}
        fns = {"fused op": lambda: D.diffusion_step_(x, out, coef, clip=1.0, seed=0),
               "eager": lambda: eager_ddpm_step(out, x, abar_t, abar_prev)}
        try:
            compiled(out, x, abar_t, abar_prev)
            fns["compile"] = lambda: compiled(out, x, abar_t, abar_prev)
        except Exception as err:
            warnings.warn(f"torch.compile unavailable: {err}")
        fns.update(scheduler_steps(out, x, device))
        fns["copy"] = copy_fn(12 * x.numel(), device)  # read x and out, write x
        row.update(time_interleaved_us(fns, device))
        row["x eager"] = row["eager"] / row["fused op"]
        row["x diffusers"] = row["diffusers"] / row["fastgen drop-in"] if "diffusers" in row else None
        row["bw %"] = 100 * row["copy"] / row["fused op"]
        rows.append(row)
        print("  ddpm step", row, flush=True)
    return rows


class MLP(nn.Module):
    """bench/'s 3-layer MLP score model."""

    def __init__(self, dim: int = 2, hidden: int = 128):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim + 1, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, dim))

    def forward(self, x, t):
        return self.net(torch.cat([x, t[:, None].to(x.dtype)], dim=1))


def eager_em_loop(model, sde: VPSDE, x: torch.Tensor, steps: int) -> torch.Tensor:
    """The reverse-SDE Euler-Maruyama loop as usually written in PyTorch."""
    ts = torch.linspace(sde.T, sde.eps, steps + 1, device=x.device)
    for i in range(steps):
        t, dt = ts[i], ts[i] - ts[i + 1]
        beta = sde.beta_min + t * (sde.beta_max - sde.beta_min)
        score = model(x, t.expand(x.shape[0]))
        x = x + (0.5 * beta * x + beta * score) * dt + torch.sqrt(beta * dt) * torch.randn_like(x)
    return x


def null_model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A model that costs next to nothing: a loop timed with it is the loop's own cost."""
    return torch.zeros_like(x)


def torchsde_module(sde: VPSDE, model):
    """The reverse VP-SDE as a torchsde module, integrated forward in s = T - t."""
    class SDEModule(nn.Module):
        noise_type, sde_type = "diagonal", "ito"

        def f(self, s, y):
            tt = (sde.T - s).expand(y.shape[0]).to(y.dtype)
            beta = sde.beta_min + tt[:, None] * (sde.beta_max - sde.beta_min)
            return 0.5 * beta * y + beta * model(y, tt)

        def g(self, s, y):
            tt = (sde.T - s).expand(y.shape[0]).to(y.dtype)
            return torch.sqrt(sde.beta_min + tt[:, None] * (sde.beta_max - sde.beta_min)).expand_as(y)

    return SDEModule()


def bench_loops(device: str, batch: int = 1024, dim: int = 2, steps: int = 100) -> list[dict]:
    """µs per step of whole loops with the MLP, the MLP's own time subtracted (noisy: two timings' difference),
    and the same loop with a null model (its own cost, measured directly)."""
    torch.manual_seed(0)
    model = MLP(dim).to(device).eval()
    sde = VPSDE()
    x = torch.randn(batch, dim, device=device)
    t = torch.rand(batch, device=device)
    rows = []
    with torch.no_grad():
        model_us = time_us(lambda: model(x, t), device)
        # DDPM-schedule samplers feed integer timesteps, on which the model itself is slower (SiLU of
        # larger values): their "beyond the model" subtracts the model timed on such inputs.
        steps_t = (t * 999).round()
        model_timesteps_us = time_us(lambda: model(x, steps_t), device)

        def loops(net):
            cases = {
                "fastgen sample (euler_maruyama)": lambda: fastgen.sample(net, (batch, dim), sde=sde, steps=steps,
                                                                           seed=0, device=device),
                "fastgen sample (pc)": lambda: fastgen.sample(net, (batch, dim), sde=sde, sampler="pc", steps=steps,
                                                               seed=0, device=device),
                "fastgen sample (ddim)": lambda: fastgen.sample(net, (batch, dim), sampler="ddim", steps=steps,
                                                                 seed=0, prediction="eps", device=device),
                "eager loop": lambda: eager_em_loop(net, sde, x, steps),
            }
            if net is model:
                compiled_model = torch.compile(model)
                cases["eager loop, compiled model"] = lambda: eager_em_loop(compiled_model, sde, x, steps)
            try:
                import torchsde

                # The span in float64: with a float32 span (0.999 rounds to 0.99900001...) torchsde's
                # BrownianInterval splits its tree ~50,000 times on the first query, about 30 ms per step here.
                span = torch.tensor([0.0, sde.T - sde.eps], device=device, dtype=torch.float64)
                module = torchsde_module(sde, net)
                cases["torchsde sdeint (euler)"] = lambda: torchsde.sdeint(module, x, span, method="euler",
                                                                           dt=(sde.T - sde.eps) / steps)
            except ImportError:
                pass
            return cases

        with_model, with_null = loops(model), loops(null_model)
        rows.append({"loop": "model alone", "µs/step": model_us, "beyond model µs/step": None,
                     "null model µs/step": None})
        rows.append({"loop": "model alone (timesteps 0-999)", "µs/step": model_timesteps_us,
                     "beyond model µs/step": None, "null model µs/step": None})
        for name, fn in with_model.items():
            own = model_timesteps_us if "(ddim)" in name else model_us
            timed = time_interleaved_us({"model": fn, **({"null": with_null[name]} if name in with_null else {})},
                                        device, rounds=3, min_run_time=1.0)
            calls = 2 if "(pc)" in name else 1
            rows.append({"loop": name, "µs/step": timed["model"] / steps,
                         "beyond model µs/step": timed["model"] / steps - calls * own,
                         "null model µs/step": timed["null"] / steps if "null" in timed else None})
            print("  loop", rows[-1], flush=True)
    return rows


K_SAMPLERS = ("sample_euler", "sample_euler_ancestral", "sample_heun", "sample_dpm_2", "sample_dpm_2_ancestral",
              "sample_dpmpp_2s_ancestral", "sample_dpmpp_2m", "sample_dpmpp_2m_sde", "sample_dpmpp_sde",
              "sample_dpmpp_3m_sde", "sample_lms")


def k_diffusion_sampling():
    """k-diffusion's sampling.py as vendored for the tests (tests/peer/k_diffusion, commit 4601bf0)."""
    import importlib
    import pathlib
    import sys

    tests = str(pathlib.Path(__file__).resolve().parents[1] / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    return importlib.import_module("peer.k_diffusion.sampling")


def bench_k_sampling(device: str, shape=(16, 4, 64, 64), steps: int = 20) -> list[dict]:
    """Each sampler of fastgen.k_sampling against k-diffusion's own, both at their defaults (noise included:
    k-diffusion's dpmpp_2m_sde defaults to a torchsde Brownian tree), with a null denoiser: the loops' own cost."""
    from fastgen.integrations import k_diffusion as k_sampling

    K = k_diffusion_sampling()
    sigmas = K.get_sigmas_karras(steps, 0.03, 14.6, device=device)
    x = torch.randn(shape, device=device) * 14.6

    def denoiser(x, sigma):
        return torch.zeros_like(x)

    rows = []
    for name in K_SAMPLERS:
        fns = {"fastgen": lambda: getattr(k_sampling, name)(denoiser, x, sigmas, disable=True),
               "k-diffusion": lambda: getattr(K, name)(denoiser, x, sigmas, disable=True)}
        row = {"sampler": name}
        row.update({k: v / steps for k, v in time_interleaved_us(fns, device, rounds=5).items()})
        row["ratio"] = row["k-diffusion"] / row["fastgen"]
        count_key = "kernels" if device == "cuda" else "ops"
        row["fastgen_" + count_key] = count_per_call(fns["fastgen"], device, calls=1)[count_key] / steps
        row["k_" + count_key] = count_per_call(fns["k-diffusion"], device, calls=1)[count_key] / steps
        rows.append(row)
        print("  k_sampling", row, flush=True)
    return rows


def small_unet(device: str, size: int, **extra):
    """A small random diffusers UNet2DModel (3 channels, widths 32 and 64, one attention level), seeded."""
    import diffusers

    torch.manual_seed(0)
    return diffusers.UNet2DModel(sample_size=size, in_channels=3, out_channels=3, layers_per_block=1,
                                 block_out_channels=(32, 64), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                 up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8,
                                 **extra).to(device).eval()


def bench_pipelines(device: str, steps: int = 50, batch: int = 16, size: int = 32) -> list[dict]:
    """diffusers' own DDPMPipeline and DDIMPipeline with a small random UNet2DModel, run with diffusers' scheduler
    and with fastgen's drop-in (from_config), interleaved: µs per step, and the scheduler's share (the pipeline
    with a UNet that returns zeros)."""
    try:
        import diffusers
        import fastgen.diffusers as fast
    except ImportError:
        return []
    unet = small_unet(device, size)

    class ZeroUNet(nn.Module):  # the pipeline's own loop and the scheduler, without the network
        config, dtype, device = unet.config, unet.dtype, unet.device

        def forward(self, x, t):
            return diffusers.models.unets.unet_2d.UNet2DOutput(sample=torch.zeros_like(x))

    rows = []
    for pipeline, scheduler in (("DDPMPipeline", "DDPMScheduler"), ("DDIMPipeline", "DDIMScheduler")):
        for net_name, net in (("random UNet2DModel", unet), ("zero network", ZeroUNet())):
            pipes = {"diffusers": getattr(diffusers, pipeline)(unet=net, scheduler=getattr(diffusers, scheduler)())}
            pipes["fastgen drop-in"] = getattr(diffusers, pipeline)(
                unet=net, scheduler=getattr(fast, scheduler).from_config(pipes["diffusers"].scheduler.config))
            for p in pipes.values():
                p.set_progress_bar_config(disable=True)
            fns = {name: (lambda p=p: p(batch_size=batch, num_inference_steps=steps, output_type="np",
                                        generator=torch.Generator(device).manual_seed(0)))
                   for name, p in pipes.items()}
            timed = time_interleaved_us(fns, device, rounds=3, min_run_time=0.5)
            rows.append({"pipeline": f"{pipeline}, {net_name}", "diffusers": timed["diffusers"] / steps,
                         "fastgen": timed["fastgen drop-in"] / steps,
                         "ratio": timed["diffusers"] / timed["fastgen drop-in"]})
            print("  pipeline", rows[-1], flush=True)
    return rows


def bench_guided_step(device: str, shapes, scale: float = 7.5) -> list[dict]:
    """One classifier-free-guided DDIM step with the model replaced by a fixed (2B, ...) output: the step's own
    cost. diffusers' pipeline pattern (cat [x; x] for the model, chunk, u + w (c - u), scheduler.step) with
    diffusers' DDIMScheduler and with fastgen's drop-in, against fastgen's loop (cat, then one fused op that
    reads c and u and combines them)."""
    try:
        import diffusers

        from fastgen.integrations.diffusers import DDIMScheduler as FusedDDIM
    except ImportError:
        return []
    sched = DDPMSchedule()
    coef = D.ddim_coefficients(sched, 501, 481, 0.0).float().to(device)
    w = torch.full((1,), scale, device=device)
    rows = []
    for shape in shapes:
        x = torch.randn(shape, device=device)
        both = torch.randn((2 * shape[0],) + shape[1:], device=device)  # the model's output on [x; x]
        cases = {}
        for name, scheduler in (("diffusers pattern, diffusers DDIMScheduler", diffusers.DDIMScheduler()),
                                ("diffusers pattern, fastgen drop-in", FusedDDIM())):
            scheduler.set_timesteps(50, device)
            t = scheduler.timesteps[25]

            def pattern(scheduler=scheduler, t=t):
                torch.cat([x] * 2)  # the model's input
                uncond, cond = both.chunk(2)
                guided = uncond + scale * (cond - uncond)
                return scheduler.step(guided, t, x).prev_sample

            cases[name] = pattern

        def fused():
            torch.cat([x, x])
            cond, uncond = both[:shape[0]], both[shape[0]:]
            return D.diffusion_step_(x, cond, coef, uncond_out=uncond, guidance=w, seed=0)

        cases["fastgen (fused guided step)"] = fused
        rescale_pattern, fused_rescale = _rescaled(x, both, coef, w, scale, device)
        cases["diffusers pattern + rescale_noise_cfg 0.7, diffusers DDIMScheduler"] = rescale_pattern
        cases["fastgen, guidance_rescale 0.7 (fused)"] = fused_rescale
        inpaint_pattern, fused_stored, fused_stream = _inpainting(x, both, coef, w, scale, device)
        cases["diffusers pattern + inpainting replacement, diffusers DDIMScheduler"] = inpaint_pattern
        cases["fastgen, inpainting (fused, stored noise as diffusers)"] = fused_stored
        cases["fastgen, inpainting (fused, noise drawn from the stream)"] = fused_stream
        times = time_interleaved_us(cases, device)
        base = None
        for name, us in times.items():  # each variant against its own diffusers pattern (the row before it)
            base = us if name.startswith("diffusers pattern") and "drop-in" not in name else base
            rows.append({"shape": "x".join(map(str, shape)), "candidate": name, "µs": us,
                         "diffusers ÷ this": f"{base / us:.2f}", **count_per_call(cases[name], device)})
            print("  guided", rows[-1], flush=True)
    return rows


def _rescaled(x, both, coef, w, scale: float, device: str):
    """Guidance rescale (phi 0.7): diffusers' pattern (combine, rescale_noise_cfg, step) and the fused step."""
    import diffusers
    from diffusers.guiders.guider_utils import rescale_noise_cfg

    scheduler = diffusers.DDIMScheduler()
    scheduler.set_timesteps(50, device)
    t, batch = scheduler.timesteps[25], x.shape[0]

    def pattern():
        torch.cat([x] * 2)
        uncond, cond = both.chunk(2)
        guided = rescale_noise_cfg(uncond + scale * (cond - uncond), cond, guidance_rescale=0.7)
        return scheduler.step(guided, t, x).prev_sample

    def fused():
        torch.cat([x, x])
        return D.diffusion_step_(x, both[:batch], coef, uncond_out=both[batch:], guidance=w, guidance_rescale=0.7,
                                 seed=0)

    return pattern, fused


def _inpainting(x, both, coef, w, scale: float, device: str):
    """Inpainting by replacement after a guided step: diffusers' inpainting pipelines' pattern (step, add_noise of
    the known latents to the next timestep, blend with the mask) and the fused step with known / known_mask, reading
    the same stored noise or drawing it."""
    import diffusers

    scheduler = diffusers.DDIMScheduler()
    scheduler.set_timesteps(50, device)
    t, t_next, batch = scheduler.timesteps[25], scheduler.timesteps[26:27], x.shape[0]
    known = torch.randn_like(x)
    noise = torch.randn_like(x)
    mask = torch.rand(x.shape[1:], device=device) < 0.5
    unknown = (~mask).to(x.dtype)
    abar = float(scheduler.alphas_cumprod[int(t_next)])

    def pattern():
        torch.cat([x] * 2)
        uncond, cond = both.chunk(2)
        latents = scheduler.step(uncond + scale * (cond - uncond), t, x).prev_sample
        proper = scheduler.add_noise(known, noise, t_next)
        return (1 - unknown) * proper + unknown * latents

    def fused(stored: bool):
        torch.cat([x, x])
        noise_args = dict(noise=noise) if stored else dict(seed=0)
        return D.diffusion_step_(x, both[:batch], coef, uncond_out=both[batch:], guidance=w, known=known,
                                 known_mask=mask, known_keep=abar ** 0.5, known_std=(1 - abar) ** 0.5, **noise_args)

    return pattern, lambda: fused(True), lambda: fused(False)


def bench_guided_loop(device: str, steps: int = 20, batch: int = 16, size: int = 32, scale: float = 4.0
                      ) -> list[dict]:
    """A whole classifier-free-guided DDIM loop with a small class-conditional UNet2DModel (and with a network that
    returns zeros, to show the loop's own cost): diffusers' pipeline pattern with diffusers' scheduler and with the
    drop-in, against fastgen.sample (labels in model_kwargs, the guided combination in the fused step). µs and
    kernels (CUDA) or ops (CPU) per step."""
    try:
        import diffusers

        from fastgen.integrations.diffusers import DDIMScheduler as FusedDDIM
    except ImportError:
        return []
    unet = small_unet(device, size, num_class_embeds=11)
    shape = (batch, 3, size, size)
    labels = torch.arange(batch, device=device) % 10
    null = torch.full((batch,), 10, device=device)
    rows = []
    for net_name, net in (("class-conditional UNet2DModel", lambda x, t, y: unet(x, t, class_labels=y).sample),
                          ("zero network", lambda x, t, y: torch.zeros_like(x))):
        def pattern(scheduler, net=net):
            scheduler.set_timesteps(steps, device)
            x = torch.randn(shape, device=device, generator=torch.Generator(device).manual_seed(0))
            for t in scheduler.timesteps:
                out = net(torch.cat([x] * 2), t.expand(2 * batch), torch.cat([labels, null]))
                cond, uncond = out.chunk(2)
                x = scheduler.step(uncond + scale * (cond - uncond), t, x).prev_sample
            return x

        fns = {"diffusers pattern, diffusers DDIMScheduler": lambda: pattern(diffusers.DDIMScheduler()),
               "diffusers pattern, fastgen drop-in": lambda: pattern(FusedDDIM()),
               "fastgen.sample": lambda net=net: fastgen.sample(
                   net, shape, sampler="ddim", schedule=DDPMSchedule(), steps=steps, prediction="eps", seed=0,
                   device=device, model_kwargs={"y": labels}, uncond_kwargs={"y": null[:1]}, guidance_scale=scale)}
        with torch.no_grad():
            times = time_interleaved_us(fns, device, rounds=3, min_run_time=0.5)
            base = times["diffusers pattern, diffusers DDIMScheduler"]
            for name, fn in fns.items():
                counts = {k: v / steps for k, v in count_per_call(fn, device, calls=1).items()}
                rows.append({"network": net_name, "candidate": name, "µs/step": times[name] / steps,
                             "diffusers ÷ this": f"{base / times[name]:.2f}", **counts})
                print("  guided loop", rows[-1], flush=True)
    return rows


DROP_INS = ("EulerDiscreteScheduler", "FlowMatchEulerDiscreteScheduler", "DPMSolverMultistepScheduler",
            "UniPCMultistepScheduler", "HeunDiscreteScheduler", "LCMScheduler", "TCDScheduler")


def host_reads_per_step(scheduler, out, x0, steps: int) -> float:
    """Host reads of tensor values (item, tolist, bool, int, float, index) and linear solves per scheduler call
    after a run's first step (set_timesteps and the first step build the drop-ins' tables from diffusers' host
    arrays): on a GPU each such read of device data is a sync, so counting them on the CPU shows what a GPU run
    would wait for."""
    names = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__")
    real = {name: getattr(torch.Tensor, name) for name in names}
    solve, count = torch.linalg.solve, [0]

    def spy(name):
        def read(self, *args):
            count[0] += 1
            return real[name](self, *args)
        return read

    scheduler.set_timesteps(steps, device=x0.device)
    scheduler.set_begin_index(0)
    timesteps = list(scheduler.timesteps.unbind())
    x = scheduler.step(out, timesteps[0], x0).prev_sample
    try:
        for name in names:
            setattr(torch.Tensor, name, spy(name))
        torch.linalg.solve = lambda *a, **k: count.__setitem__(0, count[0] + 1) or solve(*a, **k)
        for t in timesteps[1:]:
            if hasattr(scheduler, "scale_model_input"):
                scheduler.scale_model_input(x, t)
            x = scheduler.step(out, t, x).prev_sample
    finally:
        for name in names:
            setattr(torch.Tensor, name, real[name])
        torch.linalg.solve = solve
    return count[0] / (len(timesteps) - 1)


def bench_dropin_loops(device: str, shapes, steps: int = 30) -> list[dict]:
    """A whole loop of each drop-in and of diffusers' own class, the model's output a fixed tensor (µs per step,
    candidates interleaved; ops or kernels and host reads per scheduler call, the begin index set as pipelines
    do): the schedulers' own cost."""
    try:
        import diffusers

        from fastgen.integrations import diffusers as fast
    except ImportError:
        return []
    rows = []
    for name in DROP_INS:
        for shape in shapes:
            x0, out = torch.randn(shape, device=device), torch.randn(shape, device=device) * 0.1
            cases = {}
            for who, cls in (("diffusers", getattr(diffusers, name)), ("compiled", getattr(diffusers, name)),
                             ("fastgen", getattr(fast, name))):
                scheduler = cls()
                if who == "compiled":  # torch.compile of diffusers' step (dynamic: one graph for every step)
                    scheduler.step = torch.compile(scheduler.step, dynamic=True)

                def loop(scheduler=scheduler):
                    scheduler.set_timesteps(steps, device=device)
                    scheduler.set_begin_index(0)
                    x = x0
                    for t in scheduler.timesteps:
                        if hasattr(scheduler, "scale_model_input"):
                            scheduler.scale_model_input(x, t)
                        x = scheduler.step(out, t, x).prev_sample
                    return x

                cases[who] = loop
            try:  # torch.compile of some steps fails (LCM's and TCD's randn under dynamic shapes)
                cases["compiled"]()
            except Exception as err:  # noqa: BLE001 - reported in the row
                del cases["compiled"]
                print(f"  {name}: torch.compile of diffusers' step fails: {type(err).__name__}", flush=True)
            times = time_interleaved_us(cases, device)
            probe = getattr(fast, name)()
            probe.set_timesteps(steps)
            calls = len(probe.timesteps)  # scheduler calls per loop (Heun: two per step but the last)
            row = {"scheduler": name.replace("Scheduler", ""), "shape": "x".join(map(str, shape)),
                   "diffusers": times["diffusers"] / steps, "fastgen": times["fastgen"] / steps,
                   "ratio": f"{times['diffusers'] / times['fastgen']:.2f}",
                   "compiled": times["compiled"] / steps if "compiled" in times else "fails",
                   "compiled_ratio": f"{times['compiled'] / times['fastgen']:.2f}" if "compiled" in times else ""}
            if shape == shapes[1]:
                count_key = "kernels" if device == "cuda" else "ops"
                for who, fn in ((who, fn) for who, fn in cases.items() if who != "compiled"):
                    counted = count_per_call(fn, device, calls=1)
                    row[f"{who}_{count_key}"] = f"{counted[count_key] / calls:.1f}"
                    row[f"{who}_syncs"] = f"{counted['host_syncs'] / calls:.2f}"
                    cls = getattr(diffusers if who == "diffusers" else fast, name)
                    row[f"{who}_reads"] = f"{host_reads_per_step(cls(), out, x0, steps):.2f}"
            rows.append(row)
            print("  drop-in loop", rows[-1], flush=True)
    return rows


def bench_counts(device: str) -> list[dict]:
    x = torch.randn(16, 4, 64, 64, device=device)
    out = torch.randn_like(x)
    sched = DDPMSchedule()
    coef = D.ddpm_coefficients(sched, 500, 480).float().to(device)
    abar_t, abar_prev = float(sched.alphas_cumprod[500]), float(sched.alphas_cumprod[480])
    cases = {"fastgen fused DDPM op": lambda: D.diffusion_step_(x, out, coef, clip=1.0, seed=0),
             "eager DDPM step": lambda: eager_ddpm_step(out, x, abar_t, abar_prev)}
    steps = scheduler_steps(out, x, device)
    if steps:
        cases["diffusers DDPMScheduler.step"] = steps["diffusers"]
        cases["fastgen.diffusers DDPMScheduler.step"] = steps["fastgen drop-in"]
    return [{"case": name, **count_per_call(fn, device)} for name, fn in cases.items()]


def run(device: str, out: str, max_log2: int) -> str:
    env = environment(device)
    print(f"diffusion benchmark on {env['device']} (torch {env['torch']})", flush=True)
    shapes = [(16, 4, 64, 64), (256, 4, 64, 64)] if device == "cuda" else [(16, 4, 64, 64), (64, 4, 64, 64)]
    step = bench_ddpm_step(device, shapes)
    loops = bench_loops(device)
    pipelines = bench_pipelines(device)
    k_rows = bench_k_sampling(device)
    guided = bench_guided_step(device, [(16, 4, 64, 64), (256, 4, 64, 64)])
    guided_loop = bench_guided_loop(device)
    dropins = bench_dropin_loops(device, [(1, 4, 64, 64), (16, 4, 64, 64), (16, 4, 128, 128)])
    counts = bench_counts(device)
    count_key = "kernels" if device == "cuda" else "ops"
    sections = {
        "DDPM step (epsilon, fixed_small, clip_sample), float32": markdown_table(step, [
            ("shape", "shape"), ("fused op", "fastgen op µs"), ("fastgen drop-in", "fastgen drop-in µs"),
            ("diffusers", "diffusers µs"), ("eager", "eager µs"), ("compile", "torch.compile µs"), ("copy", "copy µs"),
            ("x eager", "op × eager"), ("x diffusers", "drop-in × diffusers"), ("bw %", "op % of copy BW")]),
        "Whole loops, batch 1024, 2-D, 3-layer MLP (128 wide), 100 steps": markdown_table(loops, [
            ("loop", "loop"), ("µs/step", "µs per step"), ("beyond model µs/step", "beyond the model µs/step"),
            ("null model µs/step", "with a null model µs/step")]),
        "diffusers pipelines, batch 16, 3x32x32, 50 steps (µs per step)": markdown_table(pipelines, [
            ("pipeline", "pipeline"), ("diffusers", "diffusers scheduler"), ("fastgen", "fastgen drop-in"),
            ("ratio", "diffusers ÷ fastgen")]),
        "k-diffusion's samplers, batch 16x4x64x64, 20 Karras steps, null denoiser (µs per step, both at their "
        "defaults)": markdown_table(k_rows, [
            ("sampler", "sampler"), ("fastgen", "fastgen.k_sampling"), ("k-diffusion", "k-diffusion"),
            ("ratio", "k-diffusion ÷ fastgen"), (f"fastgen_{count_key}", f"fastgen {count_key}/step"),
            (f"k_{count_key}", f"k-diffusion {count_key}/step")]),
        "Classifier-free-guided DDIM step, w = 7.5, the model replaced by a fixed output (µs)": markdown_table(
            guided, [("shape", "shape"), ("candidate", "candidate"), ("µs", "µs"),
                     ("diffusers ÷ this", "diffusers ÷ this"), (count_key, "kernels" if device == "cuda" else "ops"),
                     ("host_syncs", "host syncs")]),
        "Classifier-free-guided DDIM loop, w = 4, batch 16, 3x32x32, 20 steps (per step)": markdown_table(
            guided_loop, [("network", "network"), ("candidate", "candidate"), ("µs/step", "µs per step"),
                          ("diffusers ÷ this", "diffusers ÷ this"),
                          (count_key, "kernels per step" if device == "cuda" else "ops per step"),
                          ("host_syncs", "host syncs per step")]),
        "diffusers' schedulers against the drop-ins, 30-step loop (Heun: 59 stage calls), fixed model output (µs "
        "per step; ops or kernels and host reads per scheduler call, at 16x4x64x64)":
            markdown_table(dropins, [
                ("scheduler", "scheduler"), ("shape", "shape"), ("diffusers", "diffusers µs"),
                ("compiled", "diffusers, step compiled µs"), ("fastgen", "drop-in µs"),
                ("ratio", "diffusers ÷ drop-in"), ("compiled_ratio", "compiled ÷ drop-in"),
                (f"diffusers_{count_key}", f"diffusers {count_key}"), (f"fastgen_{count_key}", f"drop-in {count_key}"),
                ("diffusers_syncs", "diffusers syncs"), ("fastgen_syncs", "drop-in syncs"),
                ("diffusers_reads", "diffusers host reads"), ("fastgen_reads", "drop-in host reads")]),
        "Launches and host syncs per step": markdown_table(counts, [
            ("case", "per step"), (count_key, "kernels launched" if device == "cuda" else "ops dispatched"),
            ("host_syncs", "host syncs")]),
    }
    return write_report(out, f"diffusion-{device}", env, sections, {"ddpm_step": step, "loops": loops,
                                                                      "pipelines": pipelines, "k_sampling": k_rows,
                                                                      "guided": guided,
                                                                      "guided_loop": guided_loop, "counts": counts,
                                                                      "dropins": dropins})
