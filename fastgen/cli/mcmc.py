"""``fastgen sample TARGET --sampler nuts|hmc``: many chains on a target with exact answers, the diagnostics MCMC
users read (per coordinate: mean and its Monte Carlo SE against the exact mean, sd, bulk and tail ESS, split R-hat;
overall: acceptance, divergences, tree depth, gradients per transition, ESS per second) and, on request, a trace
plot and a rank plot (Vehtari et al. 2021: each chain's ranks among all draws, flat when the chains agree)."""

from __future__ import annotations

import math
import time
import warnings

import torch

from .. import targets
from ..mcmc import hmc, nuts, summary

MCMC_SAMPLERS = ("nuts", "hmc")
MCMC_TARGETS = {"funnel": targets.funnel, "funnel_noncentred": lambda: targets.funnel(centred=False),
                "banana": targets.banana, "gaussian100": targets.correlated_gaussian,
                "gmm8": targets.eight_gaussians, "rings": targets.rings, "grid": targets.grid}
SHOWN = 10  # coordinates printed


def _exact(target) -> tuple[torch.Tensor, torch.Tensor]:
    """The exact mean and sd of every coordinate (mixtures: from their components)."""
    if isinstance(target, targets.GaussianMixture):
        w = target.weights[:, None]
        mean = (w * target.means).sum(0)
        second = (w * (target.stds.square() + target.means.square())).sum(0)
        return mean, (second - mean.square()).sqrt()
    return target.mean, target.variance.sqrt()


def trace_plot(draws: torch.Tensor, path: str, title: str, coords: int = 4, chains: int = 4) -> None:
    """Up to `coords` coordinates' traces, `chains` chains each, one panel per coordinate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = min(coords, draws.shape[2])
    fig, axes = plt.subplots(k, 1, figsize=(10, 2.0 * k), sharex=True, squeeze=False)
    for i, ax in enumerate(axes[:, 0]):
        for c in range(min(chains, draws.shape[0])):
            ax.plot(draws[c, :, i].numpy(), lw=0.6, alpha=0.8, label=f"chain {c}")
        ax.set_ylabel(f"x[{i}]")
    axes[0, 0].set_title(title, fontsize=10)
    axes[0, 0].legend(fontsize=7, loc="upper right", ncol=chains)
    axes[-1, 0].set_xlabel("transition")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def rank_plot(draws: torch.Tensor, path: str, title: str, coords: int = 4, chains: int = 4, bins: int = 20) -> None:
    """Per coordinate, the histogram of each of `chains` chains' ranks among all chains' draws: flat (around the
    dashed line) when the chains sample the same law."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c, n, _ = draws.shape
    k = min(coords, draws.shape[2])
    fig, axes = plt.subplots(1, k, figsize=(3.2 * k, 3.0), squeeze=False)
    for i, ax in enumerate(axes[0]):
        ranks = draws[:, :, i].reshape(-1).argsort().argsort().reshape(c, n).float() / (c * n)
        for j in range(min(chains, c)):
            counts = torch.histc(ranks[j], bins=bins, min=0, max=1)
            ax.step(torch.linspace(0, 1, bins + 1)[:-1].numpy(), counts.numpy(), where="post", label=f"chain {j}")
        ax.axhline(n / bins, color="k", ls="--", lw=0.8)
        ax.set_title(f"x[{i}]", fontsize=9)
        ax.set_xlabel("rank / draws")
    axes[0, 0].set_ylabel("count")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(source: str, sampler: str, chains: int, steps: int, warmup: int, seed: int, dense: bool,
        trace: str | None, rank: str | None) -> int:
    target = MCMC_TARGETS[source]()
    dim = target.dim
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(chains, dim, generator=g)
    if isinstance(target, targets.GaussianMixture):
        x0 = x0 * 3  # spread over the modes: each chain stays in the one it reaches
    kwargs = dict(energy=target) if isinstance(target, targets.GaussianMixture) else dict(log_prob=target.log_prob)
    common = dict(n_steps=steps, step_size=0.1, adapt_steps=warmup, adapt_mass=warmup >= 20, dense_mass=dense,
                  seed=seed, **kwargs)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # divergences are reported below
        if sampler == "nuts":
            result = nuts(torch.as_tensor(x0), **common)
        else:
            result = hmc(torch.as_tensor(x0), n_leapfrog=4, adapt_length=warmup > 0, **common)
    seconds = time.perf_counter() - start
    draws = result.draws.double()
    stats = summary(draws)
    mean, sd = _exact(target)
    print(f"{sampler} on {source} ({dim}-D): {chains:,} chains, {warmup} warm-up + {steps} kept transitions, "
          f"{seconds:.1f} s ({'dense' if dense else 'diagonal'} mass{', adapted' if common['adapt_mass'] else ''})")
    print(f"{'coord':>5} {'mean':>9} {'mcse':>8} {'exact':>8} {'z':>6} {'sd':>8} {'exact sd':>8} {'ess_bulk':>9} "
          f"{'ess_tail':>9} {'r_hat':>6}")
    for i in range(min(dim, SHOWN)):
        z = (stats["mean"][i] - mean[i]) / stats["mcse_mean"][i]
        print(f"{i:>5} {stats['mean'][i]:9.4f} {stats['mcse_mean'][i]:8.4f} {mean[i]:8.4f} {z:6.2f} "
              f"{stats['sd'][i]:8.4f} {sd[i]:8.4f} {stats['ess_bulk'][i]:9.0f} {stats['ess_tail'][i]:9.0f} "
              f"{stats['r_hat'][i]:6.3f}")
    if dim > SHOWN:
        print(f"  ... {dim - SHOWN} more coordinates")
    worst = float(stats["ess_bulk"].min())
    z_all = ((stats["mean"] - mean) / stats["mcse_mean"]).abs()
    print(f"min bulk ESS {worst:,.0f}, min tail ESS {float(stats['ess_tail'].min()):,.0f}, max R-hat "
          f"{float(stats['r_hat'].max()):.3f}; ESS/s {worst / seconds:,.0f}; largest |mean - exact| / mcse "
          f"{float(z_all.max()):.2f} over {dim} coordinates")
    per = float(result.gradients.double().mean()) / max(steps, 1)
    line = (f"acceptance {float(result.accept_rate.mean()):.3f}, divergences {int(result.divergences.sum())} "
            f"(in {int((result.divergences > 0).sum())} chains), step size {float(result.step_size.mean()):.4f}, "
            f"gradients per transition {per:.1f}")
    if result.tree_depth is not None:
        line += (f", tree depth mean {float(result.tree_depth.double().mean()):.2f} max "
                 f"{int(result.tree_depth.max())}")
    if result.trajectory_length is not None:
        line += f", trajectory length {result.trajectory_length:.3f}"
    print(line)
    if not math.isfinite(worst):
        return 1
    title = f"fastgen {sampler} on {source}: {chains:,} chains"
    if trace:
        trace_plot(result.draws.float(), trace, title)
        print(f"trace plot: {trace}")
    if rank:
        rank_plot(result.draws.float(), rank, title)
        print(f"rank plot: {rank}")
    return 0
