"""Coupling flows on the fused coupling ops: affine (Dinh et al. 2017, RealNVP; Kingma & Dhariwal 2018, Glow) and
rational-quadratic spline (Durkan et al. 2019, neural spline flows).

A coupling layer keeps the first part of each sample, x_a, and transforms the rest with a conditioner network
of x_a: affine, (h, t) = net(x_a), z_b = x_b exp(s(h)) + t, log|det| = sum s(h); spline, each element of x_b
through its own monotone spline whose parameters net(x_a) gives. The arithmetic, its log-determinant and its
backward are one fused op each (:func:`fastgen.ops.affine_coupling`, :func:`fastgen.ops.spline_coupling`); the
conditioner is any ``nn.Module``.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn

from ..ops import affine_coupling, spline_coupling
from ..ops.coupling import SCALES
from ..reference import coupling as reference
from .core import Flow, Transform


def mlp(features_in: int, features_out: int, hidden=(64, 64), zero_last: bool = True) -> nn.Sequential:
    """Linear-ReLU layers ``features_in -> hidden... -> features_out``; the last layer starts at zero (the
    coupling starts as the identity, as RealNVP and Glow initialize)."""
    sizes = [features_in, *hidden, features_out]
    layers = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    if zero_last:
        nn.init.zeros_(layers[-1].weight)
        nn.init.zeros_(layers[-1].bias)
    return nn.Sequential(*layers)


class Coupled(Transform):
    """A transform given by one method, ``_couple(v, inverse, context) -> (out, log|det d out / d v|)`` in either
    direction: forward, inverse and the sampling pass's forward log-det (minus the inverse's) all come from it."""

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self._couple(x, False, context)

    def inverse(self, z: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        return self._couple(z, True, context)[0]

    def inverse_and_log_det(self, z: torch.Tensor,
                            context: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        x, log_det = self._couple(z, True, context)
        return x, -log_det


def affine(x: torch.Tensor, h: torch.Tensor, t: torch.Tensor, split: int, inverse: bool, scale: str,
           clamp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`fastgen.ops.affine_coupling`, or its rule in float64 torch for float64 x (gradcheck, exact checks;
    the op takes float32/16 states)."""
    if x.dtype == torch.float64:
        return reference.affine_coupling(x, h, t, split, inverse, SCALES[scale], clamp)
    return affine_coupling(x, h, t, split, inverse=inverse, scale=scale, clamp=clamp)


def check_scale(scale, clamp) -> None:
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {', '.join(SCALES)}, got {scale!r}")
    if isinstance(clamp, bool) or not isinstance(clamp, (int, float)) or not math.isfinite(clamp) or clamp <= 0:
        raise ValueError(f"clamp must be a finite number > 0, got {clamp!r}")


def _check_split(features, split) -> int:
    if isinstance(features, bool) or not isinstance(features, int) or features < 2:
        raise ValueError(f"features must be an int >= 2 (a coupling keeps some and transforms the rest), got "
                         f"{features!r}")
    split = features // 2 if split is None else split
    if isinstance(split, bool) or not isinstance(split, int) or not 1 <= split < features:
        raise ValueError(f"split must keep at least one feature and transform at least one: 1 <= split < "
                         f"{features}, got {split!r}")
    return split


def check_context(layer, x: torch.Tensor, context) -> torch.Tensor | None:
    """context (B, context_features) for a conditional layer, None for the others; checked."""
    if layer.context_features == 0:
        if context is not None:
            raise ValueError(f"{type(layer).__name__} was built without context (context_features=0)")
        return None
    if not isinstance(context, torch.Tensor) or context.shape != (x.shape[0], layer.context_features):
        got = tuple(context.shape) if isinstance(context, torch.Tensor) else type(context).__name__
        raise ValueError(f"context must have shape ({x.shape[0]}, {layer.context_features}), got {got}")
    return context.to(x.dtype)


def check_context_features(context_features) -> int:
    if isinstance(context_features, bool) or not isinstance(context_features, int) or context_features < 0:
        raise ValueError(f"context_features must be an int >= 0, got {context_features!r}")
    return context_features


