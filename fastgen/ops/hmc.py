"""Hamiltonian Monte Carlo's leapfrog step, fused: the momentum kick and the position drift in one pass."""

from __future__ import annotations

import math

import torch

from ._common import check_like, check_state, check_vector, require
from ._registry import Loop

__all__ = ["leapfrog_"]  # re-exported by fastgen.ops

loop = Loop("hmc")


def _leapfrog_shapes(a) -> None:
    check_state(a.q, "q")
    check_like(a.p, "p", a.q, "q")
    check_like(a.grad_log_prob, "grad_log_prob", a.q, "q")
    require(a.p.is_contiguous() and a.grad_log_prob.is_contiguous(),
            lambda: "p and grad_log_prob must be contiguous")
    check_vector(a.step_sizes, "step_sizes", a.q, a.q.shape[0], torch.float32, x_name="q")
    if a.inverse_mass is not None:
        m, size = a.inverse_mass, a.q[0].numel() if a.q.shape[0] else 0
        require(isinstance(m, torch.Tensor) and m.dtype == torch.float32 and m.device == a.q.device and
                m.is_contiguous() and m.numel() in (size, a.q.numel()),
                lambda: f"inverse_mass must be contiguous float32 on the device of q with one value per element of "
                        f"a chain ({size}) or of every chain ({a.q.numel()}), got {getattr(m, 'dtype', None)} "
                        f"{tuple(getattr(m, 'shape', ()))}")
    require(math.isfinite(a.kick), lambda: f"kick must be finite, got {a.kick}")


_leapfrog = loop.op(
    "leapfrog_(Tensor(a!) q, Tensor(b!) p, Tensor grad_log_prob, Tensor step_sizes, Tensor? inverse_mass=None, "
    "float kick=1.0, bool drift=True) -> ()",
    shapes=_leapfrog_shapes)


def leapfrog_(q: torch.Tensor, p: torch.Tensor, grad_log_prob: torch.Tensor, step_sizes: torch.Tensor,
              inverse_mass: torch.Tensor | None = None, kick: float = 1.0, drift: bool = True):
    """One fused leapfrog pass over chains b (q, p, grad shaped (B, ...)), in place, arithmetic in float32:

        p <- p + kick eps_b grad_log_prob,   then with ``drift``   q <- q + eps_b M^-1 p,

    grad_log_prob = grad log p(q); ``kick`` 0.5 for the first and last half kicks, 1 between (a trajectory of L
    steps is L + 1 passes and L gradient evaluations); ``inverse_mass`` the diagonal M^-1, one per chain element
    (shared) or per element of every chain, float32 (None: the identity). Returns (q, p)."""
    _leapfrog(q=q, p=p, grad_log_prob=grad_log_prob, step_sizes=step_sizes, inverse_mass=inverse_mass, kick=float(kick),
              drift=bool(drift))
    return q, p
