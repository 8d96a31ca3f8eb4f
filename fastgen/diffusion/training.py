"""Training pieces for score and diffusion models: the denoising score-matching
loss with its weightings, sliced and implicit score matching, the DDPM epsilon
loss, and an exponential moving average of parameters updated in one
multi-tensor pass."""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch

from ..core.rng import reserve, resolve_seed
from ..flows.divergence import divergence_terms
from ..ops import ema_update_, probe
from ..ops._common import STATE_DTYPES
from .processes import SDE, DDPMSchedule


def _per_sample(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *[1] * (x.dim() - 1))


def dsm_loss(model, x0: torch.Tensor, sde: SDE, *, weighting: str = "sigma2", eps: float = 1e-5,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Denoising score matching (Song et al. 2021, eq. 7), averaged over the batch:

        t ~ U(eps, T), x_t = alpha(t) x0 + sigma(t) z,
        "sigma2":     lambda(t) = sigma^2:  | sigma s(x_t, t) + z |^2
        "likelihood": lambda(t) = g(t)^2:   g^2 | s(x_t, t) + z / sigma |^2

    model(x_t, t) returns the score; sums run over the non-batch dimensions.
    """
    if weighting not in ("sigma2", "likelihood"):
        raise ValueError(f"weighting must be 'sigma2' or 'likelihood', got {weighting!r}")
    batch = x0.shape[0]
    t = torch.rand(batch, generator=generator, dtype=torch.float64) * (sde.T - eps) + eps
    z = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
    alpha, sigma = (v.to(x0.device, x0.dtype) for v in sde.marginal(t))
    x_t = _per_sample(alpha, x0) * x0 + _per_sample(sigma, x0) * z
    score = model(x_t, t.to(x0.device, x0.dtype))
    if score.shape != x0.shape:
        raise ValueError(f"model must return a score of shape {tuple(x0.shape)}, got {tuple(score.shape)}")
    dims = tuple(range(1, x0.dim()))
    if weighting == "sigma2":
        losses = (_per_sample(sigma, x0) * score + z).square().sum(dims)
    else:
        g2 = sde.diffusion(t).square().to(x0.device, x0.dtype)
        losses = g2 * (score + z / _per_sample(sigma, x0)).square().sum(dims)
    return losses.mean()


def ssm_loss(score, x: torch.Tensor, *, probes: int = 1, noise: str = "rademacher", variance_reduced: bool = False,
             seed: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Sliced score matching (Song et al. 2019), averaged over the batch, for a score model ``score(x)``
    (B, ...) -> (B, ...) (wrap time-conditional models: ``lambda x: model(x, t)``):

        SSM:    E_v[ v^T (ds/dx) v + (v^T s)^2 / 2 ]
        SSM-VR: E_v[ v^T (ds/dx) v ] + |s|^2 / 2        (``variance_reduced=True``)

    with ``probes`` probes v per sample (``noise`` "rademacher" or "gaussian", E[v v^T] = I) from the noise
    stream at ``seed``: one vector-Jacobian product each, the product with v fused (:func:`fastgen.divergence`'s
    machinery). Equals, up to a constant in the model, the Fisher divergence E |s - grad log p|^2 / 2."""
    x = x.detach()
    seed = resolve_seed(seed, generator)
    s, trace, _ = divergence_terms(score, x, method="hutchinson", probes=probes, noise=noise, seed=seed,
                                   create_graph=True, frobenius=False)
    batch = x.shape[0]
    if variance_reduced:
        half_norm = 0.5 * s.square().reshape(batch, -1).sum(1)
    else:
        half_norm = 0.0
        for k in range(probes):
            v = probe(x.shape, seed, k * reserve(x.numel()), rademacher=noise == "rademacher", device=x.device,
                      dtype=s.dtype)
            half_norm = half_norm + 0.5 * (v * s).reshape(batch, -1).sum(1).square()
        half_norm = half_norm / probes
    return (trace + half_norm).mean()


def ism_loss(score, x: torch.Tensor) -> torch.Tensor:
    """Implicit score matching (Hyvarinen 2005) with the exact trace, for small D: E[ tr(ds/dx) + |s|^2 / 2 ]
    over the batch, for a score model ``score(x)`` on flat (B, D) data (D vector-Jacobian products)."""
    s, trace, _ = divergence_terms(score, x.detach(), method="exact", probes=1, noise="rademacher", seed=0,
                                   create_graph=True, frobenius=False)
    return (trace + 0.5 * s.square().sum(1)).mean()


def ddpm_loss(model, x0: torch.Tensor, schedule: DDPMSchedule, *,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """DDPM's simplified loss (Ho et al. 2020, eq. 14): t ~ U{0..N-1}, eps ~ N(0, I),
    | eps - eps_theta(sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, t) |^2, averaged over the batch."""
    batch = x0.shape[0]
    t = torch.randint(0, schedule.num_train_timesteps, (batch,), generator=generator)
    noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
    alpha, sigma = (v.to(x0.device, x0.dtype) for v in schedule.marginal(t))
    x_t = _per_sample(alpha, x0) * x0 + _per_sample(sigma, x0) * noise
    pred = model(x_t, t.to(x0.device))
    if pred.shape != x0.shape:
        raise ValueError(f"model must return eps of shape {tuple(x0.shape)}, got {tuple(pred.shape)}")
    return (pred - noise).square().sum(tuple(range(1, x0.dim()))).mean()


class EMA:
    """Exponential moving average of parameters: p_ema <- p_ema + (1 - decay) (p - p_ema), all tensors
    in one multi-tensor pass. With ``warmup``, the decay is min(decay, (1 + n) / (10 + n)) at update n."""

    def __init__(self, parameters: Iterable[torch.nn.Parameter], decay: float = 0.999, warmup: bool = True):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.parameters = [p for p in parameters if p.requires_grad]
        self.shadow = [p.detach().clone() for p in self.parameters]
        self.decay, self.warmup, self.updates = decay, warmup, 0

    @torch.no_grad()
    def update(self) -> None:
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates)) if self.warmup else self.decay
        groups: dict = {}  # the op takes one device and dtype per call
        for shadow, p in zip(self.shadow, self.parameters, strict=True):
            pair = groups.setdefault((shadow.device, shadow.dtype), ([], []))
            pair[0].append(shadow)
            pair[1].append(p.detach())
        for (_, dtype), (shadows, params) in groups.items():
            if dtype in STATE_DTYPES:
                ema_update_(shadows, params, decay)
            else:  # float64 and others: not a fused dtype
                torch._foreach_lerp_(shadows, params, 1.0 - decay)
        self.updates += 1

    def averaged(self, module: torch.nn.Module) -> torch.nn.Module:
        """A copy of `module` (the model whose parameters this EMA tracks) whose trainable parameters are the
        averages themselves (shared storage, no gradient): it follows every update() without a copy. The target
        network of consistency distillation, or the averaged model to sample from."""
        averaged = copy.deepcopy(module)
        params = [p for p in averaged.parameters() if p.requires_grad]
        if [p.shape for p in params] != [s.shape for s in self.shadow]:
            raise ValueError("module's trainable parameters must be the ones this EMA tracks (same shapes, order)")
        for p, s in zip(params, self.shadow, strict=True):
            p.requires_grad_(False)
            p.data = s
        return averaged

    @torch.no_grad()
    def copy_to(self, parameters: Iterable[torch.nn.Parameter] | None = None) -> None:
        """Write the averages into `parameters` (the tracked ones by default)."""
        targets = self.parameters if parameters is None else [p for p in parameters if p.requires_grad]
        torch._foreach_copy_(targets, self.shadow)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "shadow": [s.clone() for s in self.shadow]}

    def load_state_dict(self, state: dict) -> None:
        self.decay, self.updates = state["decay"], state["updates"]
        for s, v in zip(self.shadow, state["shadow"], strict=True):
            s.copy_(v)
