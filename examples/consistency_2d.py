"""Consistency distillation on the 2-D eight-Gaussian target on the CPU: the teacher is the target's exact denoiser
(no training), the student a small MLP F in EDM's consistency parametrization f = c_skip x + c_out F, trained
with fastgen.diffusion.consistency_distillation_loss (Heun teacher steps on the Karras grid of 18 levels) and an
EMA target; then sampled in 1, 2 and 4 steps with fastgen.sample(..., sampler="consistency") and compared with
the teacher's own ODE sampler (DPM-Solver++(2M), k-diffusion's) at the same number of network evaluations.

    python examples/consistency_2d.py [--steps 6000] [--out consistency_2d.png]

Printed per sampler: the largest deviation of the 8 modes' weights from 1/8 and the within-mode spread (the RMS
distance to the nearest mode over the true one; 1 is right). The PNG shows the samples.
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from torch import nn

import fastgen
from fastgen.diffusion import EMA, ConsistencyFunction, EDMConsistency, consistency_distillation_loss
from fastgen.metrics import mode_weights, within_mode_spread


class Network(nn.Module):
    """F(x_in, c_noise): an MLP on the scaled input and Fourier features of c_noise, with SiLU activations."""

    def __init__(self, hidden: int = 256, features: int = 16):
        super().__init__()
        self.register_buffer("freqs", torch.exp(torch.linspace(0, math.log(2), features // 2)))
        self.net = nn.Sequential(nn.Linear(2 + features, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 2))

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        angles = c_noise.to(x.dtype)[:, None] * self.freqs
        return self.net(torch.cat([x, angles.sin(), angles.cos()], dim=1))


def distill(steps: int = 6000, *, batch: int = 1024, seed: int = 0, log_every: int = 0):
    """(student f, its EMA, the process, the target): `steps` Adam steps (lr 1e-3) of consistency distillation
    from the eight Gaussians' exact denoiser, the target network the EMA of the student (decay 0.95, Song et al.'s
    for CD with 18 levels); EDM's process at its defaults (sigma_data 0.5)."""
    torch.manual_seed(seed)
    gmm = fastgen.targets.eight_gaussians()
    process = EDMConsistency()
    student = ConsistencyFunction(Network(), process)
    ema = EMA(student.parameters(), decay=0.95, warmup=False)
    ema_model = ema.averaged(student)  # the target network: the averages themselves
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(seed)

    def teacher(x, sigma):  # E[x0 | x0 + sigma z]: the exact denoiser of the target
        return gmm.posterior(x.double(), 1.0, sigma.double())[0].to(x.dtype)

    start = time.perf_counter()
    for step in range(1, steps + 1):
        x0 = gmm.sample(batch, seed=seed * 100_003 + step).float()
        loss = consistency_distillation_loss(student, x0, process, teacher, steps=18, solver="heun",
                                             target=ema_model, generator=generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        ema.update()
        if log_every and step % log_every == 0:
            print(f"step {step:5d}  {time.perf_counter() - start:6.1f} s  loss {loss.item():.5f}")
    return student.eval(), ema_model.eval(), process, gmm


def report(x: torch.Tensor, gmm) -> tuple[float, float]:
    """(largest |mode weight - 1/8|, mean within-mode spread)."""
    return float((mode_weights(x, gmm)[:8] - 1 / 8).abs().max()), float(within_mode_spread(x, gmm).mean())


def compare(model, process, gmm, n: int = 16000, seed: int = 0) -> dict:
    """The distilled model at 1, 2 and 4 steps, and the teacher's DPM-Solver++(2M) sampler at 1, 2 and 4 network
    evaluations, each from n samples."""
    from fastgen.integrations import k_diffusion

    rows = {}
    with torch.no_grad():
        for steps in (1, 2, 4):
            x = fastgen.sample(model, (n, 2), sde=process, sampler="consistency", steps=steps, prediction="x0",
                               seed=seed, device="cpu")
            rows[f"consistency, {steps} step{'s' * (steps > 1)}"] = (x, *report(x, gmm))

        def denoiser(x, sigma):
            return gmm.posterior(x.double(), 1.0, sigma.double())[0].to(x.dtype)

        for evaluations in (1, 2, 4):  # one evaluation per level of the Karras grid, then x0 at the last
            sigmas = k_diffusion.get_sigmas_karras(evaluations, process.t_min, process.t_max)
            x0 = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed)) * process.t_max
            x = k_diffusion.sample_dpmpp_2m(denoiser, x0, sigmas, disable=True)
            rows[f"teacher DPM-Solver++(2M), {evaluations} evaluation{'s' * (evaluations > 1)}"] = (
                x, *report(x, gmm))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--out", default="consistency_2d.png")
    args = parser.parse_args()
    _, ema_model, process, gmm = distill(args.steps, log_every=500)
    rows = compare(ema_model, process, gmm)
    for name, (_, weight, spread) in rows.items():
        print(f"{name:34s} max |weight - 1/8| {weight:.4f}  within-mode spread {spread:.3f}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(12, 8))
    for ax, (name, (x, weight, spread)) in zip(axes.flat, rows.items(), strict=True):
        ax.scatter(x[:4000, 0], x[:4000, 1], s=1, alpha=0.4)
        ax.set_title(f"{name}\nmax |w - 1/8| {weight:.3f}, spread {spread:.2f}", fontsize=9)
        ax.set_xlim(-5, 5)
        ax.set_ylim(-5, 5)
        ax.set_aspect("equal")
    fig.tight_layout()
    fig.savefig(args.out, dpi=100)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
