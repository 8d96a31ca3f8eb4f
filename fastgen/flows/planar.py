"""Planar and radial flows (Rezende & Mohamed 2015) and Sylvester flows (van den Berg et al. 2018).

Each is defined, as in those papers, by its base-to-data map g (the sampling direction, :meth:`inverse` here) with
a closed-form log-determinant; the data-to-base direction (:meth:`forward`, the density of a given x) inverts g:
radial in closed form, planar and Sylvester by solving monotone scalar equations (bisection to machine precision,
then one Newton step that carries the gradient of the implicit solution). Invertibility comes from the
reparametrizations of the papers (on by default): planar w.u >= -1, radial beta >= -alpha, Sylvester
r_ii r~_ii >= -1 with tanh."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.functional import softplus

from .core import Transform

BISECTIONS = 64  # halvings of an initial bracket of width <= 2 |scale|: below float64 resolution


def _solve_monotone(f, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """The root of an increasing f in [lo, hi], elementwise, by bisection (no graph)."""
    with torch.no_grad():
        lo, hi = lo.detach().clone(), hi.detach().clone()
        for _ in range(BISECTIONS):
            mid = 0.5 * (lo + hi)
            above = f(mid) > 0
            hi = torch.where(above, mid, hi)
            lo = torch.where(above, lo, mid)
        return 0.5 * (lo + hi)


def _check_features(features) -> None:
    if isinstance(features, bool) or not isinstance(features, int) or features < 1:
        raise ValueError(f"features must be an int >= 1, got {features!r}")


def _check_x(x: torch.Tensor, features: int) -> None:
    if x.dim() != 2 or x.shape[1] != features:
        raise ValueError(f"x must have shape (B, {features}), got {tuple(x.shape)}")


class Planar(Transform):
    """g(z) = z + u tanh(w.z + b), log|det dg/dz| = log|1 + (1 - tanh^2(w.z + b)) w.u|.

    With ``reparametrize=True`` (default) u is replaced by u + (m(w.u) - w.u) w / |w|^2, m(a) = -1 + softplus(a),
    so that w.u > -1 and g is invertible; without it, parameters with w.u < -1 are an error at call time."""

    def __init__(self, features: int, reparametrize: bool = True):
        super().__init__()
        _check_features(features)
        self.features, self.reparametrize = features, reparametrize
        self.w = nn.Parameter(torch.randn(features) * 0.1)
        self.u = nn.Parameter(torch.randn(features) * 0.1)
        self.b = nn.Parameter(torch.zeros(()))

    def _u(self) -> torch.Tensor:
        wu = self.w @ self.u
        if self.reparametrize:
            return self.u + (-1 + softplus(wu) - wu) * self.w / self.w.square().sum().clamp_min(1e-30)
        if bool(wu < -1):
            raise ValueError(f"planar parameters are not invertible: w.u = {float(wu):.4g} < -1 (use "
                             f"reparametrize=True)")
        return self.u

    def inverse_and_log_det(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _check_x(z, self.features)
        u, w, b = self._u().to(z.dtype), self.w.to(z.dtype), self.b.to(z.dtype)
        th = torch.tanh(z @ w + b)
        return z + th[:, None] * u, -torch.log((1 + (1 - th * th) * (w @ u)).abs())

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        return self.inverse_and_log_det(z)[0]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z with g(z) = x: a = w.z + b solves a + (w.u) tanh(a) = w.x + b (increasing in a), z = x - u tanh(a)."""
        _check_x(x, self.features)
        u, w, b = self._u().to(x.dtype), self.w.to(x.dtype), self.b.to(x.dtype)
        c, wu = x @ w + b, w @ u
        a = _solve_monotone(lambda v: v + wu * torch.tanh(v) - c, c - wu.abs() - 1, c + wu.abs() + 1)
        th = torch.tanh(a)
        a = a - (a + wu * th - c) / (1 + wu * (1 - th * th))  # the Newton step: gradient of the implicit root
        th = torch.tanh(a)
        return x - th[:, None] * u, -torch.log((1 + (1 - th * th) * wu).abs())

    def extra_repr(self) -> str:
        return f"features={self.features}, reparametrize={self.reparametrize}"


class Radial(Transform):
    """g(z) = z + beta (z - z0) / (alpha + r), r = |z - z0|, log|det| = (D - 1) log(1 + beta h) + log(1 + beta h
    - beta h^2 r), h = 1 / (alpha + r). alpha = softplus(a) > 0; with ``reparametrize=True`` (default) beta =
    -alpha + softplus(b) > -alpha (invertible), else beta = b and beta < -alpha is an error at call time. The
    inverse is closed form: r solves r^2 + (alpha + beta - rho) r - alpha rho = 0, rho = |x - z0|."""

    def __init__(self, features: int, reparametrize: bool = True):
        super().__init__()
        _check_features(features)
        self.features, self.reparametrize = features, reparametrize
        self.z0 = nn.Parameter(torch.randn(features) * 0.1)
        self.a = nn.Parameter(torch.zeros(()))
        self.b = nn.Parameter(torch.zeros(()))

    def _alpha_beta(self) -> tuple[torch.Tensor, torch.Tensor]:
        alpha = softplus(self.a)
        if self.reparametrize:
            return alpha, -alpha + softplus(self.b)
        if bool(self.b < -alpha):
            raise ValueError(f"radial parameters are not invertible: beta = {float(self.b):.4g} < -alpha = "
                             f"{-float(alpha):.4g} (use reparametrize=True)")
        return alpha, self.b

    def _log_det(self, r, alpha, beta) -> torch.Tensor:
        h = 1 / (alpha + r)
        return (self.features - 1) * torch.log1p(beta * h) + torch.log1p(beta * h - beta * h * h * r)

    def inverse_and_log_det(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _check_x(z, self.features)
        alpha, beta = (v.to(z.dtype) for v in self._alpha_beta())
        d = z - self.z0.to(z.dtype)
        r = d.norm(dim=1)
        return z + (beta / (alpha + r))[:, None] * d, -self._log_det(r, alpha, beta)

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        return self.inverse_and_log_det(z)[0]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _check_x(x, self.features)
        alpha, beta = (v.to(x.dtype) for v in self._alpha_beta())
        d = x - self.z0.to(x.dtype)
        rho = d.norm(dim=1)
        q = alpha + beta - rho
        root = torch.sqrt(q * q + 4 * alpha * rho)  # the positive root, each form where it does not cancel
        r = torch.where(q > 0, 2 * alpha * rho / (root + q).clamp_min(torch.finfo(x.dtype).tiny), (root - q) / 2)
        return d / (1 + beta / (alpha + r))[:, None] + self.z0.to(x.dtype), -self._log_det(r, alpha, beta)

    def extra_repr(self) -> str:
        return f"features={self.features}, reparametrize={self.reparametrize}"
