"""`make demo`: one million Langevin chains on the 8-Gaussian target with the
fused in-register kernel; prints samples/s, the MMD to exact samples and the
per-mode weights, and writes a density plot.

    python -m fastgen.cli.demo [--chains 1000000] [--steps 500] [--out demo_out]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

import fastgen
from fastgen.metrics import mmd, mode_weights


def density_plot(samples: torch.Tensor, exact: torch.Tensor, path: str, label: str, suptitle: str) -> None:
    """Side-by-side 2-D histograms: `samples` titled `label`, and the exact samples."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 5), constrained_layout=True)
    for ax, data, title in ((axes[0], samples, label), (axes[1], exact, f"exact samples, {len(exact):,}")):
        ax.hist2d(data[:, 0].numpy(), data[:, 1].numpy(), bins=300, range=[[-3, 3], [-3, 3]], cmap="magma")
        ax.set_title(title)
        ax.set_aspect("equal")
    fig.suptitle(suptitle)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def flow_plot(log_prob, data: torch.Tensor, samples: torch.Tensor, path: str, titles, lim: float = 3.0,
              points: int = 150) -> None:
    """Three panels on [-lim, lim]^2: the data, the model's density exp(log_prob) on a grid, its samples."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axis = torch.linspace(-lim, lim, points)
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="xy"), -1).reshape(-1, 2)
    with torch.no_grad():
        density = log_prob(grid).exp().reshape(points, points)
    fig, axes = plt.subplots(1, 3, figsize=(12, 4), sharex=True, sharey=True)
    axes[0].scatter(*data.detach().T, s=2, alpha=0.4)
    axes[1].imshow(density, extent=(-lim, lim, -lim, lim), origin="lower", cmap="magma")
    axes[2].scatter(*samples.detach().T, s=2, alpha=0.4, color="C1")
    for ax, title in zip(axes, titles, strict=True):
        ax.set_title(title)
        ax.set_xlim(-lim, lim), ax.set_ylim(-lim, lim)
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)


def image_grid(images: torch.Tensor, path: str, columns: int = 10, title: str = "", value_range=(-1.0, 1.0),
               side: int = 8) -> None:
    """Write square grayscale images (N, side * side) or (N, side, side), values in ``value_range``, as a grid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = images.detach().float().cpu().reshape(-1, side, side)
    rows = max(1, -(-len(images) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 0.8, rows * 0.8), squeeze=False)
    for ax, image in zip(axes.flat, images, strict=False):
        ax.imshow(image.numpy(), cmap="gray_r", vmin=value_range[0], vmax=value_range[1])
    for ax in axes.flat:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chains", type=int, default=1_000_000)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--step-size", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default="demo_out")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)

    gmm = fastgen.targets.eight_gaussians()
    print(f"fastgen {fastgen.__version__} | torch {torch.__version__} | device {args.device}")
    for name, status in fastgen.backends().items():
        print(f"  backend {name:7s} {status}")
    x0 = torch.randn(args.chains, 2, generator=torch.Generator().manual_seed(args.seed)).to(args.device)
    fastgen.langevin(x0[:1024], energy=gmm, n_steps=2, step_size=args.step_size, seed=args.seed)  # warm-up

    chunk = max(1, args.steps // 10)
    start = time.perf_counter()

    def progress(step, x):
        if step % chunk and step != args.steps:
            return
        if args.device == "cuda":
            torch.cuda.synchronize()
        rate = args.chains * step / (time.perf_counter() - start)
        line = f"  step {step:5d}/{args.steps}  {rate / 1e6:8.1f} M chain-steps/s"
        if sys.stderr.isatty():
            print("\r" + line, end="", file=sys.stderr, flush=True)
        else:
            print(line, file=sys.stderr, flush=True)

    x = fastgen.langevin(x0, energy=gmm, n_steps=args.steps, step_size=args.step_size, seed=args.seed,
                         callback=progress)
    if args.device == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    if sys.stderr.isatty():
        print(file=sys.stderr)
    x = x.float().cpu()

    exact = gmm.sample(args.chains, seed=args.seed + 1)
    sub = min(5000, args.chains)
    null = mmd(exact[:sub], gmm.sample(sub, seed=args.seed + 2), 0.3)
    score = mmd(x[:sub], exact[:sub], 0.3)
    weights = mode_weights(x, gmm)
    print(f"{args.chains:,} chains x {args.steps} steps in {elapsed:.2f} s: "
          f"{args.chains / elapsed:,.0f} samples/s ({args.chains * args.steps / elapsed / 1e6:.1f} M chain-steps/s)")
    print(f"MMD^2 to exact samples (n={sub}, bandwidth 0.3): {score:.2e}   (exact vs exact: {null:.2e})")
    print("mode weights: " + " ".join(f"{w:.4f}" for w in weights.tolist()) + "   (exact: 0.1250 each)")
    path = os.path.join(args.out, "eight_gaussians_density.png")
    density_plot(x, exact, path, f"fastgen ULA, {args.chains:,} chains, {args.steps} steps of {args.step_size:g}",
                 "8-Gaussian target: sample density")
    print(f"density plot: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
