"""Training energy-based models: negatives from fastgen's fused Langevin steps, and losses a user drops into
their own loop. An energy is a callable x -> U(x) of shape (B,), p(x) proportional to exp(-U(x)).

    buffer = fastgen.ebm.ReplayBuffer(10_000, (2,), reinit_prob=0.05, seed=0)
    for data in loader:
        x, index = buffer.sample(len(data))                       # from the buffer, 5% fresh noise
        x = fastgen.ebm.langevin_negatives(energy, x, n_steps=20, step_size=1e-2)
        buffer.write_(index, x)                                  # in place, on the device
        loss = fastgen.ebm.contrastive_loss(energy, data, x, regularization=0.1)
        optimizer.zero_grad(); loss.backward(); optimizer.step()

Negatives: :func:`langevin_negatives` (ULA from any start: CD-k from the data, short-run from noise),
:class:`PersistentChains` (PCD), :class:`ReplayBuffer` (Du & Mordatch 2019). Losses: :func:`contrastive_loss`
(the maximum-likelihood gradient E_data[grad U] - E_model[grad U] as a surrogate, with energy-magnitude
regularization), :func:`kl_loss` (improved CD's KL term through the last sampling step, Du et al. 2021),
:func:`nce_loss` (noise-contrastive estimation), :func:`dsm_loss` and :func:`ssm_loss` (denoising and sliced
score matching on energies).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..core.rng import MAX_SEED, reserve, resolve_seed
from ..diffusion import training
from ..ops import normal, uniform
from .langevin import langevin

__all__ = ["PersistentChains", "ReplayBuffer", "contrastive_loss", "dsm_loss", "kl_loss", "langevin_negatives",
           "nce_loss", "ssm_loss"]

Energy = Callable[[torch.Tensor], torch.Tensor]


def _energies(energy: Energy, x: torch.Tensor, name: str) -> torch.Tensor:
    u = energy(x)
    if not isinstance(u, torch.Tensor) or u.shape != (x.shape[0],):
        raise ValueError(f"energy must return shape ({x.shape[0]},) for {name} of shape {tuple(x.shape)}, got "
                         f"{tuple(u.shape) if isinstance(u, torch.Tensor) else type(u).__name__}")
    return u


def _same_event(a: torch.Tensor, b: torch.Tensor, a_name: str, b_name: str) -> None:
    if not isinstance(b, torch.Tensor) or a.shape[1:] != b.shape[1:] or a.device != b.device:
        raise ValueError(f"{b_name} must have the sample shape and device of {a_name} ({tuple(a.shape[1:])} on "
                         f"{a.device}), got {tuple(b.shape[1:]) if isinstance(b, torch.Tensor) else type(b).__name__}"
                         f"{'' if not isinstance(b, torch.Tensor) else ' on ' + str(b.device)}")


def langevin_negatives(energy: Energy, x0: torch.Tensor, *, n_steps: int, step_size, seed: int | None = None,
                       generator: torch.Generator | None = None, clamp=None, grad_clip=None) -> torch.Tensor:
    """``n_steps`` fused ULA steps x <- x - h grad U(x) + sqrt(2h) xi from ``x0`` (detached; x0 is not modified):
    CD-k when x0 is the data batch, short-run MCMC when x0 is noise. The energy's parameters get no gradient."""
    return langevin(x0.detach(), energy=energy, n_steps=n_steps, step_size=step_size, seed=seed,
                    generator=generator, clamp=clamp, grad_clip=grad_clip)


