"""The seeds' toy model for training energy-based models, reproduced with fastgen's samplers and losses.

    fastgen toy ebm [--steps 400] [--lr 0.1] [--out ebm_toy.png]      (or python examples/ebm_toy.py)

U_theta(x) = -log(exp(-|x - a|^2 / 2) + exp(-theta) exp(-|x - b|^2 / 2)), a = -10, b = 10: a two-mode
family whose mode-b weight is q(theta) = exp(-theta) / (1 + exp(-theta)). The target theta* has q* = 0.8.
Starting from theta = 0 (q = 1/2), theta follows the discretized gradient flow theta <- theta - lr grad loss of
each method, every expectation estimated from samples:

* maximum likelihood: fastgen.ebm.contrastive_loss with fresh exact model samples (a sampler that mixes);
  prediction: theta -> theta*;
* score matching: fastgen.ebm.dsm_loss (sigma = 0.1); prediction: theta does not move (the score does not
  see the mode weights);
* NCE: fastgen.ebm.nce_loss with noise from the family at mu = 1, its log-density taken unnormalized as
  -U_mu as on the lecture's slide; prediction: a fixed point other than theta*;
* PCD: fastgen.ebm.PersistentChains (fused ULA, 10 steps per update) started from the initial model;
  prediction: the walkers never cross between modes, so theta drifts at the constant rate q(0) - q*.

The NCE fixed point. Near mode a, D_theta = 1/2 whatever theta; near b, D_theta = e^-theta / (e^-theta + e^-mu).
The flow theta' = E*[d log D_theta] + E_mu[d log(1 - D_theta)] is then
    theta' = -q* e^-mu / (e^-theta + e^-mu) + q_mu e^-theta / (e^-theta + e^-mu)
(the slide's equation, rearranged), zero where q* e^-mu = q_mu e^-theta, i.e.
    theta_NCE = theta* + log((1 + e^-theta*) / (1 + e^-mu)).
The slide prints mu + log((1 + e^-theta*) / (1 + e^-mu)); that is not a zero of its own flow equation unless
mu = theta*: it has mu where theta* belongs. Both are reported; the run settles on the derived one.
"""

from __future__ import annotations

import argparse
import math

import torch
from torch import nn

from .. import targets
from ..mcmc import ebm

A, B = -10.0, 10.0
THETA_STAR = -math.log(4.0)  # q* = 0.8
THETA_0 = 0.0
MU = 1.0
METHODS = ("maximum likelihood", "score matching", "NCE", "PCD")


def q(theta: float) -> float:
    """Mode-b weight of the family at theta."""
    return 1.0 / (1.0 + math.exp(theta))


def nce_fixed_point(theta_star: float = THETA_STAR, mu: float = MU) -> float:
    """The zero of the NCE flow (derived in the module docstring)."""
    return theta_star + math.log((1 + math.exp(-theta_star)) / (1 + math.exp(-mu)))


def lecture_nce_fixed_point(theta_star: float = THETA_STAR, mu: float = MU) -> float:
    """The closed form printed on the lecture's slide."""
    return mu + math.log((1 + math.exp(-theta_star)) / (1 + math.exp(-mu)))


