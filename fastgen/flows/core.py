"""The flow convention: transforms map data to the base space; a flow is a distribution."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.distributions import Distribution, constraints

from ..core.rng import resolve_seed


class Transform(nn.Module):
    """An invertible map from data to the base space.

    ``forward(x) -> (z, log_abs_det)``: z = f(x) and log|det df/dx| per sample, shape (B,).
    ``inverse(z) -> x``: f^{-1}(z).

    A transform with ``conditional = True`` takes a ``context`` (B, C) as a second argument of all three methods
    (conditional flows); a :class:`Flow` passes its context to those only."""

    conditional = False

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError(f"{type(self).__name__} must define forward(x) -> (z, log_abs_det)")

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must define inverse(z)")

    def inverse_and_log_det(self, z: torch.Tensor, *context) -> tuple[torch.Tensor, torch.Tensor]:
        """(x = f^{-1}(z), log|det df/dx| at x): the forward log-det, from the sampling direction. This default
        runs the forward on x; transforms whose inverse yields it (couplings, IAF) override it."""
        x = self.inverse(z, *context)
        return x, self(x, *context)[1]


def _with(t: Transform, context) -> tuple:
    return (context,) if t.conditional else ()


class Flow(nn.Module, Distribution):
    """The law of x = f^{-1}(z), z ~ base, for f the composition of ``transforms`` (applied in order to data):

        log p(x) = log p_base(f(x)) + sum_t log|det df_t/dx_t|.

    ``base`` defaults to the standard normal on ``event_shape`` (made on the data's device at each call).
    ``sample`` / ``rsample`` run the inverses on base draws (from torch's RNG, or ``generator``)."""

    arg_constraints: dict = {}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, transforms, base: Distribution | None = None, event_shape: tuple[int, ...] | None = None):
        nn.Module.__init__(self)
        self.transforms = nn.ModuleList(transforms)
        if base is None and event_shape is None:
            raise ValueError("give base or event_shape (the standard normal on it is the base)")
        self.base = base
        shape = tuple(base.event_shape) if base is not None else tuple(int(s) for s in event_shape)
        Distribution.__init__(self, batch_shape=torch.Size(), event_shape=torch.Size(shape), validate_args=False)

    def _check(self, x: torch.Tensor) -> torch.Tensor:
        n = len(self.event_shape)
        if not isinstance(x, torch.Tensor) or x.dim() != n + 1 or tuple(x.shape[1:]) != tuple(self.event_shape):
            raise ValueError(f"x must have shape (B, {', '.join(map(str, self.event_shape))}), got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        dtype = next((p.dtype for p in self.parameters() if p.is_floating_point()), None)
        if dtype is not None and x.dtype != dtype:  # as torch's layers, no silent cast; but say what to do
            raise TypeError(f"x must have the flow's parameter dtype {dtype}, got {x.dtype}: convert x "
                            f"(x.to({dtype})) or the flow (flow.to({x.dtype}))")
        if not bool(torch.isfinite(x).all()):  # (one host read per call: a NaN would otherwise come back as a density)
            raise ValueError("x must be finite: it has NaN or infinite values")
        return x

    def _base_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        if self.base is not None:
            return self.base.log_prob(z)
        dims = tuple(range(z.dim() - len(self.event_shape), z.dim()))
        size = math.prod(self.event_shape)
        return -0.5 * z.square().sum(dim=dims) - 0.5 * size * math.log(2 * math.pi)

    def _context(self, context, batch: int, device) -> torch.Tensor | None:
        """Context rows for a batch: None for an unconditional flow; (C,) (the same for every sample) or (batch, C)
        for a conditional one."""
        conditional = any(t.conditional for t in self.transforms)
        if context is None:
            if conditional:
                raise ValueError("this flow is conditional: give context, (C,) or (B, C)")
            return None
        if not conditional:
            raise ValueError("context given to a flow with no conditional transform")
        if not isinstance(context, torch.Tensor) or context.dim() not in (1, 2) or (
                context.dim() == 2 and context.shape[0] != batch):
            got = tuple(context.shape) if isinstance(context, torch.Tensor) else type(context).__name__
            raise ValueError(f"context must have shape (C,) or ({batch}, C), got {got}")
        context = context.to(device)
        return context.expand(batch, -1) if context.dim() == 1 else context

    def transform(self, x: torch.Tensor, context: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(z, log|det dz/dx|) of data x of shape (B, *event_shape)."""
        x = self._check(x)
        context = self._context(context, x.shape[0], x.device)
        total = x.new_zeros(x.shape[0])
        if x.shape[0] == 0:  # an empty batch maps to an empty batch
            return x.clone(), total
        for t in self.transforms:
            x, log_abs_det = t(x, *_with(t, context))
            total = total + log_abs_det
        return x, total

    def log_prob(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """log p(x) (log p(x | context) for a conditional flow), x of shape (B, *event_shape)."""
        z, log_abs_det = self.transform(x, context)
        return self._base_log_prob(z) + log_abs_det

    def _parameter_device(self) -> torch.device:
        return next((p.device for p in self.parameters()), torch.device("cpu"))

    def _base_draws(self, sample_shape, generator: torch.Generator | None, seed: int | None) -> torch.Tensor:
        """Base draws of shape sample_shape + event_shape (an int n means (n,))."""
        shape = torch.Size([sample_shape] if isinstance(sample_shape, int) else sample_shape)
        if seed is not None:
            if generator is not None:
                raise ValueError("give seed or generator, not both")
            generator = torch.Generator(self._parameter_device()).manual_seed(resolve_seed(seed))
        if self.base is not None:
            if generator is not None:
                raise ValueError("seed and generator are for the default standard-normal base; a custom base "
                                 "draws from torch's RNG")
            return self.base.rsample(shape)
        return torch.randn(shape + self.event_shape, device=self._parameter_device(), generator=generator)

    def rsample(self, sample_shape=torch.Size(), generator: torch.Generator | None = None,
                seed: int | None = None, context: torch.Tensor | None = None) -> torch.Tensor:
        """Reparametrized draws of shape sample_shape + event_shape (given ``context``, (C,) or one row per
        draw, for a conditional flow)."""
        z = self._base_draws(sample_shape, generator, seed)
        if z.numel() == 0:  # sample(0): no draws to map
            return z
        flat = z.reshape((-1,) + tuple(self.event_shape))
        return self.from_base(flat, context).reshape(z.shape)

    def from_base(self, z: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """x = f^{-1}(z) of base points z (B, *event_shape): the sampling map, for base draws of your own."""
        context = self._context(context, z.shape[0], z.device)
        for t in reversed(self.transforms):
            z = t.inverse(z, *_with(t, context))
        return z

    def sample(self, sample_shape=torch.Size(), generator: torch.Generator | None = None,
               seed: int | None = None, context: torch.Tensor | None = None) -> torch.Tensor:
        """Draws without a graph; ``sample(n, seed=0)`` is reproducible (the base's normals from torch's
        generator seeded with it)."""
        with torch.no_grad():
            return self.rsample(sample_shape, generator, seed, context)

    def rsample_and_log_prob(self, sample_shape=torch.Size(), generator: torch.Generator | None = None,
                             seed: int | None = None,
                             context: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x ~ the flow (reparametrized) and log p(x) = log p_base(z) + sum of the forward log-dets, taken on the
        sampling pass (``Transform.inverse_and_log_det``: one pass for couplings and IAF)."""
        z = self._base_draws(sample_shape, generator, seed)
        if z.numel() == 0:  # no draws: nothing to map, no densities
            return z, z.new_zeros(z.shape[:z.dim() - len(self.event_shape)])
        flat = z.reshape((-1,) + tuple(self.event_shape))
        context = self._context(context, flat.shape[0], flat.device)
        log_prob = self._base_log_prob(flat)
        for t in reversed(self.transforms):
            flat, log_abs_det = t.inverse_and_log_det(flat, *_with(t, context))
            log_prob = log_prob + log_abs_det
        return flat.reshape(z.shape), log_prob.reshape(z.shape[:z.dim() - len(self.event_shape)])

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """log p(x) (so a flow trains with ``-flow(x).mean()``)."""
        return self.log_prob(x, context)

    def __repr__(self) -> str:
        return nn.Module.__repr__(self)
