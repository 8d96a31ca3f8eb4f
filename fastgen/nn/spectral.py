"""Spectral normalization on the grouped power-iteration op (``fastgen.ops.spectral_norm_power``).

* :func:`spectral_norm` is a drop-in for ``torch.nn.utils.parametrizations.spectral_norm``: the same
  parametrization (``module.parametrizations.weight.original`` and the buffers ``_u``, ``_v``), the same
  initialization from the global RNG, one power-iteration step per access in training and none in eval,
  so state dicts load into and from torch's and results agree given the same u and v.
* :class:`SpectralNorm` normalizes every Linear/Conv layer of a model at once: one grouped op per forward
  of the model runs the power iteration of every layer, and each layer reads its sigma from that result.
  An optional Lipschitz coefficient c gives W min(1, c / sigma) (residual flows), instead of W / sigma.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from ..ops import spectral_norm_power

__all__ = ["SpectralNorm", "spectral_norm"]

_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
LAYERS = (nn.Linear, nn.Bilinear, nn.Conv1d, nn.Conv2d, nn.Conv3d) + _TRANSPOSED


def _checked_dim(weight: torch.Tensor, dim: int) -> int:
    ndim = weight.ndim
    if isinstance(dim, bool) or not isinstance(dim, int) or not -ndim <= dim < ndim:
        raise IndexError(f"dim must be in [-{ndim}, {ndim - 1}] for a weight of shape {tuple(weight.shape)}, "
                         f"got {dim!r}")
    return dim % ndim


def _checked_lipschitz(lipschitz) -> float | None:
    if lipschitz is None:
        return None
    if isinstance(lipschitz, bool) or not isinstance(lipschitz, (int, float)) or not 0 < lipschitz <= 1:
        raise ValueError(f"lipschitz must be a number in (0, 1], got {lipschitz!r}")
    return float(lipschitz)


class _SpectralNorm(nn.Module):
    """The parametrization W -> W / sigma(W) (or W min(1, c / sigma)), sigma by power iteration on the
    matrix of W (``dim`` first, the rest flattened). Buffers and initialization are torch's."""

    def __init__(self, weight: torch.Tensor, n_power_iterations: int = 1, dim: int = 0, eps: float = 1e-12,
                 lipschitz: float | None = None):
        super().__init__()
        if isinstance(n_power_iterations, bool) or not isinstance(n_power_iterations, int) or n_power_iterations <= 0:
            raise ValueError(f"n_power_iterations must be a positive int, got {n_power_iterations!r}")
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps <= 0:
            raise ValueError(f"eps must be a finite number > 0, got {eps!r}")
        self.dim = _checked_dim(weight, dim)
        self.eps = float(eps)
        self.lipschitz = _checked_lipschitz(lipschitz)
        self.group: SpectralNorm | None = None  # set when a SpectralNorm owns this layer
        if weight.ndim > 1:
            self.n_power_iterations = n_power_iterations
            matrix = self.matrix(weight.detach())
            h, w = matrix.shape
            u = matrix.new_empty(h).normal_(0, 1)  # the draws of torch's parametrization, in its order
            v = matrix.new_empty(w).normal_(0, 1)
            self.register_buffer("_u", F.normalize(u, dim=0, eps=self.eps))
            self.register_buffer("_v", F.normalize(v, dim=0, eps=self.eps))
            with torch.no_grad():
                self.step([matrix], [self], 15)

    def matrix(self, weight: torch.Tensor) -> torch.Tensor:
        """W as the (h, w) matrix whose top singular value is normalized (torch's reshape), contiguous."""
        if self.dim != 0:
            weight = weight.permute(self.dim, *(d for d in range(weight.dim()) if d != self.dim))
        return weight.flatten(1).contiguous()

    @staticmethod
    def step(matrices, layers, iterations: int) -> torch.Tensor:
        """sigma of every matrix after `iterations` power-iteration steps (one op), u and v updated in place."""
        first = layers[0]
        sigmas, us, vs = spectral_norm_power(matrices, [layer._u for layer in layers], [layer._v for layer in layers],
                                             iterations, first.eps)
        if iterations:
            with torch.no_grad():
                torch._foreach_copy_([layer._u for layer in layers], us)
                torch._foreach_copy_([layer._v for layer in layers], vs)
        return sigmas

    def sigma(self, weight: torch.Tensor) -> torch.Tensor:
        cached = self.group.cached(self) if self.group is not None else None
        if cached is not None:
            return cached
        return self.step([self.matrix(weight)], [self], self.n_power_iterations if self.training else 0)[0]

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if weight.ndim == 1:
            return F.normalize(weight, dim=0, eps=self.eps)
        if self.group is not None and self.group.raw_weight(self):
            return weight
        return weight / _divisor(self.sigma(weight).to(weight.dtype), self.lipschitz)

    def right_inverse(self, value: torch.Tensor) -> torch.Tensor:
        return value

    def extra_repr(self) -> str:
        lipschitz = "" if self.lipschitz is None else f", lipschitz={self.lipschitz}"
        return f"dim={self.dim}, eps={self.eps}{lipschitz}"