class ToyEnergy(nn.Module):
    """U_theta(x) for x of shape (n, 1)."""

    def __init__(self, theta: float):
        super().__init__()
        self.theta = nn.Parameter(torch.tensor(float(theta)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, 0]
        # logsumexp rather than logaddexp: its double backward (score matching) stays finite
        return -torch.logsumexp(torch.stack([-0.5 * (x - A) ** 2, -self.theta - 0.5 * (x - B) ** 2], -1), -1)


def family(theta: float) -> targets.GaussianMixture:
    """rho_theta as an exact mixture (sampler and normalized density)."""
    return targets.GaussianMixture([[A], [B]], 1.0, [1 - q(theta), q(theta)])


class UnnormalizedNoise:
    """The NCE noise of the slide: samples from rho_mu, log-density -U_mu (unnormalized)."""

    def __init__(self, mu: float):
        self.mixture, self.energy = family(mu), ToyEnergy(mu).requires_grad_(False)

    def sample(self, n: int, seed: int | None = None) -> torch.Tensor:
        return self.mixture.sample(n, seed=seed)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return -self.energy(x)


def run(method: str, steps: int = 400, *, lr: float = 0.1, batch: int = 4096, seed: int = 0,
        pcd_steps: int = 10, pcd_step_size: float = 0.1) -> dict:
    """theta(t) at t = 0, lr, ..., steps lr (a list), and for PCD the walkers' mode-b fraction over time."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    energy = ToyEnergy(THETA_0)
    optimizer = torch.optim.SGD(energy.parameters(), lr=lr)
    target = family(THETA_STAR)
    thetas, walker_fraction = [THETA_0], []
    chains = ebm.PersistentChains(family(THETA_0).sample(batch, seed=seed + 1), seed=seed + 2) \
        if method == "PCD" else None
    noise = UnnormalizedNoise(MU)
    for step in range(steps):
        data = target.sample(batch, seed=seed + 10 + 4 * step)
        if method == "maximum likelihood":
            negatives = family(energy.theta.item()).sample(batch, seed=seed + 11 + 4 * step)
            loss = ebm.contrastive_loss(energy, data, negatives)
        elif method == "score matching":
            loss = ebm.dsm_loss(energy, data, 0.1, seed=seed + 12 + 4 * step)
        elif method == "NCE":
            loss = ebm.nce_loss(energy, data, noise, seed=seed + 13 + 4 * step)
        else:
            negatives = chains.step(energy, n_steps=pcd_steps, step_size=pcd_step_size)
            walker_fraction.append(float((negatives[:, 0] > 0).double().mean()))
            loss = ebm.contrastive_loss(energy, data, negatives)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        thetas.append(energy.theta.item())
    return {"theta": thetas, "walker_fraction_b": walker_fraction}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--out", default="ebm_toy.png")
    args = parser.parse_args(argv)
    return report(args.steps, args.lr, args.out)


def report(steps: int = 400, lr: float = 0.1, out: str | None = "ebm_toy.png") -> int:
    """Run the four methods, print where each ends next to the predictions, and plot theta(t) to ``out``."""
    results = {m: run(m, steps, lr=lr) for m in METHODS}
    t_end = steps * lr
    predictions = {
        "maximum likelihood": (f"theta* = {THETA_STAR:.3f}", f"{THETA_STAR:.3f}"),
        "score matching": ("no learning: stays at theta(0)", f"{THETA_0:.3f}"),
        "NCE": (f"slide: {lecture_nce_fixed_point():.3f}", f"derived: {nce_fixed_point():.3f}"),
        "PCD": ("mode collapse: theta -> -infinity",
                f"theta(0) + (q(0) - q*) t = {THETA_0 + (q(THETA_0) - q(THETA_STAR)) * t_end:.3f}"),
    }
    print(f"theta* = {THETA_STAR:.3f} (q* = 0.8), theta(0) = {THETA_0}, NCE noise mu = {MU}, t = {t_end:g}")
    print(f"{'method':20s} {'theta(t)':>9s}   {'lecture':40s} {'here':s}")
    for m in METHODS:
        print(f"{m:20s} {results[m]['theta'][-1]:9.3f}   {predictions[m][0]:40s} {predictions[m][1]}")
    fractions = results["PCD"]["walker_fraction_b"]
    print(f"PCD walkers in mode b: {fractions[0]:.3f} at the first update, {fractions[-1]:.3f} at the last "
          f"(q(theta(0)) = {q(THETA_0):.3f})")

    import matplotlib

    if out is None:
        return 0
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    times = [i * lr for i in range(steps + 1)]
    for m in METHODS:
        ax.plot(times, results[m]["theta"], label=m)
    ax.axhline(THETA_STAR, color="k", ls="--", lw=0.8, label="theta*")
    ax.axhline(nce_fixed_point(), color="C2", ls=":", lw=0.8, label="NCE fixed point (derived)")
    ax.set_xlabel("t (gradient-flow time)")
    ax.set_ylabel("theta")
    ax.set_title("Two-mode toy EBM: theta(t) under four training methods")
    ax.legend(fontsize=8)
    fig.savefig(out, dpi=90, bbox_inches="tight")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
