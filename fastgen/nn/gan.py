"""GAN losses and penalties: functions a user drops into their own training loop.

One convention throughout: logits are the discriminator's raw outputs (any shape, one value per sample or
more); ``d_loss(real_logits, fake_logits, kind)`` is minimized by the discriminator and ``g_loss(fake_logits,
kind)`` by the generator, both means over every element. Kinds (D's loss / G's loss):

=================  ========================================  ===========================
kind               d_loss                                     g_loss
=================  ========================================  ===========================
"minimax"          -log D(x) - log(1 - D(G(z)))               log(1 - D(G(z)))
"non_saturating"   same as minimax                            -log D(G(z))
"least_squares"    (r - 1)^2 / 2 + f^2 / 2                    (f - 1)^2 / 2
"wasserstein"      f - r                                      -f
"hinge"            relu(1 - r) + relu(1 + f)                  -f
=================  ========================================  ===========================

with D = sigmoid(logit) (computed as softplus of the logits, stable for any value), r and f the real and
fake logits. Penalties on the discriminator's input gradient (:func:`gradient_penalty`): WGAN-GP, R1, R2 and
DRAGAN, their random interpolation weights drawn from fastgen's noise stream; :func:`clip_weights_` is the
original WGAN's weight clipping in one multi-tensor clamp.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F

from ..core.rng import resolve_seed
from ..ops import uniform

__all__ = ["KINDS", "PENALTIES", "clip_weights_", "d_loss", "g_loss", "gradient_penalty"]

KINDS = ("minimax", "non_saturating", "least_squares", "wasserstein", "hinge")
PENALTIES = ("wgan_gp", "r1", "r2", "dragan")


def _kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    return kind


def _logits(t, name: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor) or not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got "
                        f"{t.dtype if isinstance(t, torch.Tensor) else type(t).__name__}")
    if t.numel() == 0:
        raise ValueError(f"{name} must not be empty")
    return t


def d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor, kind: str = "non_saturating") -> torch.Tensor:
    """The discriminator's loss (see the module's table), a mean over the real and over the fake logits."""
    kind = _kind(kind)
    r, f = _logits(real_logits, "real_logits"), _logits(fake_logits, "fake_logits")
    if r.shape[1:] != f.shape[1:]:
        raise ValueError(f"real_logits and fake_logits must have the same shape after the batch dimension, got "
                         f"{tuple(r.shape)} and {tuple(f.shape)}")
    if kind in ("minimax", "non_saturating"):  # -log sigmoid(r) - log(1 - sigmoid(f))
        return F.softplus(-r).mean() + F.softplus(f).mean()
    if kind == "least_squares":
        return 0.5 * (r - 1).square().mean() + 0.5 * f.square().mean()
    if kind == "wasserstein":
        return f.mean() - r.mean()
    return F.relu(1 - r).mean() + F.relu(1 + f).mean()


def g_loss(fake_logits: torch.Tensor, kind: str = "non_saturating") -> torch.Tensor:
    """The generator's loss (see the module's table), a mean over the fake logits."""
    kind = _kind(kind)
    f = _logits(fake_logits, "fake_logits")
    if kind == "minimax":  # log(1 - sigmoid(f))
        return -F.softplus(f).mean()
    if kind == "non_saturating":  # -log sigmoid(f)
        return F.softplus(-f).mean()
    if kind == "least_squares":
        return 0.5 * (f - 1).square().mean()
    return -f.mean()


def _input_gradient_norms(discriminator: Callable, x: torch.Tensor) -> torch.Tensor:
    """|grad_x sum D(x)| per sample, with the graph kept so the penalty can be differentiated."""
    x = x.detach().requires_grad_(True) if not x.requires_grad else x
    out = discriminator(x)
    (grad,) = torch.autograd.grad(out.sum(), x, create_graph=True)
    return grad.reshape(grad.shape[0], -1).norm(dim=1)


def _uniform_like(n: int, ref: torch.Tensor, seed: int, offset: int) -> torch.Tensor:
    return uniform((n,), seed, offset, device=ref.device).to(ref.dtype)


def gradient_penalty(
    discriminator: Callable[[torch.Tensor], torch.Tensor],
    real: torch.Tensor,  # (B, ...) data
    fake: torch.Tensor | None = None,  # (B, ...) generator output (not needed by "r1" and "dragan")
    kind: str = "wgan_gp",
    *,
    target: float = 1.0,
    seed: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A penalty on the discriminator's input gradient g(x) = grad_x D(x), a mean over the batch:

    * ``"wgan_gp"`` (Gulrajani et al. 2017): (|g(x_hat)| - target)^2 at x_hat = e real + (1 - e) fake,
      e ~ U(0, 1) per sample;
    * ``"r1"`` / ``"r2"`` (Mescheder et al. 2018): |g(real)|^2 / |g(fake)|^2 (multiply by gamma / 2);
    * ``"dragan"`` (Kodali et al. 2017): (|g(x_hat)| - target)^2 at x_hat = real + a d, with
      d = 0.5 std(real) u, u ~ U(0, 1) elementwise and a ~ U(0, 1) per sample.

    Random numbers come from fastgen's noise stream keyed by ``seed`` (or one drawn from ``generator``,
    else torch's global RNG). The result is differentiable in the discriminator's parameters (and in
    ``fake``, ``real`` where they require grad): call ``backward`` on your loss plus weight * penalty."""
    if kind not in PENALTIES:
        raise ValueError(f"kind must be one of {', '.join(PENALTIES)}, got {kind!r}")
    if not isinstance(real, torch.Tensor) or not real.is_floating_point() or real.dim() < 1 or real.shape[0] == 0:
        raise ValueError("real must be a non-empty floating-point tensor of shape (B, ...)")
    if kind in ("wgan_gp", "r2"):
        if not isinstance(fake, torch.Tensor):
            raise ValueError(f"fake is required for kind={kind!r}")
        if fake.shape != real.shape or fake.dtype != real.dtype or fake.device != real.device:
            raise ValueError(f"fake must have the shape, dtype and device of real ({tuple(real.shape)} {real.dtype} "
                             f"on {real.device}), got {tuple(fake.shape)} {fake.dtype} on {fake.device}")
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not math.isfinite(target) or target < 0:
        raise ValueError(f"target must be a finite number >= 0, got {target!r}")
    if kind == "r1":
        return _input_gradient_norms(discriminator, real).square().mean()
    if kind == "r2":
        return _input_gradient_norms(discriminator, fake).square().mean()
    seed = resolve_seed(seed, generator)
    batch = real.shape[0]
    weight = _uniform_like(batch, real, seed, 0).view((batch,) + (1,) * (real.dim() - 1))
    if kind == "wgan_gp":
        x_hat = weight * real + (1 - weight) * fake
    else:
        spread = 0.5 * real.detach().std() * uniform(real.shape, seed, 4 * ((batch + 3) // 4), device=real.device)
        x_hat = real + weight * spread.to(real.dtype)
    return (_input_gradient_norms(discriminator, x_hat) - target).square().mean()


@torch.no_grad()
def clip_weights_(parameters: Iterable[torch.Tensor] | torch.nn.Module, clip: float) -> list[torch.Tensor]:
    """The original WGAN's weight clipping, w <- clamp(w, -clip, clip) for every parameter, in place, in one
    multi-tensor clamp. Returns the parameters."""
    if isinstance(clip, bool) or not isinstance(clip, (int, float)) or not math.isfinite(clip) or clip <= 0:
        raise ValueError(f"clip must be a finite number > 0, got {clip!r}")
    params = list(parameters.parameters() if isinstance(parameters, torch.nn.Module) else parameters)
    if params:
        torch._foreach_clamp_min_(params, -float(clip))
        torch._foreach_clamp_max_(params, float(clip))
    return params
