"""A small GAN on the 8-Gaussian ring, with and without spectral normalization of the discriminator, on
the CPU; reports how much of the generator's mass lands on each mode and writes a scatter plot.

    python examples/gan_8gaussians.py [--steps 1500] [--loss hinge] [--out gan_8gaussians.png]

The discriminator is normalized by fastgen.nn.SpectralNorm (one grouped power iteration per forward);
the losses are fastgen.gan's. Mode coverage is fastgen.metrics.mode_weights (share of samples whose
nearest mean is each mode; 0.125 each for a perfect fit).
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

import fastgen
from fastgen.nn import gan


def mlp(inputs: int, outputs: int, hidden: int = 128) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inputs, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, hidden), nn.LeakyReLU(0.2),
                         nn.Linear(hidden, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, outputs))


def train(steps: int = 1500, *, spectral_norm: bool = True, loss: str = "hinge", batch: int = 256, latent: int = 8,
          seed: int = 0, log_every: int = 0) -> nn.Module:
    """Train a generator on fastgen.targets.eight_gaussians(); returns the generator (latent -> 2-D)."""
    torch.manual_seed(seed)
    target = fastgen.targets.eight_gaussians()
    generator_net, discriminator = mlp(latent, 2), mlp(2, 1)
    if spectral_norm:
        fastgen.nn.SpectralNorm.apply(discriminator)
    g_opt = torch.optim.Adam(generator_net.parameters(), lr=2e-4, betas=(0.5, 0.9))
    d_opt = torch.optim.Adam(discriminator.parameters(), lr=2e-4, betas=(0.5, 0.9))
    data_rng = torch.Generator().manual_seed(seed + 1)
    start = time.perf_counter()
    for step in range(1, steps + 1):
        real = target.sample(batch, generator=data_rng)
        fake = generator_net(torch.randn(batch, latent))
        d_opt.zero_grad()
        gan.d_loss(discriminator(real), discriminator(fake.detach()), loss).backward()
        d_opt.step()
        g_opt.zero_grad()
        gan.g_loss(discriminator(fake), loss).backward()
        g_opt.step()
        if log_every and step % log_every == 0:
            weights = mode_weights(generator_net, latent)
            print(f"step {step:5d}  {time.perf_counter() - start:5.1f} s  smallest mode weight {weights.min():.3f}")
    return generator_net


@torch.no_grad()
def samples(generator_net: nn.Module, n: int, latent: int = 8, seed: int = 123) -> torch.Tensor:
    return generator_net(torch.randn(n, latent, generator=torch.Generator().manual_seed(seed)))


def mode_weights(generator_net: nn.Module, latent: int = 8, n: int = 4000) -> torch.Tensor:
    return fastgen.metrics.mode_weights(samples(generator_net, n, latent), fastgen.targets.eight_gaussians())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--loss", default="hinge", choices=gan.KINDS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="gan_8gaussians.png")
    args = parser.parse_args(argv)
    results = {}
    for normalized in (False, True):
        label = "spectral norm" if normalized else "plain"
        print(f"-- {label} discriminator, {args.loss} loss")
        net = train(args.steps, spectral_norm=normalized, loss=args.loss, seed=args.seed, log_every=args.steps // 5)
        weights = mode_weights(net)
        print(f"mode weights ({label}):", " ".join(f"{w:.3f}" for w in weights.tolist()))
        results[label] = (samples(net, 2000), weights)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    truth = fastgen.targets.eight_gaussians().sample(2000, seed=0)
    fig, axes = plt.subplots(1, 3, figsize=(12, 4), sharex=True, sharey=True)
    axes[0].scatter(*truth.T, s=2, alpha=0.4)
    axes[0].set_title("8 Gaussians (exact samples)")
    for ax, (label, (x, weights)) in zip(axes[1:], results.items(), strict=True):
        ax.scatter(*x.T, s=2, alpha=0.4, color="C1")
        ax.set_title(f"GAN, {label}: smallest mode weight {weights.min():.3f}")
    fig.suptitle(f"{args.loss} loss, {args.steps} steps, batch 256")
    fig.savefig(args.out, dpi=90, bbox_inches="tight")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
