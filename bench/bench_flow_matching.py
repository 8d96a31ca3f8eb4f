"""Flow matching: the training step's interpolation (noise drawn, x_t and the target velocity formed) fused
against eager PyTorch, torch.compile, torchcfm's ConditionalFlowMatcher and flow_matching's AffineProbPath (each
drawing its own noise and times) and the copy of the same bytes; the minibatch OT coupling (exact and entropic)
against POT on the same cost matrices, with the transport cost each reaches; and the sampling loop of a null
velocity model (Euler, 50 steps, fastgen.sample's fused step and sample_flow; dopri5) against flow_matching's
ODESolver and torchcfm's sampler (torchdyn's NeuralODE). Peers not installed are skipped and said so."""

from __future__ import annotations

import importlib.util

import torch

import fastgen
from fastgen.flows import LinearPath, assignment, sample_flow, sinkhorn

from .common import copy_fn, environment, markdown_table, ratio_rows, time_interleaved_us, write_report

SIZES = [(4096, 2), (1024, 3072), (256, 12288)]  # (batch, elements per sample)


def _have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def interpolation_rows(device: str, batch: int, dim: int) -> list[dict]:
    x1 = torch.randn(batch, dim, device=device)  # the data
    path = LinearPath()
    step = [0]

    def ours():  # times from the stream, the fused pass
        step[0] += 1
        t = fastgen.ops.uniform((batch,), step[0], 0, device=device)
        return fastgen.ops.cfm_interpolate(x1, path.coefficients(t), step[0], 4096)

    def eager(x=x1):
        t = torch.rand(batch, 1, device=device)
        eps = torch.randn_like(x)
        return (1 - t) * x + t * eps, eps - x

    cases = {"fastgen cfm_interpolate (fused)": ours, "eager PyTorch": eager,
             "torch.compile(eager)": torch.compile(eager),
             "copy of the same bytes": copy_fn(3 * x1.numel() * 4, device)}
    if _have("torchcfm"):
        from torchcfm.conditional_flow_matching import ConditionalFlowMatcher

        matcher = ConditionalFlowMatcher(sigma=0.0)
        cases["torchcfm ConditionalFlowMatcher"] = lambda: matcher.sample_location_and_conditional_flow(
            torch.randn_like(x1), x1)
    if _have("flow_matching"):
        from flow_matching.path import AffineProbPath
        from flow_matching.path.scheduler import CondOTScheduler

        prob_path = AffineProbPath(scheduler=CondOTScheduler())
        cases["flow_matching AffineProbPath.sample"] = lambda: prob_path.sample(
            x_0=torch.randn_like(x1), x_1=x1, t=torch.rand(batch, device=device))
    for fn in cases.values():
        fn()
    return ratio_rows(time_interleaved_us(cases, device), "fastgen cfm_interpolate (fused)", cases, device,
                      "interpolate", **{"size": f"{batch} x {dim}"})


def coupling_rows(device: str, n: int, dim: int) -> list[dict]:
    gen = torch.Generator().manual_seed(n + dim)
    a, b = torch.randn(n, dim, generator=gen).to(device), torch.randn(n, dim, generator=gen).to(device)
    cost = torch.cdist(a.double(), b.double()).square()
    reg = 0.05 * float(cost.mean())
    cases = {"fastgen assignment (exact)": lambda: assignment(cost),
             "fastgen sinkhorn (reg 0.05 mean cost)": lambda: sinkhorn(cost, reg, iterations=200, tol=None)}
    if n <= 256:
        cases["fastgen assignment, auction"] = lambda: assignment(cost, method="auction")
    if _have("ot"):
        import ot

        uniform = torch.full((n,), 1 / n, dtype=torch.float64)
        cases["POT emd (host copy included)"] = lambda: ot.emd(uniform.numpy(), uniform.numpy(), cost.cpu().numpy())
        cases["POT sinkhorn_log, 200 iterations"] = lambda: ot.sinkhorn(
            uniform.numpy(), uniform.numpy(), cost.cpu().numpy(), reg, method="sinkhorn_log", numItermax=200,
            stopThr=0.0)
    times = time_interleaved_us(cases, device, rounds=3)
    rows = ratio_rows(times, "fastgen assignment (exact)", cases, device, "coupling", **{"n x D": f"{n} x {dim}"})
    for row in rows:
        result = cases[row["candidate"]]()
        plan = torch.as_tensor(result, dtype=torch.float64).to(device)
        if plan.dim() == 1:  # a permutation: the plan of 1/n on (i, p_i)
            row["transport cost"] = f"{float(cost[torch.arange(n), plan.long()].mean()):.4f}"
        else:
            row["transport cost"] = f"{float((plan * cost).sum()):.4f}"
    return rows


