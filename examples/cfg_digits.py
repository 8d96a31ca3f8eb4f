"""Class-conditional digits with classifier-free guidance on the CPU: a score network on scikit-learn's 8x8 digits
that takes the class (or a null label, dropped in 10% of training steps), sampled with fastgen's fused guided step
at guidance scales 1, 3 and 5; a small classifier trained here scores how often the samples are of their class.

    python examples/cfg_digits.py [--steps 4000] [--out cfg_digits.png]

Writes one grid (a row per scale, ten samples per class) and prints the class accuracy per scale. About two
minutes on 2 cores.
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

NULL = 10  # the unconditional label
SCALES = (1.0, 3.0, 5.0)


def load_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """The 1797 digits as (N, 64) floats in [-1, 1], and their labels."""
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    return torch.tensor(digits.data, dtype=torch.float32) / 8.0 - 1.0, torch.tensor(digits.target)


class ConditionalScoreNet(nn.Module):
    """eps(x_t, t, y): an MLP on the pixels, a sinusoidal embedding of t and a learnt embedding of y (10 = null)."""

    def __init__(self, dim: int = 64, hidden: int = 512, frequencies: int = 16, classes: int = 10):
        super().__init__()
        self.register_buffer("freqs", torch.exp(torch.linspace(0, math.log(1000.0), frequencies)))
        self.label = nn.Embedding(classes + 1, 32)
        self.net = nn.Sequential(nn.Linear(dim + 2 * frequencies + 32, hidden), nn.SiLU(), nn.Linear(hidden, hidden),
                                 nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        angles = t.float()[:, None] * self.freqs
        return self.net(torch.cat([x, angles.sin(), angles.cos(), self.label(y.expand(x.shape[0]))], dim=1))


def train(steps: int = 4000, *, batch: int = 256, drop: float = 0.1, seed: int = 0,
          log_every: int = 0) -> ConditionalScoreNet:
    """The eps loss with the label replaced by the null label with probability ``drop`` (Ho & Salimans 2021)."""
    torch.manual_seed(seed)
    data, labels = load_digits()
    sde, model = VPSDE(), ConditionalScoreNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    ema = EMA(model.parameters(), decay=0.999)
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for step in range(1, steps + 1):
        index = torch.randint(0, len(data), (batch,), generator=generator)
        x0, y = data[index], labels[index]
        y = torch.where(torch.rand(batch, generator=generator) < drop, torch.full_like(y, NULL), y)
        t = torch.rand(batch, generator=generator) * (sde.T - 1e-3) + 1e-3
        z = torch.randn(x0.shape, generator=generator)
        alpha, sigma = (v.float()[:, None] for v in sde.marginal(t.double()))
        loss = (model(alpha * x0 + sigma * z, t, y) - z).square().sum(1).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        ema.update()
        if log_every and step % log_every == 0:
            print(f"step {step:5d}  loss {loss.item():7.3f}  {time.perf_counter() - start:5.1f} s", flush=True)
    ema.copy_to()
    return model.eval()


def classifier(seed: int = 0) -> nn.Module:
    """A 64-256-10 MLP trained on the digits (about 98% on held-out digits), to score the samples' classes."""
    torch.manual_seed(seed)
    data, labels = load_digits()
    net = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(300):
        loss = nn.functional.cross_entropy(net(data + 0.05 * torch.randn_like(data)), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return net.eval()


@torch.no_grad()
def guided_samples(model: nn.Module, scale: float, per_class: int = 10, seed: int = 0,
                   steps: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    labels = torch.arange(10).repeat_interleave(per_class)
    x = fastgen.sample(model, (len(labels), 64), sde=VPSDE(), sampler="dpmpp_2m", steps=steps, prediction="eps",
                       seed=seed, device="cpu", model_kwargs={"y": labels},
                       uncond_kwargs={"y": torch.tensor([NULL])}, guidance_scale=scale)
    return x.clamp(-1, 1), labels


@torch.no_grad()
def accuracy(judge: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> float:
    return float((judge(x).argmax(1) == labels).float().mean())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="cfg_digits.png")
    args = parser.parse_args(argv)
    model = train(args.steps, seed=args.seed, log_every=max(1, args.steps // 10))
    report(model, guided_samples, SCALES, args.out, args.seed)
    return 0


def report(model: nn.Module, sampler, scales, out: str, seed: int = 0) -> None:
    """The class accuracy per guidance scale (500 samples, this file's classifier), and a grid with a row per scale
    of one sample per class: ``sampler(model, scale, per_class=, seed=)`` draws them."""
    judge = classifier(seed)
    for scale in scales:
        x, labels = sampler(model, scale, per_class=50, seed=seed)
        print(f"guidance scale {scale:.0f}: class accuracy {accuracy(judge, x, labels):.1%} (500 samples)")
    grid = torch.cat([sampler(model, scale, per_class=1, seed=seed + 1)[0] for scale in scales])
    title = "classes 0-9; rows: guidance scale " + ", ".join(f"{s:.0f}" for s in scales)
    image_grid(grid, out, columns=10, title=title)
    print(f"wrote {out}")


if __name__ == "__main__":
    raise SystemExit(main())