def _divisor(sigma: torch.Tensor, lipschitz: float | None) -> torch.Tensor:
    """sigma, or max(1, sigma / c) with a Lipschitz coefficient c: W / divisor = W min(1, c / sigma)."""
    return sigma if lipschitz is None else torch.clamp(sigma / lipschitz, min=1.0)


def spectral_norm(module: nn.Module, name: str = "weight", n_power_iterations: int = 1, eps: float = 1e-12,
                  dim: int | None = None) -> nn.Module:
    """Drop-in for ``torch.nn.utils.parametrizations.spectral_norm``: registers the parametrization

        W -> W / sigma,   sigma = u^T W v after ``n_power_iterations`` steps of
        u <- W v / max(|W v|, eps),  v <- W^T u / max(|W^T u|, eps)   (training; none in eval)

    on ``module.<name>``, with W seen as a matrix with ``dim`` first (default 0, 1 for transposed
    convolutions). Same buffers, state dict and gradients (u, v held constant) as torch's; the power
    iteration is fastgen's op. Returns ``module``."""
    weight = getattr(module, name, None)
    if not isinstance(weight, torch.Tensor):
        raise ValueError(f"module {type(module).__name__} has no parameter or buffer named {name!r}")
    if dim is None:
        dim = 1 if isinstance(module, _TRANSPOSED) else 0
    parametrize.register_parametrization(module, name, _SpectralNorm(weight, n_power_iterations, dim, eps))
    return module


