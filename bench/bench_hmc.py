"""Hamiltonian Monte Carlo: the fused leapfrog pass against the same update in eager PyTorch and under
torch.compile, and the copy of the same bytes (the bandwidth limit); and HMC on a 100-D correlated Gaussian with
1,024 chains: ESS per second and per gradient evaluation (no peer's HMC or NUTS is installed here).

    python -m bench hmc [--device cpu|cuda]
"""

from __future__ import annotations

import time

import torch

from fastgen.mcmc import ess, hmc
from fastgen.ops import leapfrog_

from .common import copy_fn, count_per_call, environment, markdown_table, time_interleaved_us, write_report


def leapfrog_rows(device: str, max_log2: int) -> list[dict]:
    """µs per interior leapfrog pass (p += eps g; q += eps M^-1 p) at 2^k elements."""
    rows = []
    for log2 in (16, 20, min(24, max_log2)):
        chains = 1024
        n = 2**log2
        q, p, g = (torch.randn(chains, n // chains, device=device) for _ in range(3))
        eps = torch.full((chains,), 0.01, device=device)
        m = torch.rand(n // chains, device=device) + 0.5

        def eager():
            p.add_(g * eps[:, None])
            q.add_(p * m * eps[:, None])

        compiled = torch.compile(eager)
        cases = {"fastgen leapfrog_": lambda: leapfrog_(q, p, g, eps, m, 1.0, True), "eager": eager,
                 "torch.compile": compiled, "copy of the same bytes": copy_fn(5 * 4 * n, device)}
        times = time_interleaved_us(cases, device)
        for name, us in times.items():
            row = {"elements": f"2^{log2}", "candidate": name, "µs": us,
                   "÷ fastgen": f"{us / times['fastgen leapfrog_']:.2f}"}
            if name != "copy of the same bytes":
                row.update(count_per_call(cases[name], device))
            rows.append(row)
            print("  leapfrog", row, flush=True)
    return rows


def sampler_rows(device: str, chains: int = 1024, dim: int = 100) -> list[dict]:
    """HMC (200 adaptation and 200 kept transitions of 10 leapfrog steps) on N(0, S), S with correlation 0.9 between
    neighbours and scales from 0.1 to 1: the smallest bulk ESS over the coordinates, per second and per gradient
    evaluation."""
    g = torch.Generator().manual_seed(0)
    scales = torch.logspace(-1, 0, dim)
    corr = 0.9 ** (torch.arange(dim)[:, None] - torch.arange(dim)[None, :]).abs().double()
    precision = torch.linalg.inv((scales[:, None] * scales[None, :]).double() * corr).float().to(device)

    def log_prob(x):
        return -0.5 * ((x @ precision) * x).sum(1)

    x0 = (torch.randn(chains, dim, generator=g) * scales).to(device)
    start = time.perf_counter()
    result = hmc(x0, log_prob=log_prob, n_steps=200, step_size=0.05, n_leapfrog=10, adapt_steps=200, seed=1)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    worst = float(ess(result.draws).min())
    row = {"sampler": "fastgen hmc (L = 10)", "seconds": seconds, "min ESS": worst, "ESS/s": worst / seconds,
           "ESS per 1k gradients per chain": 1000 * worst / chains / (10 * 400),
           "accept": float(result.accept_rate.mean())}
    print("  sampler", row, flush=True)
    return [row]


def run(device: str, out: str, max_log2: int) -> str:
    env = environment(device)
    print(f"hmc benchmark on {env['device']} (torch {env['torch']})", flush=True)
    leap = leapfrog_rows(device, max_log2)
    samplers = sampler_rows(device)
    count_key = "kernels" if device == "cuda" else "ops"
    sections = {
        "The fused leapfrog pass (p += eps g; q += eps M^-1 p), 1,024 chains": markdown_table(leap, [
            ("elements", "elements"), ("candidate", "candidate"), ("µs", "µs"), ("÷ fastgen", "time ÷ fastgen's"),
            (count_key, count_key), ("host_syncs", "host syncs")]),
        "100-D correlated Gaussian, 1,024 chains": markdown_table(samplers, [
            ("sampler", "sampler"), ("seconds", "seconds"), ("min ESS", "min bulk ESS"), ("ESS/s", "ESS/s"),
            ("ESS per 1k gradients per chain", "ESS per 1k gradients per chain"), ("accept", "acceptance")]),
    }
    return write_report(out, f"hmc-{device}", env, sections, {"leapfrog": leap, "samplers": samplers})
