"""ULA step and fused mixture Langevin: fastgen backends vs eager PyTorch vs
torch.compile vs the copy-bandwidth limit, all measured in one run.

    python -m bench langevin [--device cpu|cuda] [--out DIR] [--max-log2 24]
"""

from __future__ import annotations

import math
import warnings

import torch

import fastgen
from fastgen.core import backend as _backend

from .common import copy_fn, count_per_call, environment, markdown_table, time_interleaved_us, write_report

STEP = 1e-2


def eager_ula(x, score, h: float):
    """The eager PyTorch step as usually written: x + h s + sqrt(2h) xi."""
    return x + h * score + math.sqrt(2 * h) * torch.randn_like(x)


def eager_ula_(x, score, h: float):
    """The cheapest eager form: the same step in place."""
    return x.add_(score, alpha=h).add_(torch.randn_like(x), alpha=math.sqrt(2 * h))


def eager_gmm_step_(x, means, inv_vars, log_coef, h: float):
    """Eager ULA step with the mixture's analytic score, all in PyTorch ops."""
    diff = means[None] - x[:, None, :]
    logits = log_coef - 0.5 * (diff.square() * inv_vars).sum(-1)
    score = (torch.softmax(logits, -1)[..., None] * diff * inv_vars).sum(1)
    return eager_ula_(x, score, h)


def _on_backend(backend: str, fn):
    def run():
        with fastgen.use_backend(backend):
            return fn()

    return run


def fastgen_backends(device: str) -> list[str]:
    order = ("cuda", "triton") if device == "cuda" else ("cpu",)
    return [b for b in order if _backend._usable(b, torch.device(device)) is None]


def bench_ula(device: str, sizes: list[int]) -> list[dict]:
    compiled = torch.compile(eager_ula, dynamic=False)
    rows = []
    for n in sizes:
        x = torch.randn(n, device=device)
        score = torch.randn(n, device=device)
        row = {"elements": f"2^{int(math.log2(n))}"}
        fns = {}
        for backend in fastgen_backends(device):
            fns[backend] = _on_backend(backend, lambda: fastgen.ops.ula_step_(x, score, STEP, 0, 0))
        fns["eager"] = lambda: eager_ula(x, score, STEP)
        fns["eager_"] = lambda: eager_ula_(x, score, STEP)
        try:
            compiled(x, score, STEP)
            fns["compile"] = lambda: compiled(x, score, STEP)
        except Exception as err:  # no compiler toolchain: report, do not fail the run
            warnings.warn(f"torch.compile unavailable: {err}")
        fns["copy"] = copy_fn(12 * n, device)  # read x, read s, write x: 12 bytes per element
        row.update(time_interleaved_us(fns, device))
        best = min(row[b] for b in fastgen_backends(device))
        row["vs_eager"] = row["eager"] / best
        row["vs_eager_"] = row["eager_"] / best
        row["vs_compile"] = row["compile"] / best if "compile" in row else None
        row["bw_pct"] = 100.0 * row["copy"] / best
        rows.append(row)
        print(f"  ula {row['elements']}: " + ", ".join(f"{k} {v:.1f}" for k, v in row.items()
                                                        if isinstance(v, float)), flush=True)
    return rows


def bench_gmm(device: str, chains_list: list[int], steps: int = 10) -> list[dict]:
    gmm = fastgen.targets.eight_gaussians()
    params = gmm.kernel_params(device)
    compiled = torch.compile(eager_gmm_step_, dynamic=False)
    rows = []
    for chains in chains_list:
        x = torch.randn(chains, 2, device=device)
        row = {"chains": f"2^{int(math.log2(chains))}"}
        fns = {b: _on_backend(b, lambda: fastgen.ops.gmm_langevin_(x, gmm, steps, 1e-3, 0, 0)) for b in
               fastgen_backends(device)}
        fns["eager"] = lambda: [eager_gmm_step_(x, *params, 1e-3) for _ in range(steps)]
        try:
            compiled(x, *params, 1e-3)
            fns["compile"] = lambda: [compiled(x, *params, 1e-3) for _ in range(steps)]
        except Exception as err:
            warnings.warn(f"torch.compile unavailable: {err}")
        row.update({k: v / steps for k, v in time_interleaved_us(fns, device, rounds=5).items()})
        best = min(row[b] for b in fastgen_backends(device))
        row["vs_eager"] = row["eager"] / best
        row["vs_compile"] = row["compile"] / best if "compile" in row else None
        rows.append(row)
        print(f"  gmm {row['chains']}: " + ", ".join(f"{k} {v:.1f}" for k, v in row.items()
                                                      if isinstance(v, float)), flush=True)
    return rows


