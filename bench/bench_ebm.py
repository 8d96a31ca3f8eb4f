"""EBM training steps: one persistent-contrastive-divergence step (K = 20 Langevin steps on 4,096 chains, the
contrastive loss, backward) with fastgen.ebm against the eager loop as usually written and against torchebm's
PersistentContrastiveDivergence (when installed: `pip install --no-deps torchebm`); and the replay buffer's
sample + write-back against a buffer kept in a CPU tensor (JEM/IGEBM style), as a share of the step."""

from __future__ import annotations

import math

import torch
from torch import nn

import fastgen
from fastgen.mcmc import ebm

from .common import count_per_call, environment, markdown_table, time_interleaved_us, write_report

CHAINS, K, STEP = 4096, 20, 1e-2


def mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(2, 128), nn.SiLU(), nn.Linear(128, 128), nn.SiLU(), nn.Linear(128, 1))


def pcd_rows(device: str) -> list[dict]:
    torch.manual_seed(0)
    net = mlp().to(device)
    data = fastgen.targets.eight_gaussians().sample(CHAINS, seed=0, device=device)

    def energy(x):
        return net(x)[:, 0]

    chains = ebm.PersistentChains(torch.randn(CHAINS, 2, device=device), seed=0)
    walkers = torch.randn(CHAINS, 2, device=device)

    def ours():
        x = chains.step(energy, n_steps=K, step_size=STEP)
        ebm.contrastive_loss(energy, data, x).backward()

    def eager():
        nonlocal walkers
        x = walkers
        for _ in range(K):
            x = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(energy(x).sum(), x)
            x = x - STEP * grad + math.sqrt(2 * STEP) * torch.randn_like(x)
        walkers = x.detach()
        (energy(data).mean() - energy(walkers).mean()).backward()

    cases = {"fastgen.ebm (PersistentChains + contrastive_loss)": ours, "eager PCD loop": eager}
    try:
        from torchebm.core import BaseModel
        from torchebm.losses import ContrastiveDivergence
        from torchebm.samplers import LangevinDynamics

        class Wrapped(BaseModel):
            def __init__(self):
                super().__init__(device=device)
                self.net = net

            def forward(self, x):
                return self.net(x)[:, 0]

        model = Wrapped()
        sampler = LangevinDynamics(model, step_size=STEP, noise_scale=1.0, device=device)
        pcd = ContrastiveDivergence(model, sampler, k_steps=K, persistent=True, buffer_size=CHAINS,
                                    new_sample_ratio=0.0, energy_reg_weight=0.0, device=device)

        def theirs():
            loss, _ = pcd(data)
            loss.backward()

        theirs()
        cases["torchebm ContrastiveDivergence(persistent=True)"] = theirs
    except Exception as err:  # noqa: BLE001 (recorded)
        print(f"  ebm: torchebm unavailable: {type(err).__name__}: {err}", flush=True)
    times = time_interleaved_us(cases, device)
    first = "fastgen.ebm (PersistentChains + contrastive_loss)"
    rows = []
    for k, us in times.items():
        rows.append({"what": f"PCD step, K={K}, {CHAINS} chains, 2-128-128-1 MLP", "candidate": k, "µs": us,
                     "vs fastgen": f"{us / times[first]:.2f}", **count_per_call(cases[k], device)})
        print("  ebm", rows[-1], flush=True)
    return rows


def buffer_rows(device: str, step_us: float) -> list[dict]:
    batch, capacity = 128, 10_000
    buffer = ebm.ReplayBuffer(capacity, (3, 32, 32), reinit_prob=0.05, seed=0, device=device)
    host = torch.rand(capacity, 3, 32, 32) * 2 - 1  # the CPU-tensor buffer of JEM / IGEBM

    def ours():
        x, index = buffer.sample(batch)
        buffer.write_(index, x)

    def cpu_buffer():
        index = torch.randint(capacity, (batch,))
        x = host[index]
        fresh = torch.rand(batch) < 0.05
        x[fresh] = torch.rand(int(fresh.sum()), 3, 32, 32) * 2 - 1
        x = x.to(device)
        host[index] = x.cpu()

    times = time_interleaved_us({"fastgen.ebm.ReplayBuffer": ours, "CPU-tensor buffer (JEM style)": cpu_buffer},
                                device)
    return [{"what": f"buffer sample + write-back, batch {batch} of 3x32x32, capacity {capacity}", "candidate": k,
             "µs": us, "vs fastgen": f"{us / times['fastgen.ebm.ReplayBuffer']:.2f}",
             "share of the PCD step": f"{us / step_us:.1%}"} for k, us in times.items()]


def run(device: str, out: str, max_log2: int) -> str:
    rows = pcd_rows(device)
    rows += buffer_rows(device, rows[0]["µs"])
    table = markdown_table(rows, [("what", "what"), ("candidate", "candidate"), ("µs", "µs"),
                                  ("vs fastgen", "time / fastgen's"), ("ops", "ops per call (CPU)"),
                                  ("kernels", "kernels per call (GPU)"), ("host_syncs", "host syncs per call"),
                                  ("share of the PCD step", "share of fastgen's PCD step")])
    return write_report(out, "ebm", environment(device), {"EBM training steps": table}, {"rows": rows})
