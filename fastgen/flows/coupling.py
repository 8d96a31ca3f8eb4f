"""Affine coupling flows (Dinh et al. 2017, RealNVP; Kingma & Dhariwal 2018, Glow), on the fused coupling op.

A coupling layer keeps the first part of each sample, x_a, and transforms the rest with a conditioner network
of x_a: (h, t) = net(x_a), z_b = x_b exp(s(h)) + t, log|det| = sum s(h). The arithmetic, its log-determinant and
its backward are one fused op each (:func:`fastgen.ops.affine_coupling`); the conditioner is any ``nn.Module``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..ops import affine_coupling
from ..ops.coupling import SCALES
from ..reference import coupling as reference
from .core import Flow, Transform


def mlp(features_in: int, features_out: int, hidden=(64, 64), zero_last: bool = True) -> nn.Sequential:
    """Linear-ReLU layers ``features_in -> hidden... -> features_out``; the last layer starts at zero (the
    coupling starts as the identity, as RealNVP and Glow initialize)."""
    sizes = [features_in, *hidden, features_out]
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    if zero_last:
        nn.init.zeros_(layers[-1].weight)
        nn.init.zeros_(layers[-1].bias)
    return nn.Sequential(*layers)


class AffineCoupling(Transform):
    """z = [x_a, x_b exp(s) + t] with (h, t) = conditioner(x_a), s = clamp tanh(h / clamp) (``scale=
    "soft_clamp"``, default: the scale stays in (e^-clamp, e^clamp)) or Glow's s = log sigmoid(h + 2)
    (``scale="sigmoid"``), log|det dz/dx| = sum s.

    Args:
        features: the event size D of (B, D) data.
        split: how many leading features pass unchanged (default D // 2); 1 <= split < D.
        conditioner: a module mapping (B, split) to (B, 2 (D - split)), the h half first; default a ReLU MLP
            with ``hidden`` widths whose last layer starts at zero (the layer starts as the identity).
    """

    def __init__(self, features: int, split: int | None = None, conditioner: nn.Module | None = None,
                 hidden=(64, 64), scale: str = "soft_clamp", clamp: float = 2.0):
        super().__init__()
        if isinstance(features, bool) or not isinstance(features, int) or features < 2:
            raise ValueError(f"features must be an int >= 2 (a coupling keeps some and transforms the rest), got "
                             f"{features!r}")
        split = features // 2 if split is None else split
        if isinstance(split, bool) or not isinstance(split, int) or not 1 <= split < features:
            raise ValueError(f"split must keep at least one feature and transform at least one: 1 <= split < "
                             f"{features}, got {split!r}")
        if scale not in SCALES:
            raise ValueError(f"scale must be one of {', '.join(SCALES)}, got {scale!r}")
        if isinstance(clamp, bool) or not isinstance(clamp, (int, float)) or not math.isfinite(clamp) or clamp <= 0:
            raise ValueError(f"clamp must be a finite number > 0, got {clamp!r}")
        self.features, self.split, self.scale, self.clamp = features, split, scale, float(clamp)
        self.conditioner = conditioner if conditioner is not None else mlp(split, 2 * (features - split), hidden)

    def _params(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.dim() != 2 or x.shape[1] != self.features:
            raise ValueError(f"x must have shape (B, {self.features}), got {tuple(x.shape)}")
        out = self.conditioner(x[:, :self.split])
        width = self.features - self.split
        if not isinstance(out, torch.Tensor) or out.shape != (x.shape[0], 2 * width):
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"conditioner must return (B, {2 * width}) (h then t for the {width} transformed "
                             f"features), got {got}")
        out = out.to(x.dtype)
        return out[:, :width].contiguous(), out[:, width:].contiguous()

    def _couple(self, x: torch.Tensor, inverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
        h, t = self._params(x)
        if x.dtype == torch.float64:  # the rule in float64 torch (gradcheck, exact checks); the op is float32/16
            return reference.affine_coupling(x, h, t, self.split, inverse, SCALES[self.scale], self.clamp)
        return affine_coupling(x, h, t, self.split, inverse=inverse, scale=self.scale, clamp=self.clamp)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._couple(x, False)

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        return self._couple(z, True)[0]

    def extra_repr(self) -> str:
        return f"features={self.features}, split={self.split}, scale={self.scale!r}, clamp={self.clamp}"


class Reverse(Transform):
    """Reverses the feature order (log|det| = 0): alternated with couplings, every feature gets transformed."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.flip(1), x.new_zeros(x.shape[0], dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        return z.flip(1)


class RealNVP(Flow):
    """RealNVP on (B, D) data: ``layers`` affine couplings, the feature order reversed between them, on a
    standard normal base. Options go to :class:`AffineCoupling` (hidden widths, scale, clamp)."""

    def __init__(self, features: int, layers: int = 8, hidden=(64, 64), scale: str = "soft_clamp",
                 clamp: float = 2.0):
        if isinstance(layers, bool) or not isinstance(layers, int) or layers < 1:
            raise ValueError(f"layers must be an int >= 1, got {layers!r}")
        transforms = []
        for i in range(layers):
            if i:
                transforms.append(Reverse())
            transforms.append(AffineCoupling(features, hidden=hidden, scale=scale, clamp=clamp))
        super().__init__(transforms, event_shape=(features,))