def bench_gmm_sizes(device: str, chains: int = 4096, steps: int = 20) -> list[dict]:
    """fastgen.langevin on a mixture both ways a user can call it: energy= (the fused kernel) and score= (one
    ula_step_ per step after the mixture's score in PyTorch ops), at growing components x dimension."""
    rows = []
    for components, dim in ((8, 2), (16, 16), (4, 64), (16, 64)):
        gen = torch.Generator().manual_seed(components * 100 + dim)
        gmm = fastgen.targets.GaussianMixture(torch.randn(components, dim, generator=gen) * 2,
                                              torch.rand(components, dim, generator=gen) + 0.5,
                                              torch.rand(components, generator=gen) + 0.1)
        x0 = torch.randn(chains, dim, generator=gen).to(device)
        fns = {"fused": lambda: fastgen.langevin(x0, energy=gmm, n_steps=steps, step_size=1e-3, seed=0),
               "score": lambda: fastgen.langevin(x0, score=gmm.score, n_steps=steps, step_size=1e-3, seed=0)}
        row = {"mixture": f"{components} in {dim}-D"}
        row.update({k: v / steps for k, v in time_interleaved_us(fns, device, rounds=5).items()})
        row["ratio"] = row["score"] / row["fused"]
        rows.append(row)
        print(f"  gmm sizes {row['mixture']}: fused {row['fused']:.1f}, score {row['score']:.1f} µs/step", flush=True)
    return rows


def bench_counts(device: str) -> list[dict]:
    """Launches (or ops) and host syncs per sampler step, model call excluded."""
    x = torch.randn(4096, 64, device=device)
    score = torch.randn_like(x)
    gmm = fastgen.targets.eight_gaussians()
    xg = torch.randn(4096, 2, device=device)
    cases = {
        "fastgen ula_step_": lambda: fastgen.ops.ula_step_(x, score, STEP, 0, 0),
        "eager ULA step": lambda: eager_ula(x, score, STEP),
        "eager ULA step, in place": lambda: eager_ula_(x, score, STEP),
        "fastgen gmm_langevin_ (1 step)": lambda: fastgen.ops.gmm_langevin_(xg, gmm, 1, 1e-3, 0, 0),
        "eager ULA + analytic GMM score": lambda: eager_gmm_step_(xg, *gmm.kernel_params(device), 1e-3),
    }
    return [{"case": name, **count_per_call(fn, device)} for name, fn in cases.items()]


def run(device: str, out: str, max_log2: int) -> str:
    env = environment(device)
    print(f"langevin benchmark on {env['device']} (torch {env['torch']}, triton {env['triton']})", flush=True)
    sizes = [2**k for k in range(16, max_log2 + 1, 2)]
    if max_log2 % 2:
        sizes.append(2**max_log2)
    ula = bench_ula(device, sizes)
    gmm = bench_gmm(device, [2**k for k in (16, 18, 20)])
    sizes_rows = bench_gmm_sizes(device)
    counts = bench_counts(device)
    backends = fastgen_backends(device)
    ula_cols = [("elements", "elements")] + [(b, f"fastgen {b} µs") for b in backends] + [
        ("eager", "eager µs"), ("eager_", "eager in place µs"), ("compile", "torch.compile µs"),
        ("copy", "copy limit µs"), ("vs_eager", "× eager"), ("vs_eager_", "× in place"), ("vs_compile", "× compile"),
        ("bw_pct", "% of copy BW")]
    gmm_cols = [("chains", "chains")] + [(b, f"fastgen {b} µs/step") for b in backends] + [
        ("eager", "eager µs/step"), ("compile", "torch.compile µs/step"), ("vs_eager", "× eager"),
        ("vs_compile", "× compile")]
    count_key = "kernels" if device == "cuda" else "ops"
    count_cols = [("case", "per step"), (count_key, "kernels launched" if device == "cuda" else "ops dispatched"),
                  ("host_syncs", "host syncs")]
    sections = {
        "ULA step x + h s + sqrt(2h) xi (float32; eager as usually written, and in place; "
        "torch.compile of the former; copy limit = 12 bytes per element)": markdown_table(ula, ula_cols),
        "Fused mixture Langevin (8 Gaussians, 10 steps per launch) vs eager ULA with the analytic score":
            markdown_table(gmm, gmm_cols),
        "fastgen.langevin on a mixture, energy= (fused kernel) vs score= (mixture score in PyTorch + ula_step_), "
        "4,096 chains, 20 steps": markdown_table(sizes_rows, [
            ("mixture", "components in dimension"), ("fused", "energy= µs/step"), ("score", "score= µs/step"),
            ("ratio", "× (score= / energy=)")]),
        "Launches and host syncs per step": markdown_table(counts, count_cols),
    }
    return write_report(out, f"langevin-{device}", env, sections,
                        {"ula": ula, "gmm": gmm, "gmm_sizes": sizes_rows, "counts": counts})