class PersistentChains:
    """Persistent contrastive divergence's walkers (Tieleman 2008): chains kept across training steps, each
    step continuing where the last ended. ``x`` lives on its device; ``state_dict`` saves it and the stream
    position, so a resumed run continues exactly."""

    def __init__(self, x0: torch.Tensor, *, seed: int | None = None, generator: torch.Generator | None = None):
        if not isinstance(x0, torch.Tensor) or x0.dim() < 1 or x0.shape[0] < 1:
            raise ValueError("x0 must be a tensor of shape (chains, ...)")
        self.x = x0.detach().clone()
        self.seed, self.calls = resolve_seed(seed, generator), 0

    def step(self, energy: Energy, *, n_steps: int, step_size, clamp=None, grad_clip=None) -> torch.Tensor:
        """Advance every chain by ``n_steps`` ULA steps; returns the chains (the state itself, detached)."""
        seed = (self.seed + self.calls * 0x9E3779B97F4A7C15) % MAX_SEED
        self.calls += 1
        self.x = langevin_negatives(energy, self.x, n_steps=n_steps, step_size=step_size, seed=seed, clamp=clamp,
                                    grad_clip=grad_clip)
        return self.x

    def state_dict(self) -> dict:
        return {"x": self.x.clone(), "seed": self.seed, "calls": self.calls}

    def load_state_dict(self, state: dict) -> None:
        x = state["x"]
        if not isinstance(x, torch.Tensor) or x.shape != self.x.shape or x.dtype != self.x.dtype:
            got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"state['x'] must hold chains like these, {self.x.dtype} {tuple(self.x.shape)}, got {got}")
        self.x, self.seed, self.calls = x.clone().to(self.x.device), int(state["seed"]), int(state["calls"])