class SpectralNorm:
    """Spectral normalization of every Linear/Conv layer of a model, with one grouped power iteration per
    forward of the model.

        group = SpectralNorm.apply(discriminator)              # W -> W / sigma on every layer
        group = SpectralNorm.apply(block, lipschitz=0.9)       # W -> W min(1, 0.9 / sigma)

    Each layer gets the parametrization of :func:`spectral_norm` (same state dict keys as torch's). A
    forward pre-hook on the model computes every layer's sigma in one op (one power-iteration step per
    layer in training, none in eval). During that forward a layer whose input has fewer elements than its
    weight (a Linear layer at a batch below its width) runs on its raw weight W and an input scaled by
    s = 1 / sigma (or min(1, c / sigma)): a linear layer gives F(s x, W) = F(x, s W), and scaling the input
    costs a pass over the activations instead of a new copy of the weight; other layers (convolutions, whose
    activations outweigh their weights) read W / sigma. This assumes that each normalized weight is used by its own
    module's forward only; with tied weights pass ``scale_inputs=False`` (the layers then read W / sigma, as
    :func:`spectral_norm` makes them).
    A weight read outside the model's forward (``layer.weight``) is W / sigma as in :func:`spectral_norm`.
    ``group.sigmas()`` returns the current estimates; ``group.remove()`` takes the normalization away,
    keeping the current normalized weights."""

    def __init__(self, model: nn.Module, layers: list[_SpectralNorm], modules: list[nn.Module], scale_inputs: bool):
        self.model, self.layers, self.modules, self.scale_inputs = model, layers, modules, scale_inputs
        self._sigma: dict[int, torch.Tensor] | None = None  # id(layer) -> sigma, during a forward of the model
        self._scale: dict[int, torch.Tensor] = {}  # id(layer) -> 1 / divisor, during a forward of the model
        self._raw: set[int] = set()  # layers running on their raw weight and a scaled input right now
        self._frozen = False
        self._hooks = [model.register_forward_pre_hook(self._begin),
                       model.register_forward_hook(self._end, always_call=True)]
        if scale_inputs:
            for layer, module in zip(layers, modules, strict=True):
                self._hooks.append(module.register_forward_pre_hook(self._scaled_input(layer, module)))

    @classmethod
    def apply(cls, model: nn.Module, *, n_power_iterations: int = 1, eps: float = 1e-12,
              lipschitz: float | None = None, layers: tuple[type, ...] = LAYERS,
              scale_inputs: bool = True) -> SpectralNorm:
        """Normalize the ``weight`` of every submodule of ``model`` that is an instance of ``layers`` (and
        not normalized already). Returns the group (its hooks live on ``model``)."""
        lipschitz = _checked_lipschitz(lipschitz)
        chosen, modules = [], []
        for module in model.modules():
            if not isinstance(module, layers) or parametrize.is_parametrized(module, "weight"):
                continue
            weight = getattr(module, "weight", None)
            if not isinstance(weight, torch.Tensor) or weight.ndim < 2:
                continue
            dim = 1 if isinstance(module, _TRANSPOSED) else 0
            layer = _SpectralNorm(weight, n_power_iterations, dim, eps, lipschitz)
            parametrize.register_parametrization(module, "weight", layer)
            chosen.append(layer)
            modules.append(module)
        if not chosen:
            kinds = ", ".join(t.__name__ for t in layers)
            if any(isinstance(m, layers) and parametrize.is_parametrized(m, "weight") for m in model.modules()):
                raise ValueError(f"model's layers of type {kinds} are spectrally normalized already (SpectralNorm."
                                 "apply or spectral_norm was applied to it): remove() the group first")
            raise ValueError(f"model has no layer of type {kinds} with a matrix weight")
        group = cls(model, chosen, modules, bool(scale_inputs))
        for layer in chosen:
            layer.group = group
        return group

    def _begin(self, model, args) -> None:
        self._sigma = None
        sigma = self.sigmas(step=model.training and not self._frozen)
        if self.scale_inputs:
            self._scale = {id(layer): 1.0 / _divisor(sigma[id(layer)], layer.lipschitz) for layer in self.layers}
        self._sigma = sigma

    @contextlib.contextmanager
    def frozen(self):
        """Within this context the model's forwards run no power iteration (sigma at the current u, v, as in
        eval mode) while the model stays in training mode: the normalized map stays fixed (fixed-point
        inverses of residual flows iterate it)."""
        previous, self._frozen = self._frozen, True
        try:
            yield self
        finally:
            self._frozen = previous

    def _end(self, model, args, output) -> None:
        self._sigma, self._scale = None, {}
        self._raw.clear()

    def _scaled_input(self, layer: _SpectralNorm, module: nn.Module):
        def hook(module_, args):
            scale = self._scale.get(id(layer))
            self._raw.discard(id(layer))
            if scale is None or args[0].numel() > module.parametrizations.weight.original.numel():
                return None  # a larger input than weight (convolutions): the layer reads W / sigma
            self._raw.add(id(layer))
            return (args[0] * scale,) + tuple(args[1:])

        return hook

    def raw_weight(self, layer: _SpectralNorm) -> bool:
        """Whether `layer` reads its raw weight now (its input is scaled instead)."""
        return id(layer) in self._raw

    def cached(self, layer: _SpectralNorm) -> torch.Tensor | None:
        return None if self._sigma is None else self._sigma.get(id(layer))

    def sigmas(self, step: bool = False) -> dict[int, torch.Tensor]:
        """sigma (float32, 0-d) of every layer by ``id`` of its parametrization, one op per (device, dtype);
        with ``step``, after the layers' ``n_power_iterations`` power-iteration steps."""
        groups: dict[tuple, list[int]] = {}
        for i, (layer, module) in enumerate(zip(self.layers, self.modules, strict=True)):
            weight = module.parametrizations.weight.original
            key = (weight.device, weight.dtype, layer.eps, layer.n_power_iterations if step else 0)
            groups.setdefault(key, []).append(i)
        result = {}
        for (_, _, _, iterations), members in groups.items():
            layers = [self.layers[i] for i in members]
            matrices = [layer.matrix(self.modules[i].parametrizations.weight.original)
                        for i, layer in zip(members, layers, strict=True)]
            for layer, sigma in zip(layers, _SpectralNorm.step(matrices, layers, iterations).unbind(), strict=True):
                result[id(layer)] = sigma
        return result

    def remove(self) -> None:
        """Remove the hooks and the parametrizations; each layer keeps its current normalized weight."""
        for hook in self._hooks:
            hook.remove()
        for layer in self.layers:
            layer.group = None
        for module in self.modules:
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
