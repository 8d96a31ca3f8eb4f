"""Autoregressive flows (Germain et al. 2015, MADE; Papamakarios et al. 2017, MAF; Kingma et al. 2016, IAF) on the
fused affine coupling op.

A MADE network maps x to per-feature (h_i, t_i) that depend on x_<i only (masked weights), so the affine map
z_i = (x_i - t_i) exp(-s(h_i)) has a triangular Jacobian and log|det dz/dx| = -sum s. MAF uses it data to base:
the density is one pass, sampling D passes (feature i needs x_<i). IAF uses it base to data, x_i = z_i exp(s(h_i))
+ t_i with (h, t) from z: sampling is one pass and the density of a new x takes D. The elementwise map, its
log-det and backward are :func:`fastgen.ops.affine_coupling` with nothing kept (split 0).
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from .core import Flow, Transform
from .coupling import Coupled, affine, alternating, check_context, check_context_features, check_scale


class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a fixed 0/1 mask (out_features, in_features)."""

    def __init__(self, mask: torch.Tensor):
        super().__init__(mask.shape[1], mask.shape[0])
        self.register_buffer("mask", mask.to(self.weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight * self.mask, self.bias)


class MADE(nn.Module):
    """Masked autoencoder for distribution estimation: (B, D) -> (B, outputs D), output block p (features
    p D .. p D + D - 1) depending on x_<i for feature i (feature 0 on nothing but the biases). Hidden units get
    degrees 1..D-1 in turn; a unit of degree m sees inputs of degree <= m, an output of feature i (degree i + 1)
    units of degree <= i. ReLU between layers; the last layer starts at zero (the flow starts as the identity).
    With ``context_features`` C > 0, ``forward(x, context)`` adds an unmasked linear map of the context (B, C) to
    the first hidden layer (every output may depend on it)."""

    def __init__(self, features: int, hidden=(64, 64), outputs: int = 2, context_features: int = 0):
        super().__init__()
        self.context_features = check_context_features(context_features)
        if isinstance(features, bool) or not isinstance(features, int) or features < 1:
            raise ValueError(f"features must be an int >= 1, got {features!r}")
        if not hidden or any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in hidden):
            raise ValueError(f"hidden must be a non-empty sequence of positive ints, got {hidden!r}")
        self.features, self.outputs = features, outputs
        degrees = [torch.arange(1, features + 1)]
        for width in hidden:
            degrees.append(torch.arange(width) % max(1, features - 1) + 1)
        layers = []
        for before, after in itertools.pairwise(degrees):
            layers += [MaskedLinear((after[:, None] >= before[None, :]).float()), nn.ReLU()]
        out_degrees = torch.arange(1, features + 1).repeat(outputs)
        layers.append(MaskedLinear((out_degrees[:, None] > degrees[-1][None, :]).float()))
        nn.init.zeros_(layers[-1].weight)
        nn.init.zeros_(layers[-1].bias)
        self.net = nn.Sequential(*layers)
        self.context = nn.Linear(context_features, hidden[0], bias=False) if context_features else None

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.features:
            raise ValueError(f"x must have shape (B, {self.features}), got {tuple(x.shape)}")
        context = check_context(self, x, context)
        if context is None:
            return self.net(x)
        v = self.net[0](x) + self.context(context)
        return self.net[1:](v)


class _Autoregressive(Coupled):
    def __init__(self, features: int, hidden=(64, 64), scale: str = "soft_clamp", clamp: float = 2.0,
                 made: nn.Module | None = None, context_features: int = 0):
        super().__init__()
        check_scale(scale, clamp)
        self.features, self.scale, self.clamp = features, scale, float(clamp)
        self.context_features = check_context_features(context_features)
        self.conditional = context_features > 0
        self.made = made if made is not None else MADE(features, hidden, outputs=2, context_features=context_features)

    def _params(self, v: torch.Tensor, context) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.made(v) if context is None else self.made(v, context)
        if not isinstance(out, torch.Tensor) or out.shape != (v.shape[0], 2 * self.features):
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"made must return (B, {2 * self.features}) (h then t per feature), got {got}")
        out = out.to(v.dtype)
        return out[:, :self.features], out[:, self.features:]  # views, read in place by the op

    def _one_pass(self, v: torch.Tensor, inverse: bool, context) -> tuple[torch.Tensor, torch.Tensor]:
        """The map whose parameters come from its own input v."""
        h, t = self._params(v, context)
        return affine(v, h, t, 0, inverse, self.scale, self.clamp)

    def _solve(self, target: torch.Tensor, inverse: bool, context) -> tuple[torch.Tensor, torch.Tensor]:
        """The map whose parameters come from its output: D passes, feature i exact after pass i + 1."""
        out = torch.zeros_like(target)
        for _ in range(self.features):
            h, t = self._params(out, context)
            out, log_det = affine(target, h, t, 0, inverse, self.scale, self.clamp)
        return out, log_det

    def extra_repr(self) -> str:
        return f"features={self.features}, scale={self.scale!r}, clamp={self.clamp}"


class MaskedAutoregressive(_Autoregressive):
    """MAF's layer, the masked autoregressive transform, data to base: z = (x - t) exp(-s(h)), (h, t) = made(x),
    log|det| = -sum s.
    forward (density) is one pass of the MADE; inverse (sampling) takes D."""

    def _couple(self, v: torch.Tensor, inverse: bool, context) -> tuple[torch.Tensor, torch.Tensor]:
        return self._solve(v, False, context) if inverse else self._one_pass(v, True, context)


class InverseAutoregressive(_Autoregressive):
    """IAF's layer, the inverse autoregressive transform: base to data x = z exp(s(h)) + t, (h, t) = made(z) —
    sampling (inverse)
    is one pass of the MADE; forward (data to base, the density of a given x) takes D, log|det dz/dx| = -sum s."""

    def _couple(self, v: torch.Tensor, inverse: bool, context) -> tuple[torch.Tensor, torch.Tensor]:
        return self._one_pass(v, False, context) if inverse else self._solve(v, True, context)


def _stack(layer, features, layers, hidden, scale, clamp, context_features) -> list[Transform]:
    return alternating(lambda: layer(features, hidden, scale, clamp, context_features=context_features), layers)


class MAF(Flow):
    """Masked autoregressive flow on (B, D) data: ``layers`` :class:`MaskedAutoregressive` transforms, the
    feature order reversed between them, on a standard normal base. Density in one pass per layer, sampling in D."""

    def __init__(self, features: int, layers: int = 5, hidden=(64, 64), scale: str = "soft_clamp",
                 clamp: float = 2.0, context_features: int = 0):
        super().__init__(_stack(MaskedAutoregressive, features, layers, hidden, scale, clamp, context_features),
                         event_shape=(features,))


class IAF(Flow):
    """Inverse autoregressive flow on (B, D) data: ``layers`` :class:`InverseAutoregressive` transforms, the
    feature order reversed between them, on a standard normal base. Sampling (with ``rsample_and_log_prob``'s
    log-density of the draws) in one pass per layer; the density of a given x in D."""

    def __init__(self, features: int, layers: int = 5, hidden=(64, 64), scale: str = "soft_clamp",
                 clamp: float = 2.0, context_features: int = 0):
        super().__init__(_stack(InverseAutoregressive, features, layers, hidden, scale, clamp, context_features),
                         event_shape=(features,))
