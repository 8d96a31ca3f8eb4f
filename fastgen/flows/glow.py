"""Glow (Kingma & Dhariwal 2018) on (B, C, H, W) data: ActNorm, invertible 1x1 convolutions with the LU
parametrization, affine couplings over channels (the fused coupling op), squeeze and the multiscale split.

Every layer keeps the flow convention (forward: data to base, ``(z, log|det dz/dx|)``). The multiscale split
keeps each sample's shape: :class:`Split` runs its inner transforms on the first channels and passes the others to
the base (Glow's factored-out variables), through an optional learned prior: Glow's z_2 ~ N(mu(z_1), sigma(z_1))
is the affine coupling z_2 exp(s) + t with (s, t) from z_1, so the base stays the standard normal on the data's
own shape, with :class:`Squeeze` / :class:`Unsqueeze` trading space for channels around each level.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import ops
from ..reference import glow as reference
from .core import Flow, Transform
from .coupling import Coupled, affine, check_context, check_scale


def _zeros(x: torch.Tensor) -> torch.Tensor:
    return x.new_zeros(x.shape[0], dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)


def _params(x: torch.Tensor, *values: torch.Tensor) -> list[torch.Tensor]:
    """Per-channel parameters in the dtype the ops take (float32; float64 for the float64 rule)."""
    return [v.to(torch.float64 if x.dtype == torch.float64 else torch.float32) for v in values]


def _check_image(x: torch.Tensor, channels: int) -> None:
    if x.dim() != 4 or x.shape[1] != channels:
        raise ValueError(f"x must have shape (B, {channels}, H, W), got {tuple(x.shape)}")


class ActNorm(Transform):
    """z = x exp(log_scale) + bias per channel (dim 1; any trailing dims), log|det| = (elements per channel)
    sum log_scale, on the fused op (:func:`fastgen.ops.actnorm`). On its first forward call in training mode the
    parameters are set from that batch so that z has zero mean and unit variance per channel (data-dependent
    initialization)."""

    def __init__(self, channels: int):
        super().__init__()
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise ValueError(f"channels must be an int >= 1, got {channels!r}")
        self.channels = channels
        self.log_scale = nn.Parameter(torch.zeros(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("initialized", torch.tensor(False))

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() < 2 or x.shape[1] != self.channels:
            raise ValueError(f"x must have shape (B, {self.channels}, ...), got {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._check(x)
        if self.training and not bool(self.initialized):
            with torch.no_grad():
                flat = x.transpose(0, 1).reshape(self.channels, -1).to(self.log_scale.dtype)
                self.log_scale.copy_(-torch.log(flat.std(dim=1, unbiased=False) + 1e-6))
                self.bias.copy_(-flat.mean(dim=1) * self.log_scale.exp())
                self.initialized.fill_(True)
        return self._run(x.contiguous(), False)

    def _run(self, x: torch.Tensor, inverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
        log_scale, bias = _params(x, self.log_scale, self.bias)
        if x.dtype == torch.float64:
            return reference.actnorm(x, log_scale, bias, inverse)
        return ops.actnorm(x, log_scale, bias, inverse=inverse)

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        return self.inverse_and_log_det(z)[0]

    def inverse_and_log_det(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._check(z)
        x, log_det = self._run(z.contiguous(), True)
        return x, -log_det


class InvConv1x1LU(Transform):
    """z = W x at every pixel, W = P L (U + diag(sign exp(log_s))) with P a fixed permutation, L unit lower
    triangular, U strictly upper triangular (Kingma & Dhariwal 2018, LU parametrization): log|det| = H W sum
    log_s, no determinant computed; the product and log-det on the fused op (:func:`fastgen.ops.invconv1x1`), the
    inverse through W^-1 from triangular solves. Starts at a random rotation."""

    def __init__(self, channels: int, seed: int = 0):
        super().__init__()
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise ValueError(f"channels must be an int >= 1, got {channels!r}")
        self.channels = channels
        g = torch.Generator().manual_seed(seed)
        q = torch.linalg.qr(torch.randn(channels, channels, generator=g, dtype=torch.float64))[0]
        p, lower, upper = torch.linalg.lu(q)
        diag = torch.diagonal(upper)
        self.register_buffer("permutation", p.float())
        self.register_buffer("sign", torch.sign(diag).float())
        self.register_buffer("lower_mask", torch.tril(torch.ones(channels, channels), -1))
        self.lower = nn.Parameter(lower.float())
        self.upper = nn.Parameter(torch.triu(upper, 1).float())
        self.log_s = nn.Parameter(diag.abs().log().float())

    def weight(self) -> torch.Tensor:
        eye = torch.eye(self.channels, device=self.lower.device, dtype=self.lower.dtype)
        lower = self.lower * self.lower_mask + eye
        upper = self.upper * self.lower_mask.T + torch.diag(self.sign * self.log_s.exp())
        return self.permutation @ lower @ upper

    def inverse_weight(self) -> torch.Tensor:
        """W^-1 = (U + diag)^-1 L^-1 P^T by two triangular solves (in float64)."""
        eye = torch.eye(self.channels, dtype=torch.float64, device=self.lower.device)
        lower = (self.lower * self.lower_mask).double() + eye
        upper = (self.upper * self.lower_mask.T).double() + torch.diag((self.sign * self.log_s.exp()).double())
        inv_lower = torch.linalg.solve_triangular(lower, eye, upper=False, unitriangular=True)
        return torch.linalg.solve_triangular(upper, inv_lower, upper=True) @ self.permutation.double().T

    def _run(self, x: torch.Tensor, weight: torch.Tensor, log_s: torch.Tensor):
        _check_image(x, self.channels)
        weight, log_s = _params(x, weight, log_s)
        if x.dtype == torch.float64:
            return reference.invconv1x1(x, weight, log_s)
        return ops.invconv1x1(x.contiguous(), weight.contiguous(), log_s)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._run(x, self.weight(), self.log_s)

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        return self.inverse_and_log_det(z)[0]

    def inverse_and_log_det(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, log_det = self._run(z, self.inverse_weight(), -self.log_s)
        return x, -log_det


def _squeeze(x: torch.Tensor, inverse: bool, name: str) -> torch.Tensor:
    if inverse and (x.dim() != 4 or x.shape[1] % 4):
        raise ValueError(f"{name} must have shape (B, 4C, H, W), got {tuple(x.shape)}")
    if not inverse and (x.dim() != 4 or x.shape[2] % 2 or x.shape[3] % 2):
        raise ValueError(f"{name} must have shape (B, C, H, W) with H and W even, got {tuple(x.shape)}")
    if x.dtype == torch.float64:
        return reference.squeeze2d(x, inverse)
    return ops.squeeze2d(x, inverse=inverse)


class Squeeze(Transform):
    """(B, C, H, W) -> (B, 4C, H/2, W/2): each 2x2 block of pixels becomes 4 channels (log|det| = 0), channel 4c +
    2i + j holding pixel (2u + i, 2v + j) of channel c (:func:`fastgen.ops.squeeze2d`)."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _squeeze(x, False, "x"), _zeros(x)

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        return _squeeze(z, True, "z")

    def inverse_and_log_det(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inverse(z), _zeros(z)


class Unsqueeze(Squeeze):
    """The inverse of :class:`Squeeze`: (B, 4C, H, W) -> (B, C, 2H, 2W)."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _squeeze(x, True, "x"), _zeros(x)

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        return _squeeze(z, False, "z")


class Split(Transform):
    """Glow's multiscale split: ``transforms`` act on the first ``channels`` channels; the rest go to the base
    (factored out), through ``prior`` if given: a transform of the whole tensor that changes only the factored-out
    channels, given the others (:func:`gaussian_prior`: Glow's learned conditional Gaussian), applied before the inner
    transforms (it conditions on the kept channels as they enter the split)."""

    def __init__(self, channels: int, transforms, prior: Transform | None = None):
        super().__init__()
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise ValueError(f"channels must be an int >= 1, got {channels!r}")
        self.channels = channels
        self.transforms = nn.ModuleList(transforms)
        self.prior = prior

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() < 2 or x.shape[1] <= self.channels:
            raise ValueError(f"x must have more than {self.channels} channels (dim 1), got {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._check(x)
        total = _zeros(x)
        if self.prior is not None:
            x, total = self.prior(x)
        kept, rest = x[:, :self.channels], x[:, self.channels:]
        for t in self.transforms:
            kept, log_det = t(kept)
            total = total + log_det
        return torch.cat([kept, rest], dim=1), total

    def inverse_and_log_det(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._check(z)
        kept, rest = z[:, :self.channels], z[:, self.channels:]
        total = _zeros(z)
        for t in reversed(self.transforms):
            kept, log_det = t.inverse_and_log_det(kept)
            total = total + log_det
        x = torch.cat([kept, rest], dim=1)
        if self.prior is not None:
            x, log_det = self.prior.inverse_and_log_det(x)
            total = total + log_det
        return x, total

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        self._check(z)
        kept, rest = z[:, :self.channels], z[:, self.channels:]
        for t in reversed(self.transforms):
            kept = t.inverse(kept)
        x = torch.cat([kept, rest], dim=1)
        return x if self.prior is None else self.prior.inverse(x)


def conv_conditioner(channels_in: int, channels_out: int, hidden: int = 64) -> nn.Sequential:
    """Glow's coupling network: 3x3 conv, ReLU, 1x1 conv, ReLU, 3x3 conv started at zero (the layer starts as the
    identity)."""
    last = nn.Conv2d(hidden, channels_out, 3, padding=1)
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    return nn.Sequential(nn.Conv2d(channels_in, hidden, 3, padding=1), nn.ReLU(), nn.Conv2d(hidden, hidden, 1),
                         nn.ReLU(), last)


class ChannelCoupling(Coupled):
    """Affine coupling over channels of (B, C, H, W): the first ``kept`` channels (C // 2 by default) pass, (h, t)
    = conditioner(x_a) as (B, 2 (C - kept), H, W), h first; z_b = x_b exp(s(h)) + t on the fused op. Glow's
    sigmoid scale by default."""

    def __init__(self, channels: int, conditioner: nn.Module | None = None, hidden: int = 64,
                 scale: str = "sigmoid", clamp: float = 2.0, kept: int | None = None):
        super().__init__()
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 2:
            raise ValueError(f"channels must be an int >= 2, got {channels!r}")
        kept = channels // 2 if kept is None else kept
        if isinstance(kept, bool) or not isinstance(kept, int) or not 1 <= kept < channels:
            raise ValueError(f"kept must be an int in [1, {channels - 1}], got {kept!r}")
        check_scale(scale, clamp)
        self.channels, self.kept, self.scale, self.clamp = channels, kept, scale, float(clamp)
        moved = channels - self.kept
        self.conditioner = conditioner if conditioner is not None else conv_conditioner(self.kept, 2 * moved, hidden)

    context_features = 0

    def _couple(self, x: torch.Tensor, inverse: bool, context=None) -> tuple[torch.Tensor, torch.Tensor]:
        _check_image(x, self.channels)
        check_context(self, x, context)
        moved = self.channels - self.kept
        out = self.conditioner(x[:, :self.kept])
        if not isinstance(out, torch.Tensor) or out.shape != (x.shape[0], 2 * moved) + tuple(x.shape[2:]):
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"conditioner must return (B, {2 * moved}, H, W) (h then t), got {got}")
        out = out.to(x.dtype)
        h, t = out[:, :moved], out[:, moved:]  # views, read in place by the op
        return affine(x.contiguous(), h, t, self.kept * x.shape[2] * x.shape[3], inverse, self.scale, self.clamp)



def gaussian_prior(channels: int, kept: int, clamp: float = 5.0) -> ChannelCoupling:
    """Glow's learned prior of the factored-out channels of a split, z_b ~ N(mu(z_a), sigma(z_a)^2), as the
    coupling z_b exp(s) + t to the standard normal (mu = -t exp(-s), sigma = exp(-s)) with (h, t) from one 3x3
    convolution of the kept channels started at zero (the standard normal) and s = clamp tanh(h / clamp): sigma
    in (e^-clamp, e^clamp)."""
    conv = nn.Conv2d(kept, 2 * (channels - kept), 3, padding=1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return ChannelCoupling(channels, conditioner=conv, scale="soft_clamp", clamp=clamp, kept=kept)


def glow_step(channels: int, hidden: int = 64, seed: int = 0) -> list[Transform]:
    """One step of flow: ActNorm, invertible 1x1 convolution, affine coupling."""
    return [ActNorm(channels), InvConv1x1LU(channels, seed=seed), ChannelCoupling(channels, hidden=hidden)]


class Glow(Flow):
    """Glow on (C, H, W) data: ``levels`` levels, each a squeeze, ``depth`` steps of flow (ActNorm, 1x1
    convolution, channel coupling) and, but for the last, a split whose first half goes on to the next level (the
    other half factored out, through Glow's learned prior, :func:`gaussian_prior`; with ``learned_prior=False``
    a standard normal); then the unsqueeze back. H and W must be divisible by 2^levels."""

    def __init__(self, shape, levels: int = 2, depth: int = 4, hidden: int = 64, learned_prior: bool = True):
        shape = tuple(int(s) for s in shape)
        if len(shape) != 3:
            raise ValueError(f"shape must be (C, H, W), got {shape}")
        if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
            raise ValueError(f"levels must be an int >= 1, got {levels!r}")
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
            raise ValueError(f"depth must be an int >= 1, got {depth!r}")
        c, h, w = shape
        if h % 2 ** levels or w % 2 ** levels:
            raise ValueError(f"H and W must be divisible by 2^levels = {2 ** levels}, got shape {shape}")

        def level(channels: int, index: int) -> list[Transform]:
            channels *= 4
            steps = [t for k in range(depth) for t in glow_step(channels, hidden, seed=index * depth + k)]
            if index + 1 < levels:
                prior = gaussian_prior(channels, channels // 2) if learned_prior else None
                steps.append(Split(channels // 2, level(channels // 2, index + 1), prior=prior))
            return [Squeeze(), *steps, Unsqueeze()]

        super().__init__(level(c, 0), event_shape=shape)
        self.levels, self.depth = levels, depth
