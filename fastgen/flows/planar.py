"""Planar and radial flows (Rezende & Mohamed 2015) and Sylvester flows (van den Berg et al. 2018).

Each is defined, as in those papers, by its base-to-data map g (the sampling direction, :meth:`inverse` here) with
a closed-form log-determinant; the data-to-base direction (:meth:`forward`, the density of a given x) inverts g:
radial in closed form, planar and Sylvester by solving monotone scalar equations (bisection to machine precision,
then one Newton step that carries the gradient of the implicit solution). Invertibility comes from the
reparametrizations of the papers (on by default): planar w.u >= -1, radial beta >= -alpha, Sylvester
r_ii r~_ii >= -1 with tanh."""

from __future__ import annotations

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
            raise ValueError(f"planar parameters are not invertible: w.u = {float(wu.detach()):.4g} < -1 (use "
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
            raise ValueError(f"radial parameters are not invertible: beta = {float(self.b.detach()):.4g} < -alpha = "
                             f"{-float(alpha.detach()):.4g} (use reparametrize=True)")
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


class Sylvester(Transform):
    """g(z) = z + Q R tanh(R~ Q^T z + b) with R, R~ upper triangular (D x D) and Q orthogonal: ``kind=
    "householder"`` (a product of ``reflections`` Householder reflections, default D) or ``"triangular"`` (Q = I,
    or the order reversal with ``reverse=True``). log|det dg/dz| = sum_i log|1 + (1 - tanh^2(a_i)) r~_ii r_ii|,
    a = R~ Q^T z + b. With ``reparametrize=True`` (default) r_ii = tanh, r~_ii = tanh of free parameters, so
    r_ii r~_ii > -1 and g is invertible; without it, a setting with r_ii r~_ii <= -1 is an error at call time. The
    data-to-base direction solves the triangular system from the last coordinate up: D monotone scalar equations."""

    def __init__(self, features: int, kind: str = "householder", reflections: int | None = None,
                 reverse: bool = False, reparametrize: bool = True):
        super().__init__()
        _check_features(features)
        if kind not in ("householder", "triangular"):
            raise ValueError(f"kind must be 'householder' or 'triangular', got {kind!r}")
        reflections = features if reflections is None else reflections
        if isinstance(reflections, bool) or not isinstance(reflections, int) or reflections < 1:
            raise ValueError(f"reflections must be an int >= 1, got {reflections!r}")
        self.features, self.kind, self.reverse, self.reparametrize = features, kind, reverse, reparametrize
        self.householder = nn.Parameter(torch.randn(reflections, features)) if kind == "householder" else None
        self.r = nn.Parameter(torch.randn(features, features) * 0.1)
        self.r_tilde = nn.Parameter(torch.randn(features, features) * 0.1)
        self.b = nn.Parameter(torch.zeros(features))
        self.register_buffer("upper", torch.triu(torch.ones(features, features), 1))

    def _factors(self, dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(Q, R, R~) in dtype."""
        d = self.features
        r_diag, rt_diag = torch.diagonal(self.r), torch.diagonal(self.r_tilde)
        if self.reparametrize:
            r_diag, rt_diag = torch.tanh(r_diag), torch.tanh(rt_diag)
        elif bool((r_diag * rt_diag <= -1).any()):
            raise ValueError(f"Sylvester parameters are not invertible: r_ii r~_ii = "
                             f"{float((r_diag * rt_diag).min().detach()):.4g} <= -1 (use reparametrize=True)")
        r = (self.r * self.upper + torch.diag(r_diag)).to(dtype)
        r_tilde = (self.r_tilde * self.upper + torch.diag(rt_diag)).to(dtype)
        if self.householder is not None:
            q = torch.eye(d, dtype=dtype, device=self.r.device)
            for v in self.householder.to(dtype):
                q = q - 2 * torch.outer(q @ v, v) / v.square().sum().clamp_min(torch.finfo(dtype).tiny)
        else:
            q = torch.eye(d, dtype=dtype, device=self.r.device)
            if self.reverse:
                q = q.flip(1)
        return q, r, r_tilde

    def _log_det(self, a: torch.Tensor, r: torch.Tensor, r_tilde: torch.Tensor) -> torch.Tensor:
        th = torch.tanh(a)
        return torch.log((1 + (1 - th * th) * torch.diagonal(r_tilde) * torch.diagonal(r)).abs()).sum(1)

    def inverse_and_log_det(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _check_x(z, self.features)
        q, r, r_tilde = self._factors(z.dtype)
        a = z @ q @ r_tilde.T + self.b.to(z.dtype)
        return z + torch.tanh(a) @ r.T @ q.T, -self._log_det(a, r, r_tilde)

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        return self.inverse_and_log_det(z)[0]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z with g(z) = x: with y = Q^T x and v = Q^T z, y = v + R tanh(R~ v + b) is upper triangular in v; solve
        v_i from i = D - 1 down (bisection, then a Newton step that carries the implicit gradient)."""
        _check_x(x, self.features)
        q, r, r_tilde = self._factors(x.dtype)
        y = x @ q
        b = self.b.to(x.dtype)
        v = [None] * self.features
        th = [None] * self.features
        for i in reversed(range(self.features)):
            c = b[i] + sum((r_tilde[i, j] * v[j] for j in range(i + 1, self.features)), torch.zeros_like(y[:, i]))
            rhs = y[:, i] - sum((r[i, j] * th[j] for j in range(i + 1, self.features)), torch.zeros_like(y[:, i]))
            rii, rtii = r[i, i], r_tilde[i, i]
            root = _solve_monotone(lambda u: u + rii * torch.tanh(rtii * u + c) - rhs, rhs - rii.abs() - 1,
                                   rhs + rii.abs() + 1)
            t = torch.tanh(rtii * root + c)
            v[i] = root - (root + rii * t - rhs) / (1 + rii * rtii * (1 - t * t))
            th[i] = torch.tanh(rtii * v[i] + c)
        v = torch.stack(v, dim=1)
        a = v @ r_tilde.T + b
        return v @ q.T, -self._log_det(a, r, r_tilde)

    def extra_repr(self) -> str:
        return f"features={self.features}, kind={self.kind!r}, reparametrize={self.reparametrize}"
