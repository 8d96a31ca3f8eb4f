"""Hamiltonian Monte Carlo's ops: the leapfrog step fused (the momentum kick and the position drift in one pass),
and whole HMC chains on a diagonal Gaussian mixture in one launch."""

from __future__ import annotations

import math

import torch

from ._common import check_like, check_mixture, check_rng_ints, check_state, check_vector, require
from ._registry import Loop

__all__ = ["gmm_hmc_", "leapfrog_"]  # re-exported by fastgen.ops

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


def _gmm_hmc_shapes(a):
    check_state(a.q, "q")
    check_mixture(a, a.q, "q")
    check_vector(a.step_sizes, "step_sizes", a.q, a.q.shape[0], torch.float32, x_name="q")
    require(a.n_transitions >= 0, lambda: f"n_transitions must be >= 0, got {a.n_transitions}")
    require(a.n_leapfrog >= 1, lambda: f"n_leapfrog must be >= 1, got {a.n_leapfrog}")
    check_rng_ints(a.seed, a.offset)
    chains = a.q.shape[0]
    return a.q.new_empty((chains,), dtype=torch.float32), a.q.new_empty((chains,), dtype=torch.int32)


_gmm_hmc = loop.op(
    "gmm_hmc_(Tensor(a!) q, Tensor means, Tensor inv_vars, Tensor log_coef, Tensor step_sizes, int n_transitions, "
    "int n_leapfrog, int seed=0, int offset=0) -> (Tensor accepted, Tensor divergences)",
    shapes=_gmm_hmc_shapes)


def gmm_hmc_(q: torch.Tensor, gmm, n_transitions: int, n_leapfrog: int, step_sizes: torch.Tensor, seed: int,
             offset: int = 0):
    """``n_transitions`` HMC transitions of every chain of q (B, D) on a diagonal Gaussian mixture in one launch,
    in place, identity mass: per transition p ~ N(0, I), ``n_leapfrog`` leapfrog steps of size eps_b with the
    mixture's exact gradient, and the Metropolis test min(1, exp(H - H')), H = -log p(q) + |p|^2 / 2; a trajectory
    whose energy error exceeds 1000 or is not finite is rejected and counted. Transition t reads the momentum at
    stream positions offset + t S + i and the accept uniform of chain b at offset + t S + R(B D) + R(B) + b,
    S = R(B D) + 2 R(B) (fastgen.core.rng.hmc_layout: fastgen.mcmc.hmc's own layout, its jitter slot skipped).
    Returns (the summed acceptance probabilities (B,) float32, the divergent transitions (B,) int32)."""
    means, inv_vars, log_coef = gmm.kernel_params(q.device)
    return _gmm_hmc(q=q, means=means, inv_vars=inv_vars, log_coef=log_coef, step_sizes=step_sizes,
                    n_transitions=int(n_transitions), n_leapfrog=int(n_leapfrog), seed=int(seed), offset=int(offset))