def _conditioned(layer, x: torch.Tensor, width: int, context=None) -> torch.Tensor:
    """The conditioner's output on the kept part of x (and the context, concatenated after it), checked to be
    (B, width), in x's dtype."""
    if x.dim() != 2 or x.shape[1] != layer.features:
        raise ValueError(f"x must have shape (B, {layer.features}), got {tuple(x.shape)}")
    context = check_context(layer, x, context)
    kept = x[:, :layer.split]
    out = layer.conditioner(kept if context is None else torch.cat([kept, context], dim=1))
    if not isinstance(out, torch.Tensor) or out.shape != (x.shape[0], width):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"conditioner must return (B, {width}) ({layer._layout}), got {got}")
    return out.to(x.dtype)


class AffineCoupling(Coupled):
    """z = [x_a, x_b exp(s) + t] with (h, t) = conditioner(x_a), s = clamp tanh(h / clamp) (``scale=
    "soft_clamp"``, default: the scale stays in (e^-clamp, e^clamp)) or Glow's s = log sigmoid(h + 2)
    (``scale="sigmoid"``), log|det dz/dx| = sum s.

    Args:
        features: the event size D of (B, D) data.
        split: how many leading features pass unchanged (default D // 2); 1 <= split < D.
        conditioner: a module mapping (B, split + context_features) to (B, 2 (D - split)), the h half first;
            default a ReLU MLP with ``hidden`` widths whose last layer starts at zero (the layer starts as the
            identity).
        context_features: C > 0 makes the layer conditional: every call takes a context (B, C), concatenated to
            the kept features as the conditioner's input.
    """

    def __init__(self, features: int, split: int | None = None, conditioner: nn.Module | None = None,
                 hidden=(64, 64), scale: str = "soft_clamp", clamp: float = 2.0, context_features: int = 0):
        super().__init__()
        split = _check_split(features, split)
        check_scale(scale, clamp)
        self.features, self.split, self.scale, self.clamp = features, split, scale, float(clamp)
        self.context_features = check_context_features(context_features)
        self.conditional = context_features > 0
        self.conditioner = conditioner if conditioner is not None else mlp(split + context_features,
                                                                           2 * (features - split), hidden)

    @property
    def _layout(self) -> str:
        return f"h then t for the {self.features - self.split} transformed features"

    def _couple(self, x: torch.Tensor, inverse: bool, context) -> tuple[torch.Tensor, torch.Tensor]:
        width = self.features - self.split
        out = _conditioned(self, x, 2 * width, context)
        h, t = out[:, :width], out[:, width:]  # views: the op reads rows of the conditioner output in place
        return affine(x, h, t, self.split, inverse, self.scale, self.clamp)

    def extra_repr(self) -> str:
        return f"features={self.features}, split={self.split}, scale={self.scale!r}, clamp={self.clamp}"


