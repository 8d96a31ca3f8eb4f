"""Continuous normalizing flows (Chen et al. 2018; FFJORD, Grathwohl et al. 2019), in the flows convention of
:mod:`fastgen.flows`: data at t = 0, the base at t = T, and along dx/dt = f(t, x)

    d log p(x(t)) / dt = -tr(df/dx),   so   log p(x) = log p_base(x(T)) + int_0^T tr(df/dx(t)) dt.

The trace is exact (D vector-Jacobian products) or Hutchinson's estimate with one probe per solve from the noise
stream; the solves are :func:`fastgen.ode.odeint`'s."""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn

from .core import Flow, Transform
from .divergence import divergence_terms
from .ode import odeint

__all__ = ["CNF", "ContinuousFlow", "MLPDynamics"]

_SOLVER_KEYS = ("method", "steps", "rtol", "atol", "control", "max_steps", "sync_every", "check_finite", "adjoint")


class MLPDynamics(nn.Module):
    """f(t, x) for flat x (B, D): an MLP whose every layer also sees t (FFJORD's "concat" layers)."""

    def __init__(self, dim: int, hidden=(64, 64), activation=nn.Softplus):
        super().__init__()
        sizes = [dim, *hidden, dim]
        self.layers = nn.ModuleList(nn.Linear(a + 1, b) for a, b in itertools.pairwise(sizes))
        self.activation = activation()

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        t = t.to(x.dtype).reshape(-1, 1).expand(x.shape[0], 1)
        for i, layer in enumerate(self.layers):
            x = layer(torch.cat([x, t], dim=1))
            if i < len(self.layers) - 1:
                x = self.activation(x)
        return x


class _Augmented(nn.Module):
    """(f, tr df/dx, |f|^2, |df/dx|_F^2) for the state (x, log-det, kinetic, Frobenius); the last two only when
    regularizing. The probe's seed is set per solve, so every evaluation in a solve uses the same probe."""

    def __init__(self, dynamics: nn.Module, divergence: str, probes: int, noise: str):
        super().__init__()
        self.dynamics, self.divergence, self.probes, self.noise = dynamics, divergence, probes, noise
        self.seed, self.regularize = 0, False

    def forward(self, t: torch.Tensor, state):
        x = state[0]
        y, div, frob = divergence_terms(lambda v: self.dynamics(t, v), x, method=self.divergence,
                                        probes=self.probes, noise=self.noise, seed=self.seed,
                                        create_graph=torch.is_grad_enabled(), frobenius=self.regularize)
        if not self.regularize:
            return y, div
        return y, div, y.square().reshape(x.shape[0], -1).sum(1), frob


