"""Consistency models: the multistep sampling loop's own cost (a null network, so the loop is all that is timed)
against diffusers' CMStochasticIterativeScheduler and LCMScheduler loops and openai/consistency_models'
stochastic_iterative_sampler (from a source tree, tests/peer/consistency_models); and a consistency-distillation
step's cost beyond its network evaluations.

    python -m bench consistency [--device cpu|cuda]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from fastgen.diffusion import ConsistencyFunction, EDMConsistency, consistency_distillation_loss, make_sampler

from .common import count_per_call, environment, markdown_table, time_interleaved_us, write_report


def _openai_sampler():
    """openai's stochastic_iterative_sampler, vendored for the tests (a source tree only), or None."""
    root = Path(__file__).resolve().parents[1] / "tests"
    if not (root / "peer" / "consistency_models" / "karras_diffusion.py").exists():
        return None
    sys.path.insert(0, str(root))
    try:
        from peer.consistency_models.karras_diffusion import stochastic_iterative_sampler
    finally:
        sys.path.remove(str(root))
    return stochastic_iterative_sampler


def sampling_rows(device: str, batch: int, dim: int) -> list[dict]:
    """µs per step of each loop at 1, 2 and 4 steps, the network returning zeros."""
    import diffusers

    from fastgen.integrations import diffusers as fast

    process = EDMConsistency()
    x_t = torch.randn(batch, dim, device=device) * process.t_max
    zeros = torch.zeros(batch, dim, device=device)

    def null(x, t, **kwargs):
        return zeros

    openai = _openai_sampler()
    rows = []
    for steps in (1, 2, 4):
        runner = make_sampler(null, (batch, dim), sde=process, sampler="consistency", steps=steps, device=device,
                              seed=0)
        levels = torch.linspace(0, 39, steps + 1).round().long().tolist()
        cases = {"fastgen.sample (planned once)": runner.draw}

        def scheduler_loop(scheduler, timesteps=None):
            def loop():
                scheduler.set_timesteps(None if timesteps else steps, device=device, timesteps=timesteps)
                x = x_t
                for t in scheduler.timesteps:
                    x = scheduler.step(null(scheduler.scale_model_input(x, t), t), t, x).prev_sample
                return x
            return loop

        train = 40  # openai's ImageNet-64 grid (the schedulers' num_train_timesteps)
        cm_steps = [train - 1 - i for i in levels[:-1]] if steps > 1 else None
        cases["fastgen CMStochasticIterative drop-in"] = scheduler_loop(
            fast.CMStochasticIterativeScheduler(num_train_timesteps=train), cm_steps)
        cases["diffusers CMStochasticIterativeScheduler"] = scheduler_loop(
            diffusers.CMStochasticIterativeScheduler(num_train_timesteps=train), cm_steps)
        cases["diffusers LCMScheduler"] = scheduler_loop(diffusers.LCMScheduler())
        if openai is not None:
            class Generator:
                def randn_like(self, x):
                    return torch.randn_like(x)

            def openai_loop():
                return openai(null, x_t, None, Generator(), levels)
            cases["openai stochastic_iterative_sampler"] = openai_loop
        times = time_interleaved_us(cases, device)
        count_key = "kernels" if device == "cuda" else "ops"
        for name, us in times.items():
            counts = count_per_call(cases[name], device, calls=2)
            rows.append({"B x D": f"{batch} x {dim}", "steps": steps, "candidate": name, "µs/step": us / steps,
                         "÷ fastgen": f"{us / times['fastgen.sample (planned once)']:.2f}",
                         count_key: f"{counts[count_key] / steps:.1f}", "host_syncs": counts["host_syncs"] / steps})
            print("  sampling", rows[-1], flush=True)
    return rows


class Network(torch.nn.Module):
    """F(x_in, c_noise): a 3-layer MLP on the input and c_noise (the 2-D example's size)."""

    def __init__(self, dim: int, hidden: int = 256):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(dim + 1, hidden), torch.nn.SiLU(),
                                       torch.nn.Linear(hidden, hidden), torch.nn.SiLU(), torch.nn.Linear(hidden, dim))

    def forward(self, x, c_noise):
        return self.net(torch.cat([x, c_noise.to(x.dtype)[:, None]], 1))


def distillation_rows(device: str, batch: int, dim: int) -> list[dict]:
    """One consistency-distillation step (loss, backward) with a null teacher, against the same network calls alone
    (student forward and backward, target forward) and an eager implementation of the step."""
    torch.manual_seed(0)
    process = EDMConsistency()
    student = ConsistencyFunction(Network(dim).to(device), process)
    target = ConsistencyFunction(Network(dim).to(device), process)
    x0 = torch.randn(batch, dim, device=device)

    def teacher(x, sigma):
        return x * 0.5

    def fused():
        consistency_distillation_loss(student, x0, process, teacher, steps=18, solver="euler",
                                      target=target).backward()

    sigmas = process.karras(18).flip(0).to(device)
    n = torch.randint(0, 17, (batch,), device=device)
    t_hi, t_lo = sigmas[n + 1].float(), sigmas[n].float()

    def network_only():
        with torch.no_grad():
            ref = target(x0, t_lo)
        ((student(x0, t_hi) - ref).square().sum(1)).mean().backward()

    def eager():
        index = torch.randint(0, 17, (batch,), device=device)
        hi, lo = sigmas[index + 1].float()[:, None], sigmas[index].float()[:, None]
        x = x0 + hi * torch.randn_like(x0)
        with torch.no_grad():
            d = (x - teacher(x, hi[:, 0])) / hi  # Euler on dx/dsigma = (x - D) / sigma
            ref = target(x + (lo - hi) * d, lo[:, 0])
        ((student(x, hi[:, 0]) - ref).square().sum(1)).mean().backward()

    cases = {"network calls alone": network_only, "fastgen consistency_distillation_loss": fused,
             "eager step": eager}
    times = time_interleaved_us(cases, device)
    return [{"B x D": f"{batch} x {dim}", "candidate": name, "µs": us,
             "÷ network alone": f"{us / times['network calls alone']:.2f}"} for name, us in times.items()]


def run(device: str, out: str, max_log2: int) -> str:
    env = environment(device)
    print(f"consistency benchmark on {env['device']} (torch {env['torch']})", flush=True)
    sampling = [row for dim in (2, 3072) for row in sampling_rows(device, 1024, dim)]
    distill = [row for dim in (2, 64) for row in distillation_rows(device, 1024, dim)]
    count_key = "kernels" if device == "cuda" else "ops"
    sections = {
        "Multistep consistency sampling, null network (µs per step)": markdown_table(sampling, [
            ("B x D", "B x D"), ("steps", "steps"), ("candidate", "candidate"), ("µs/step", "µs per step"),
            ("÷ fastgen", "time ÷ fastgen's"), (count_key, f"{count_key} per step"),
            ("host_syncs", "host syncs per step")]),
        "A consistency-distillation step (loss and backward, null teacher)": markdown_table(distill, [
            ("B x D", "B x D"), ("candidate", "candidate"), ("µs", "µs"), ("÷ network alone", "÷ network alone")]),
    }
    if _openai_sampler() is None:
        sections["Not available"] = "openai's sampler (tests/peer/consistency_models: a source tree only)"
    return write_report(out, f"consistency-{device}", env, sections, {"sampling": sampling, "distill": distill})