class SplineCoupling(Coupled):
    """Rational-quadratic spline coupling (Durkan et al. 2019): z = [x_a, spline(x_b; conditioner(x_a))], each
    transformed feature through its own monotone spline of ``bins`` bins on [-bound, bound], the identity outside
    (linear tails: finite for every input), log|det dz/dx| = sum of the splines' log-slopes. One fused op
    (:func:`fastgen.ops.spline_coupling`) forward, inverse and backward.

    Args:
        features: the event size D of (B, D) data.
        split: how many leading features pass unchanged (default D // 2); 1 <= split < D.
        conditioner: a module mapping (B, split + context_features) to (B, (D - split)(3 bins - 1)): per
            transformed feature, bins width logits, bins height logits, bins - 1 interior-derivative logits.
            Default a ReLU MLP with ``hidden`` widths, started at the identity map (zero weights; derivative biases
            log(e^(1 - min) - 1)).
        context_features: C > 0 makes the layer conditional (as :class:`AffineCoupling`).
    """

    def __init__(self, features: int, split: int | None = None, conditioner: nn.Module | None = None, *,
                 hidden=(64, 64), bins: int = 8, bound: float = 5.0, min_width: float = 1e-3,
                 min_height: float = 1e-3, min_derivative: float = 1e-3, context_features: int = 0):
        super().__init__()
        split = _check_split(features, split)
        self.context_features = check_context_features(context_features)
        self.conditional = context_features > 0
        if isinstance(bins, bool) or not isinstance(bins, int) or not 1 <= bins <= 64:
            raise ValueError(f"bins must be an int in [1, 64], got {bins!r}")
        if isinstance(bound, bool) or not isinstance(bound, (int, float)) or not math.isfinite(bound) or bound <= 0:
            raise ValueError(f"bound must be a finite number > 0, got {bound!r}")
        for name, v in (("min_width", min_width), ("min_height", min_height)):
            if not 0 <= v < 1 / bins:
                raise ValueError(f"{name} must be in [0, 1 / bins), got {v!r}")
        if not 0 <= min_derivative < 1:
            raise ValueError(f"min_derivative must be in [0, 1), got {min_derivative!r}")
        self.features, self.split, self.bins, self.bound = features, split, bins, float(bound)
        self.options = dict(min_width=float(min_width), min_height=float(min_height),
                            min_derivative=float(min_derivative))
        per = 3 * bins - 1
        if conditioner is None:
            conditioner = mlp(split + context_features, (features - split) * per, hidden)
            with torch.no_grad():  # derivative logits giving slope 1: the spline starts as the identity
                conditioner[-1].bias.view(features - split, per)[:, 2 * bins:] = math.log(math.expm1(
                    1 - min_derivative))
        self.conditioner = conditioner

    @property
    def _layout(self) -> str:
        return (f"{3 * self.bins - 1} spline parameters for each of the {self.features - self.split} transformed "
                f"features")

    def _couple(self, x: torch.Tensor, inverse: bool, context) -> tuple[torch.Tensor, torch.Tensor]:
        params = _conditioned(self, x, (self.features - self.split) * (3 * self.bins - 1), context)
        if x.dtype == torch.float64:  # the rule in float64 torch (gradcheck, exact checks); the op is float32/16
            o = self.options
            return reference.spline_coupling(x, params, self.split, self.bins, self.bound, inverse, o["min_width"],
                                             o["min_height"], o["min_derivative"])
        return spline_coupling(x, params, self.split, self.bins, bound=self.bound, inverse=inverse, **self.options)

    def extra_repr(self) -> str:
        return f"features={self.features}, split={self.split}, bins={self.bins}, bound={self.bound}"


class Reverse(Transform):
    """Reverses the feature order (log|det| = 0): alternated with couplings, every feature gets transformed."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.flip(1), x.new_zeros(x.shape[0], dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        return z.flip(1)

    def inverse_and_log_det(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self(z)


def alternating(make, layers: int) -> list[Transform]:
    """``layers`` transforms from ``make()``, the feature order reversed between them (so every feature gets
    transformed)."""
    if isinstance(layers, bool) or not isinstance(layers, int) or layers < 1:
        raise ValueError(f"layers must be an int >= 1, got {layers!r}")
    transforms = []
    for i in range(layers):
        if i:
            transforms.append(Reverse())
        transforms.append(make())
    return transforms


class RealNVP(Flow):
    """RealNVP on (B, D) data: ``layers`` affine couplings, the feature order reversed between them, on a
    standard normal base. Options go to :class:`AffineCoupling` (hidden widths, scale, clamp, context_features:
    a conditional flow, ``log_prob(x, context)``, ``sample(n, context=c)``)."""

    def __init__(self, features: int, layers: int = 8, hidden=(64, 64), scale: str = "soft_clamp",
                 clamp: float = 2.0, context_features: int = 0):
        super().__init__(alternating(lambda: AffineCoupling(features, hidden=hidden, scale=scale, clamp=clamp,
                                                            context_features=context_features), layers),
                         event_shape=(features,))


class NSF(Flow):
    """Neural spline flow (Durkan et al. 2019, coupling version) on (B, D) data: ``layers`` rational-quadratic
    spline couplings, the feature order reversed between them, on a standard normal base. Options go to
    :class:`SplineCoupling` (hidden widths, bins, bound, context_features)."""

    def __init__(self, features: int, layers: int = 4, hidden=(64, 64), bins: int = 8, bound: float = 5.0,
                 context_features: int = 0):
        super().__init__(alternating(lambda: SplineCoupling(features, hidden=hidden, bins=bins, bound=bound,
                                                            context_features=context_features), layers),
                         event_shape=(features,))
