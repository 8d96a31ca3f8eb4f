"""GAN and residual-flow training steps: fastgen.gan's WGAN-GP discriminator step against the usual eager code
(torch.rand interpolation weights, three discriminator calls, torch.autograd.grad with create_graph), and a
residual block's log-det (forward + backward) against the residual-flows reference recipe (numpy-drawn
Russian-roulette length, torch.randn probe, the same power and Neumann series), timed in turn (medians),
with the ops (CPU) / kernels (GPU) and host syncs of each."""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

import fastgen
from fastgen.flows import LipSwish, ResidualBlock

from .common import count_per_call, environment, markdown_table, time_interleaved_us, write_report


def critic() -> nn.Sequential:
    return nn.Sequential(nn.Linear(2, 512), nn.LeakyReLU(0.2), nn.Linear(512, 512), nn.LeakyReLU(0.2),
                         nn.Linear(512, 512), nn.LeakyReLU(0.2), nn.Linear(512, 1))


def wgan_gp_rows(device: str) -> list[dict]:
    torch.manual_seed(0)
    d_ours, d_eager = critic().to(device), None
    d_eager = copy.deepcopy(d_ours)
    real, fake = torch.randn(512, 2, device=device), torch.randn(512, 2, device=device)

    def ours():
        loss = fastgen.gan.d_loss(d_ours(real), d_ours(fake), "wasserstein")
        loss = loss + 10 * fastgen.gan.gradient_penalty(d_ours, real, fake, "wgan_gp", seed=0)
        loss.backward()

    def eager():
        alpha = torch.rand(real.shape[0], 1, device=device)
        x_hat = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
        out = d_eager(x_hat)
        grad = torch.autograd.grad(out, x_hat, torch.ones_like(out), create_graph=True, retain_graph=True)[0]
        penalty = ((grad.norm(2, dim=1) - 1) ** 2).mean()
        loss = d_eager(fake).mean() - d_eager(real).mean() + 10 * penalty
        loss.backward()

    cases = {"fastgen.gan d_loss + gradient_penalty": ours, "eager WGAN-GP (the usual code)": eager}
    times = time_interleaved_us(cases, device)
    rows = []
    for k, us in times.items():
        rows.append({"step": "WGAN-GP critic step, 4-layer 512-wide MLP, batch 512", "candidate": k, "µs": us,
                     "vs fastgen": f"{us / times['fastgen.gan d_loss + gradient_penalty']:.2f}",
                     **count_per_call(cases[k], device)})
        print("  gan", rows[-1], flush=True)
    return rows


def block_net(dim: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, hidden), LipSwish(), nn.Linear(hidden, hidden), LipSwish(),
                         nn.Linear(hidden, dim))


def residual_rows(device: str) -> list[dict]:
    dim, hidden, batch = 2, 128, 1024
    torch.manual_seed(0)
    block = ResidualBlock(block_net(dim, hidden), seed=0).to(device)
    reference_net = copy.deepcopy(block.net)  # the same spectrally normalized g
    x = torch.randn(batch, dim, device=device)
    rng = np.random.default_rng(0)

    def ours():
        z, log_det = block(x)
        (z.square().sum() + log_det.sum()).backward()

    def reference():
        """residual-flows' recipe: n_power_series = n_exact + geometric draw on the host, Neumann gradient."""
        n = 2 + int(rng.geometric(0.5)) - 1
        xg = x.detach().requires_grad_(True)
        g = reference_net(xg)
        v = torch.randn_like(xg)
        w, neumann, value = v, v.clone(), 0.0
        with torch.no_grad():
            for k in range(1, n + 1):
                w = torch.autograd.grad(g, xg, w, retain_graph=True)[0]
                kept = 1.0 if k <= 2 else 0.5 ** (k - 2)
                value = value + (-1) ** (k + 1) / (k * kept) * (w * v).sum(1)
                if k < n:
                    neumann = neumann + (-1) ** k / (1.0 if k + 1 <= 2 else 0.5 ** (k - 1)) * w
        surrogate = (torch.autograd.grad(g, xg, neumann, create_graph=True)[0] * v).sum(1)
        log_det = value + surrogate - surrogate.detach()
        ((xg + g).square().sum() + log_det.sum()).backward()

    cases = {"fastgen ResidualBlock (stream probe and length)": ours,
             "residual-flows recipe (numpy length, torch.randn probe)": reference}
    times = time_interleaved_us(cases, device)
    rows = []
    for k, us in times.items():
        rows.append({"step": f"residual block log-det fwd+bwd, D={dim}, hidden {hidden}, batch {batch}",
                     "candidate": k, "µs": us,
                     "vs fastgen": f"{us / times['fastgen ResidualBlock (stream probe and length)']:.2f}",
                     **count_per_call(cases[k], device)})
        print("  gan", rows[-1], flush=True)
    return rows


def run(device: str, out: str, max_log2: int) -> str:
    rows = wgan_gp_rows(device) + residual_rows(device)
    table = markdown_table(rows, [("step", "step"), ("candidate", "candidate"), ("µs", "µs"),
                                  ("vs fastgen", "time / fastgen's"), ("ops", "ops per call (CPU)"),
                                  ("kernels", "kernels per call (GPU)"), ("host_syncs", "host syncs per call")])
    return write_report(out, "gan", environment(device), {"GAN and residual-flow steps": table}, {"rows": rows})