def sampling_rows(device: str, batch: int = 1024, dim: int = 2) -> list[dict]:
    noise = torch.randn(batch, dim, device=device)

    def null(x, t):
        return torch.zeros_like(x)

    fused = fastgen.make_sampler(null, (batch, dim), sde=LinearPath(), sampler="ode_euler", steps=50, seed=0,
                                 device=device)
    cases = {"fastgen.sample ode_euler 50 (fused step)": fused.draw,
             "fastgen sample_flow euler 50": lambda: sample_flow(null, noise, steps=50),
             "fastgen sample_flow dopri5": lambda: sample_flow(null, noise, method="dopri5")}
    if _have("flow_matching") and _have("torchdiffeq"):
        from flow_matching.solver import ODESolver

        class Null(torch.nn.Module):
            def forward(self, x, t, **extras):
                return torch.zeros_like(x)

        solver = ODESolver(velocity_model=Null())
        grid = torch.tensor([1.0, 0.0], device=device)
        cases["flow_matching ODESolver euler 50"] = lambda: solver.sample(x_init=noise, step_size=1 / 50,
                                                                           method="euler", time_grid=grid)
        cases["flow_matching ODESolver dopri5"] = lambda: solver.sample(x_init=noise, step_size=None,
                                                                         method="dopri5", time_grid=grid)
    if _have("torchdyn"):  # torchcfm's sampler: torchdyn's NeuralODE over its torch_wrapper (data at t = 1)
        from torchdyn.core import NeuralODE

        class Wrapped(torch.nn.Module):
            def forward(self, t, x, *args, **kwargs):
                return torch.zeros_like(x)

        node, span = NeuralODE(Wrapped(), solver="euler"), torch.linspace(0, 1, 51, device=device)
        cases["torchcfm + torchdyn NeuralODE euler 50"] = lambda: node.trajectory(noise, t_span=span)
    for fn in cases.values():
        fn()
    return ratio_rows(time_interleaved_us(cases, device), "fastgen.sample ode_euler 50 (fused step)", cases, device,
                      "sampling", **{"B x D": f"{batch} x {dim}"})


def run(device: str, out: str, max_log2: int) -> str:
    interp = [row for batch, dim in SIZES if batch * dim <= 2**max_log2
              for row in interpolation_rows(device, batch, dim)]
    sizes = ((256, 2), (256, 3072)) + (((1024, 2),) if device == "cpu" else ())  # the GPU check's time is short
    coupling = [row for n, dim in sizes for row in coupling_rows(device, n, dim)]
    sampling = [row for dim in (2, 3072) for row in sampling_rows(device, 1024, dim)]
    missing = [name for name in ("torchcfm", "torchdyn", "flow_matching", "ot") if not _have(name)]
    columns = [("candidate", "candidate"), ("µs", "µs per call"), ("time / fastgen's", "time / fastgen's")]
    sections = {
        "The training step's interpolation (noise, x_t, target)":
            markdown_table(interp, [("size", "B x D")] + columns + [("ops", "ops per call")]),
        "Minibatch OT coupling (same cost matrices)":
            markdown_table(coupling, [("n x D", "n x D")] + columns + [("transport cost", "transport cost")]),
        "Sampling a null velocity model from t = 1 to 0":
            markdown_table(sampling, [("B x D", "B x D")] + columns + [("host_syncs", "host syncs per call")]),
    }
    if missing:
        sections["Not installed (skipped)"] = ", ".join(missing)
    return write_report(out, "flow_matching", environment(device), sections,
                        {"interpolation": interp, "coupling": coupling, "sampling": sampling})