class ReplayBuffer:
    """A replay buffer of negatives on the device (Du & Mordatch 2019): ``capacity`` samples of shape
    ``sample_shape``. ``sample(n)`` picks n indices uniformly (with replacement) and replaces each picked
    sample, with probability ``reinit_prob``, by a fresh one from ``init``: "uniform" (U(-1, 1)), "normal"
    (N(0, I)), or a callable n -> (n, *sample_shape). Indices and reinitialization decisions are uniforms from
    fastgen's noise stream (seed, and a position advanced per call); nothing is read back to the host.
    ``write_(index, x)`` stores the refined negatives in place. ``state_dict`` holds the samples, the stream
    position and the reinitialization count, so a run resumed from a checkpoint equals an uninterrupted one."""

    def __init__(self, capacity: int, sample_shape, *, reinit_prob: float = 0.05, init="uniform",
                 seed: int | None = None, generator: torch.Generator | None = None, device=None,
                 dtype: torch.dtype = torch.float32):
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity must be an int >= 1, got {capacity!r}")
        if isinstance(reinit_prob, bool) or not isinstance(reinit_prob, (int, float)) or not 0 <= reinit_prob <= 1:
            raise ValueError(f"reinit_prob must be a number in [0, 1], got {reinit_prob!r}")
        if not callable(init) and init not in ("uniform", "normal"):
            raise ValueError(f"init must be 'uniform', 'normal' or a callable n -> samples, got {init!r}")
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating-point dtype (the negatives' own), got {dtype}")
        self.capacity, self.sample_shape = capacity, tuple(int(s) for s in sample_shape)
        self.reinit_prob, self.init = float(reinit_prob), init
        self.seed, self.offset = resolve_seed(seed, generator), 0
        self.samples = torch.empty((capacity,) + self.sample_shape, device=device, dtype=dtype)
        self.samples.copy_(self._fresh(capacity))
        self.draws = torch.zeros((), dtype=torch.int64, device=self.samples.device)  # samples handed out
        self.reinits = torch.zeros((), dtype=torch.int64, device=self.samples.device)  # of which fresh

    def _positions(self, n: int) -> int:
        start, self.offset = self.offset, self.offset + reserve(n)
        return start

    def _fresh(self, n: int) -> torch.Tensor:
        shape = (n,) + self.sample_shape
        if callable(self.init):
            x = self.init(n)
            if not isinstance(x, torch.Tensor) or tuple(x.shape) != shape:
                raise ValueError(f"init must return a tensor of shape {shape}, got "
                                 f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
            return x.to(self.samples.device, self.samples.dtype)
        count = math.prod(shape)
        if self.init == "normal":
            x = normal(shape, self.seed, self._positions(count), device=self.samples.device)
        else:
            x = uniform(shape, self.seed, self._positions(count), device=self.samples.device) * 2 - 1
        return x.to(self.samples.dtype)

    def sample(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, index): n samples (a new tensor) and their buffer indices (int64, on the device)."""
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= self.capacity:
            raise ValueError(f"n must be an int in [1, capacity={self.capacity}] (a buffer smaller than the batch "
                             f"cannot serve it), got {n!r}")
        device = self.samples.device
        u = uniform((2, n), self.seed, self._positions(2 * n), device=device)
        index = (u[0] * self.capacity).long().clamp_(max=self.capacity - 1)
        x = self.samples.index_select(0, index)
        if self.reinit_prob > 0:
            fresh = u[1] < self.reinit_prob
            x = torch.where(fresh.view((n,) + (1,) * len(self.sample_shape)), self._fresh(n), x)
            self.reinits += fresh.sum()
        self.draws += n
        return x, index

    @torch.no_grad()
    def write_(self, index: torch.Tensor, x: torch.Tensor) -> ReplayBuffer:
        """samples[index] <- x, in place (the last write wins where an index repeats)."""
        if not isinstance(index, torch.Tensor) or index.dtype != torch.int64 or index.dim() != 1:
            raise ValueError("index must be the int64 index tensor that sample() returned")
        if not isinstance(x, torch.Tensor) or tuple(x.shape) != (index.shape[0],) + self.sample_shape:
            raise ValueError(f"x must have shape {(index.shape[0],) + self.sample_shape}, got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        self.samples.index_copy_(0, index.to(self.samples.device), x.detach().to(self.samples.dtype))
        return self

    def reinit_fraction(self) -> float:
        """Share of the samples handed out that were fresh (one host read)."""
        return float(self.reinits) / max(1, int(self.draws))

    def state_dict(self) -> dict:
        return {"samples": self.samples.clone(), "seed": self.seed, "offset": self.offset,
                "draws": self.draws.clone(), "reinits": self.reinits.clone()}

    def load_state_dict(self, state: dict) -> None:
        if tuple(state["samples"].shape) != (self.capacity,) + self.sample_shape:
            raise ValueError(f"state holds samples of shape {tuple(state['samples'].shape)}, this buffer "
                             f"{(self.capacity,) + self.sample_shape}")
        self.samples.copy_(state["samples"])
        self.seed, self.offset = int(state["seed"]), int(state["offset"])
        self.draws.copy_(state["draws"])
        self.reinits.copy_(state["reinits"])


def contrastive_loss(energy: Energy, data: torch.Tensor, negatives: torch.Tensor, *,
                     regularization: float = 0.0) -> torch.Tensor:
    """mean U(data) - mean U(negatives) [+ regularization (mean U(data)^2 + mean U(negatives)^2)].

    Its gradient in the energy's parameters is the maximum-likelihood gradient E_data[grad U] - E_model[grad U]
    when the negatives are model samples (they are detached here). The squared-energy term (Du & Mordatch
    2019) keeps energies near 0."""
    _same_event(data, negatives, "data", "negatives")
    if isinstance(regularization, bool) or not isinstance(regularization, (int, float)) or regularization < 0:
        raise ValueError(f"regularization must be a number >= 0, got {regularization!r}")
    u_data, u_neg = _energies(energy, data, "data"), _energies(energy, negatives.detach(), "negatives")
    loss = u_data.mean() - u_neg.mean()
    if regularization:
        loss = loss + regularization * (u_data.square().mean() + u_neg.square().mean())
    return loss


def kl_loss(energy: torch.nn.Module, x: torch.Tensor, *, step_size: float, seed: int | None = None) -> torch.Tensor:
    """Improved contrastive divergence's KL term (Du et al. 2021): one more Langevin step from the (detached)
    negatives x, x' = x - h grad U(x) + sqrt(2h) xi, kept differentiable in the parameters, then
    mean U_stop(x') with the energy's parameters held fixed. Its gradient moves the parameters so that the
    sampler's last step lowers the energy of its output (the gradient the usual loss drops)."""
    if not isinstance(energy, torch.nn.Module):
        raise TypeError("energy must be an nn.Module (its parameters are held fixed in the second evaluation)")
    h = float(step_size)
    if not h > 0:
        raise ValueError(f"step_size must be > 0, got {step_size!r}")
    xg = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(_energies(energy, xg, "x").sum(), xg, create_graph=True)
    xi = normal(x.shape, resolve_seed(seed), 0, device=x.device).to(x.dtype)
    x_next = xg - h * grad + math.sqrt(2 * h) * xi
    frozen = {name: p.detach() for name, p in energy.named_parameters()}
    return torch.func.functional_call(energy, frozen, (x_next,)).mean()


def nce_loss(energy: Energy, data: torch.Tensor, noise, *, n_noise: int | None = None, seed: int | None = None,
             noise_samples: torch.Tensor | None = None) -> torch.Tensor:
    """Noise-contrastive estimation (Gutmann & Hyvarinen 2010) with the classifier
    D(x) = exp(-U(x)) / (exp(-U(x)) + mu(x)) = sigmoid(-U(x) - log mu(x)):

        -mean log D(data) - mean log(1 - D(y)),   y ~ mu,

    ``noise`` has ``log_prob(x)`` (B,) and ``sample(n)`` (a torch distribution, a fastgen target, ...); pass
    ``noise_samples`` to reuse draws. The energy is unnormalized: NCE learns its normalization only if U has a
    free offset parameter."""
    if not hasattr(noise, "log_prob"):
        raise TypeError("noise must have log_prob(x) (and sample(n) unless noise_samples is given)")
    if noise_samples is None:
        n = data.shape[0] if n_noise is None else int(n_noise)
        try:
            noise_samples = noise.sample(n, seed=resolve_seed(seed))
        except TypeError:
            noise_samples = noise.sample((n,))
    _same_event(data, noise_samples, "data", "noise_samples")
    noise_samples = noise_samples.to(data.dtype)
    logit_data = -_energies(energy, data, "data") - noise.log_prob(data).to(data.dtype)
    logit_noise = -_energies(energy, noise_samples, "noise samples") - noise.log_prob(noise_samples).to(data.dtype)
    return torch.nn.functional.softplus(-logit_data).mean() + torch.nn.functional.softplus(logit_noise).mean()


def dsm_loss(energy: Energy, data: torch.Tensor, sigma: float, *, seed: int | None = None) -> torch.Tensor:
    """Denoising score matching on an energy (Vincent 2011), with the model's score -grad U by autograd:

        x~ = x + sigma z,   mean sigma^2 | -grad U(x~) + (x~ - x) / sigma^2 |^2 / 2   (z ~ N(0, I), stream)."""
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma!r}")
    z = normal(data.shape, resolve_seed(seed), 0, device=data.device).to(data.dtype)
    noisy = (data.detach() + sigma * z).requires_grad_(True)
    (grad,) = torch.autograd.grad(_energies(energy, noisy, "data").sum(), noisy, create_graph=True)
    return 0.5 * (sigma * -grad + z).square().reshape(data.shape[0], -1).sum(1).mean()


def ssm_loss(energy: Energy, data: torch.Tensor, *, probes: int = 1, noise: str = "rademacher",
             variance_reduced: bool = False, seed: int | None = None) -> torch.Tensor:
    """Sliced score matching on an energy: :func:`fastgen.training.ssm_loss` with the model's score -grad U(x) by
    autograd (so the loss back-propagates through a double backward of the energy)."""
    def score(x: torch.Tensor) -> torch.Tensor:
        return -torch.autograd.grad(_energies(energy, x, "data").sum(), x, create_graph=True)[0]

    return training.ssm_loss(score, data, probes=probes, noise=noise, variance_reduced=variance_reduced, seed=seed)
