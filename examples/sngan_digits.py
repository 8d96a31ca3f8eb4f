"""An SN-GAN on scikit-learn's 8x8 digits on the CPU: a spectrally normalized discriminator (fastgen.nn.
SpectralNorm, one grouped power iteration per forward), hinge loss (fastgen.gan), and a sample grid.

    python examples/sngan_digits.py [--steps 2000] [--n-dis 5] [--out sngan_digits.png]

SN-GAN's recipe (Miyato et al. 2018): five discriminator updates per generator update, Adam(2e-4, 0, 0.9).
About two minutes on 2 cores. Reports, every few hundred steps, the generator's samples' mean distance to the nearest
training digit
against that of held-out digits (quality), and their mean pairwise distance against the training digits'
(diversity: a collapsed generator has a small one); neither needs a trained classifier.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

import fastgen
from fastgen.cli.demo import image_grid
from fastgen.nn import gan


def load_digits() -> torch.Tensor:
    """The 1797 digits as (N, 64) floats in [-1, 1]."""
    from sklearn.datasets import load_digits as sklearn_digits

    return torch.tensor(sklearn_digits().data, dtype=torch.float32) / 8.0 - 1.0


def generator_net(latent: int = 32, hidden: int = 256) -> nn.Sequential:
    return nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, 64), nn.Tanh())


def discriminator_net(hidden: int = 256) -> nn.Sequential:
    return nn.Sequential(nn.Linear(64, hidden), nn.LeakyReLU(0.1), nn.Linear(hidden, hidden), nn.LeakyReLU(0.1),
                         nn.Linear(hidden, 1))


def train_step(generator: nn.Module, discriminator: nn.Module, g_opt, d_opt, batches: list[torch.Tensor],
               latent: int = 32, loss: str = "hinge") -> tuple[float, float]:
    """One discriminator update per batch of real digits, then one generator update; returns the last losses."""
    for real in batches:
        fake = generator(torch.randn(real.shape[0], latent)).detach()
        d_opt.zero_grad()
        d = gan.d_loss(discriminator(real), discriminator(fake), loss)
        d.backward()
        d_opt.step()
    g_opt.zero_grad()
    g = gan.g_loss(discriminator(generator(torch.randn(batches[0].shape[0], latent))), loss)
    g.backward()
    g_opt.step()
    return d.item(), g.item()


def nearest_distance(x: torch.Tensor, reference: torch.Tensor) -> float:
    return float(torch.cdist(x, reference).min(dim=1).values.mean())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2000, help="generator updates")
    parser.add_argument("--n-dis", type=int, default=5, help="discriminator updates per generator update")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="sngan_digits.png")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    data = load_digits()
    order = torch.randperm(len(data))
    train, held_out = data[order[:1500]], data[order[1500:]]
    generator, discriminator = generator_net(), discriminator_net()
    fastgen.nn.SpectralNorm.apply(discriminator)
    g_opt = torch.optim.Adam(generator.parameters(), lr=2e-4, betas=(0.0, 0.9))
    d_opt = torch.optim.Adam(discriminator.parameters(), lr=2e-4, betas=(0.0, 0.9))
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        batches = [train[torch.randint(len(train), (args.batch,))] for _ in range(args.n_dis)]
        d, g = train_step(generator, discriminator, g_opt, d_opt, batches)
        if step % max(1, args.steps // 5) == 0:
            with torch.no_grad():
                x = generator(torch.randn(300, 32))
            print(f"step {step:5d}  {time.perf_counter() - start:5.1f} s  d_loss {d:.3f}  g_loss {g:.3f}  "
                  f"nearest training digit {nearest_distance(x, train):.2f} "
                  f"(held-out digits: {nearest_distance(held_out, train):.2f})  spread {torch.pdist(x).mean():.2f} "
                  f"(training digits: {torch.pdist(train[:300]).mean():.2f})")
    with torch.no_grad():
        samples = generator(torch.randn(60, 32, generator=torch.Generator().manual_seed(1)))
    image_grid(samples, args.out, title=f"SN-GAN samples after {args.steps} steps")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