class ContinuousFlow(Transform):
    """The time-T map of dx/dt = dynamics(t, x), t a (B,) tensor: ``forward(x) -> (x(T), int_0^T tr J dt)``,
    ``inverse(z)`` integrates back from T to 0.

    divergence: "exact" (D vector-Jacobian products; flat (B, D) data), "hutchinson" (``probes`` probes of
        ``noise`` per solve, from the noise stream at ``seed``, a fresh seed per solve when None), or "auto":
        exact up to D = 8.
    kinetic, jacobian: weights of RNODE's regularizers int |f|^2 dt and int |df/dx|_F^2 dt (Finlay et al.
        2020), integrated alongside and returned by :meth:`forward_with_regularization`.
    The solver options (method, steps, rtol, atol, control, max_steps, sync_every, check_finite, adjoint) are
    :func:`fastgen.ode.odeint`'s; change them on a trained model through ``solver``."""

    def __init__(self, dynamics: nn.Module, T: float = 1.0, *, divergence: str = "auto", probes: int = 1,
                 noise: str = "rademacher", seed: int | None = None, kinetic: float = 0.0, jacobian: float = 0.0,
                 method: str = "dopri5", steps: int | None = None, rtol: float = 1e-5, atol: float = 1e-5,
                 control: str = "sample", max_steps: int = 10_000, sync_every: int | None = None,
                 check_finite: bool = False, adjoint: bool = False):
        super().__init__()
        if not isinstance(dynamics, nn.Module):
            raise TypeError(f"dynamics must be an nn.Module (t, x) -> dx/dt, got {type(dynamics).__name__}")
        if divergence not in ("auto", "exact", "hutchinson"):
            raise ValueError(f"divergence must be 'auto', 'exact' or 'hutchinson', got {divergence!r}")
        if isinstance(T, bool) or not isinstance(T, (int, float)) or not (0 < T < math.inf):
            raise ValueError(f"T must be a finite number > 0, got {T!r}")
        for name, v in (("kinetic", kinetic), ("jacobian", jacobian)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0 <= v < math.inf):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        self.augmented = _Augmented(dynamics, "exact" if divergence == "auto" else divergence, probes, noise)
        self.auto, self.T, self.seed = divergence == "auto", float(T), seed
        self.kinetic, self.jacobian = float(kinetic), float(jacobian)
        self.solver = dict(method=method, steps=steps, rtol=rtol, atol=atol, control=control, max_steps=max_steps,
                           sync_every=sync_every, check_finite=check_finite, adjoint=adjoint)
        self.stats: dict = {}

    @property
    def dynamics(self) -> nn.Module:
        return self.augmented.dynamics

    def _solve(self, state, t0: float, t1: float, f):
        unknown = set(self.solver) - set(_SOLVER_KEYS)
        if unknown:
            raise ValueError(f"unknown solver options {sorted(unknown)}; known: {_SOLVER_KEYS}")
        self.stats = {}
        return odeint(f, state, t0, t1, stats=self.stats, **self.solver)

    def forward_with_regularization(self, x: torch.Tensor):
        """(z, log|det dz/dx|, regularization) per sample; the regularization is kinetic * int |f|^2 dt +
        jacobian * int |J|_F^2 dt (zeros when both weights are 0)."""
        aug = self.augmented
        if self.auto:
            aug.divergence = "exact" if x.dim() == 2 and x.shape[1] <= 8 else "hutchinson"
        aug.seed = self.seed if self.seed is not None else int(torch.randint(0, 2 ** 62, ()).item())
        aug.regularize = self.kinetic > 0 or self.jacobian > 0
        zero = x.new_zeros(x.shape[0])
        state = (x, zero) + ((zero, zero) if aug.regularize else ())
        out = self._solve(state, 0.0, self.T, aug)
        reg = self.kinetic * out[2] + self.jacobian * out[3] if aug.regularize else zero
        return out[0], out[1], reg

    def forward(self, x: torch.Tensor):
        z, log_abs_det, _ = self.forward_with_regularization(x)
        return z, log_abs_det

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        dynamics = self.dynamics
        return self._solve(z, self.T, 0.0, lambda t, x: dynamics(t, x))

    def inverse_and_log_abs_det(self, z: torch.Tensor):
        """(x, log|det dz/dx| at x) from one solve from T back to 0 of the augmented state."""
        aug = self.augmented
        if self.auto:
            aug.divergence = "exact" if z.dim() == 2 and z.shape[1] <= 8 else "hutchinson"
        aug.seed = self.seed if self.seed is not None else int(torch.randint(0, 2 ** 62, ()).item())
        aug.regularize = False
        x, minus_log_abs_det = self._solve((z, z.new_zeros(z.shape[0])), self.T, 0.0, aug)
        return x, -minus_log_abs_det


class CNF(Flow):
    """A continuous normalizing flow: the law of x = x(0) where x(T) ~ base and dx/dt = dynamics(t, x).

    ``log_prob(x)``, ``sample(n, seed=...)``, ``rsample``, ``rsample_and_log_prob`` (one solve) and
    ``log_prob_and_regularization(x)`` for RNODE-regularized training; options as :class:`ContinuousFlow`.

    Example (FFJORD on 2-D data)::

        cnf = fastgen.cnf.CNF(fastgen.cnf.MLPDynamics(2), event_shape=(2,))
        loss = -cnf.log_prob(batch).mean()
    """

    def __init__(self, dynamics: nn.Module, event_shape=None, base=None, *, T: float = 1.0, **options):
        super().__init__([ContinuousFlow(dynamics, T, **options)], base=base, event_shape=event_shape)

    @property
    def flow(self) -> ContinuousFlow:
        return self.transforms[0]

    def log_prob_and_regularization(self, x: torch.Tensor):
        """(log p(x), regularization) per sample: train on -(log_prob - regularization).mean()."""
        z, log_abs_det, reg = self.flow.forward_with_regularization(self._check(x))
        return self._base_log_prob(z) + log_abs_det, reg

    def rsample_and_log_prob(self, sample_shape=torch.Size(), generator=None, seed=None):
        z = self._base_draws(sample_shape, generator, seed)
        flat = z.reshape((-1,) + tuple(self.event_shape))
        x, log_abs_det = self.flow.inverse_and_log_abs_det(flat)
        lead = z.shape[:z.dim() - len(self.event_shape)]
        return x.reshape(z.shape), (self._base_log_prob(flat) + log_abs_det).reshape(lead)
