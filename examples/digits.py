"""Train a small score network on scikit-learn's 8x8 digits on the CPU, sample it
with fastgen's fused sampler, and write an image grid.

    python examples/digits.py [--steps 4000] [--sampler dpmpp_2m] [--out digits.png]

The network predicts eps for the variance-preserving SDE (so it is trained with
the denoising score-matching loss under sigma^2 weighting); about a minute on 2 cores.
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from torch import nn

import fastgen
from fastgen.cli.demo import image_grid
from fastgen.diffusion.processes import VPSDE
from fastgen.diffusion.training import EMA


def load_digits() -> torch.Tensor:
    """The 1797 digits as (N, 64) floats in [-1, 1]."""
    from sklearn.datasets import load_digits as sklearn_digits

    return torch.tensor(sklearn_digits().data, dtype=torch.float32) / 8.0 - 1.0


class ScoreNet(nn.Module):
    """eps(x_t, t): an MLP on the pixels and a sinusoidal embedding of t."""

    def __init__(self, dim: int = 64, hidden: int = 512, frequencies: int = 16):
        super().__init__()
        self.register_buffer("freqs", torch.exp(torch.linspace(0, math.log(1000.0), frequencies)))
        self.net = nn.Sequential(nn.Linear(dim + 2 * frequencies, hidden), nn.SiLU(), nn.Linear(hidden, hidden),
                                 nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        angles = t.float()[:, None] * self.freqs
        return self.net(torch.cat([x, angles.sin(), angles.cos()], dim=1))


def train_step(model: nn.Module, optimizer, data: torch.Tensor, sde: VPSDE, batch: int, generator) -> float:
    """One step of the eps loss |eps_theta(alpha x0 + sigma z, t) - z|^2 (DSM with sigma^2 weighting)."""
    x0 = data[torch.randint(0, len(data), (batch,), generator=generator)]
    t = torch.rand(batch, generator=generator) * (sde.T - 1e-3) + 1e-3
    z = torch.randn(x0.shape, generator=generator)
    alpha, sigma = (v.float()[:, None] for v in sde.marginal(t.double()))
    loss = (model(alpha * x0 + sigma * z, t) - z).square().sum(1).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--sampler", default="dpmpp_2m", choices=fastgen.samplers.diffusion.SAMPLERS[:4] + (
        "euler_ancestral", "dpmpp_2m"))
    parser.add_argument("--sample-steps", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="digits.png")
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    data, sde, model = load_digits(), VPSDE(), ScoreNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.steps)
    ema = EMA(model.parameters(), decay=0.999)
    generator = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        loss = train_step(model, optimizer, data, sde, args.batch, generator)
        schedule.step()
        ema.update()
        if step % max(1, args.steps // 10) == 0:
            print(f"step {step:5d}  loss {loss:7.3f}  {time.perf_counter() - start:5.1f} s", flush=True)
    ema.copy_to()
    model.eval()
    with torch.no_grad():
        start = time.perf_counter()
        x = fastgen.sample(model, (64, 64), sde=sde, sampler=args.sampler, steps=args.sample_steps, prediction="eps",
                           seed=args.seed, device="cpu")
    print(f"sampled 64 digits with {args.sampler} in {time.perf_counter() - start:.2f} s")
    image_grid(x, args.out)
    print(f"image grid: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
