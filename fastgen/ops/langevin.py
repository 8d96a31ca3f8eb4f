"""Functional Langevin ops: validate once, pick the backend, call the fused op.

Chains lie along dim 0 of the state ``x`` (shape ``(B, ...)``); a call draws
its noise at stream positions ``offset .. offset + n - 1`` (``n`` = elements,
or chains for ``mala_accept_``), so results depend only on (seed, offset).
"""

from __future__ import annotations

import math

import torch

from ..core.constants import MAX_GMM_COMPONENTS, MAX_GMM_DIM
from ._common import (
    check_like,
    check_mixture,
    check_rng_ints,
    check_rng_state,
    check_state,
    check_vector,
    clamp_args,
    positive_float,
    require,
    rng_args,
    step_size_args,
)
from ._registry import Loop

__all__ = ["gmm_langevin_", "mala_accept_", "mala_propose", "ula_step_"]  # re-exported by fastgen.ops

loop = Loop("langevin")


def _chain_args(a) -> None:
    """The arguments every Langevin op shares: per-chain step sizes and the noise stream."""
    require(math.isfinite(a.step_size) and a.step_size > 0,
            lambda: f"step_size must be finite and > 0, got {a.step_size}")
    check_vector(a.step_sizes, "step_sizes", a.x, a.x.shape[0], torch.float32, optional=True)
    check_rng_ints(a.seed, a.offset)
    check_rng_state(a.rng_state, a.x)


def _ula_step_shapes(a) -> None:
    check_state(a.x)
    check_like(a.score, "score", a.x, dtypes=(a.x.dtype, torch.float32))
    _chain_args(a)
    require(a.grad_clip is None or a.grad_clip > 0, lambda: f"grad_clip must be > 0, got {a.grad_clip}")
    require(a.clamp_lo is None or a.clamp_hi is None or a.clamp_lo <= a.clamp_hi,
            lambda: f"clamp must satisfy lo <= hi, got ({a.clamp_lo}, {a.clamp_hi})")


def _mala_propose_shapes(a) -> torch.Tensor:
    check_state(a.x)
    check_like(a.grad_log_prob, "grad_log_prob", a.x)
    _chain_args(a)
    return torch.empty_like(a.x)


def _mala_propose_setup(ctx, inputs, output) -> None:
    ctx.step_size, ctx.step_sizes = inputs[2], inputs[3]


def _mala_propose_backward(ctx, grad_y):
    """y = x + h_b g + sqrt(2 h_b) xi is linear in x and g: dy/dx = I, dy/dg = h_b I."""
    h = ctx.step_size if ctx.step_sizes is None else ctx.step_sizes.view((-1,) + (1,) * (grad_y.dim() - 1))
    return grad_y, (h * grad_y).to(grad_y.dtype), None, None, None, None, None


def _mala_accept_shapes(a):
    check_state(a.x)
    chains = a.x.shape[0]
    for name in ("grad_log_prob", "y", "grad_log_prob_y"):
        check_like(getattr(a, name), name, a.x)
    for name in ("log_prob", "log_prob_y"):
        check_vector(getattr(a, name), name, a.x, chains, torch.float32)
    require(a.grad_log_prob.is_contiguous(), lambda: "grad_log_prob must be contiguous (it is updated in place)")
    _chain_args(a)
    return a.x.new_empty((chains,), dtype=torch.bool), a.x.new_empty((chains,), dtype=torch.float32)


def _gmm_langevin_shapes(a) -> None:
    check_state(a.x)
    check_mixture(a, a.x, "x")
    require(a.n_steps >= 0, lambda: f"n_steps must be >= 0, got {a.n_steps}")
    _chain_args(a)


_ula_step = loop.op(
    "ula_step_(Tensor(a!) x, Tensor score, float step_size, Tensor? step_sizes=None, int seed=0, int offset=0, "
    "Tensor? rng_state=None, float? clamp_lo=None, float? clamp_hi=None, float? grad_clip=None) -> ()",
    shapes=_ula_step_shapes)
_mala_propose = loop.op(
    "mala_propose(Tensor x, Tensor grad_log_prob, float step_size, Tensor? step_sizes=None, int seed=0, "
    "int offset=0, Tensor? rng_state=None) -> Tensor",
    shapes=_mala_propose_shapes, backward=_mala_propose_backward, setup_context=_mala_propose_setup)
_mala_accept = loop.op(
    "mala_accept_(Tensor(a!) x, Tensor(b!) log_prob, Tensor(c!) grad_log_prob, Tensor y, Tensor log_prob_y, "
    "Tensor grad_log_prob_y, float step_size, Tensor? step_sizes=None, int seed=0, int offset=0, "
    "Tensor? rng_state=None) -> (Tensor accepted, Tensor accept_prob)",
    shapes=_mala_accept_shapes)
_gmm_langevin = loop.op(
    "gmm_langevin_(Tensor(a!) x, Tensor means, Tensor inv_vars, Tensor log_coef, int n_steps, float step_size, "
    "Tensor? step_sizes=None, int seed=0, int offset=0, Tensor? rng_state=None) -> ()",
    shapes=_gmm_langevin_shapes)


def ula_step_(
    x: torch.Tensor,  # (B, ...) state, updated in place
    score: torch.Tensor,  # (B, ...) grad log p(x)
    step_size,  # float, or tensor () / (B,)
    seed,  # int, or RNGState.state
    offset: int = 0,
    *,
    clamp: tuple[float | None, float | None] | None = None,
    grad_clip: float | None = None,
) -> torch.Tensor:
    """One unadjusted Langevin step, in place:

        x <- clamp(x + h_b c_b s + sqrt(2 h_b) xi),   xi ~ N(0, I) at positions offset + i,

    with h_b the step size of chain b and c_b = min(1, grad_clip / (|s_b| + 1e-6))
    when ``grad_clip`` is given (else 1). ``x`` may be float32, float16 or
    bfloat16; ``score`` has x's dtype or float32; arithmetic is float32.
    Reserves ``x.numel()`` positions. Returns ``x``.
    """
    check_state(x)
    check_like(score, "score", x, dtypes=(x.dtype, torch.float32))
    h, steps = step_size_args(step_size, x)
    seed, offset, state = rng_args(seed, offset, x)
    lo, hi = clamp_args(clamp)
    clip = None if grad_clip is None else positive_float(grad_clip, "grad_clip")
    _ula_step(x=x, score=score, step_size=h, step_sizes=steps, seed=seed, offset=offset, rng_state=state,
              clamp_lo=lo, clamp_hi=hi, grad_clip=clip)
    return x


def mala_propose(
    x: torch.Tensor,  # (B, ...) current state
    grad_log_prob: torch.Tensor,  # (B, ...) grad log p(x)
    step_size,  # float, or tensor () / (B,)
    seed,
    offset: int = 0,
) -> torch.Tensor:
    """MALA proposal y = x + h_b grad log p(x) + sqrt(2 h_b) xi (a new tensor).

    Differentiable in x and grad_log_prob (dy/dx = I, dy/dg = h_b I), on every backend.
    Reserves ``x.numel()`` positions.
    """
    check_state(x)
    check_like(grad_log_prob, "grad_log_prob", x)
    h, steps = step_size_args(step_size, x)
    seed, offset, state = rng_args(seed, offset, x)
    return _mala_propose(x=x, grad_log_prob=grad_log_prob, step_size=h, step_sizes=steps, seed=seed, offset=offset,
                         rng_state=state)


def mala_accept_(
    x: torch.Tensor,  # (B, ...) current state, updated where accepted
    log_prob: torch.Tensor,  # (B,) float32 log p(x), updated where accepted
    grad_log_prob: torch.Tensor,  # (B, ...) grad log p(x), updated where accepted
    y: torch.Tensor,  # (B, ...) proposal from mala_propose
    log_prob_y: torch.Tensor,  # (B,) float32 log p(y)
    grad_log_prob_y: torch.Tensor,  # (B, ...) grad log p(y)
    step_size,  # the proposal's step size
    seed,
    offset: int = 0,
    *,
    return_prob: bool = False,
):
    """Metropolis-Hastings correction of one MALA transition per chain, in place:

        log alpha_b = log p(y) - log p(x) + (|y - x - h g(x)|^2 - |x - y - h g(y)|^2) / (4h),

    accepted where u_b < min(1, alpha_b), u_b the uniform at position offset + b;
    accepted chains take y, log p(y) and grad log p(y). Reserves B positions (round up with fastgen.rng.reserve
    after normals).
    Returns the (B,) bool accept mask, or (mask, min(1, alpha)) with ``return_prob``.
    """
    check_state(x)
    chains = x.shape[0]
    check_like(grad_log_prob, "grad_log_prob", x)
    check_like(y, "y", x)
    check_like(grad_log_prob_y, "grad_log_prob_y", x)
    for name, t in (("log_prob", log_prob), ("log_prob_y", log_prob_y)):
        if not isinstance(t, torch.Tensor) or t.dtype != torch.float32 or t.shape != (chains,) or t.device != x.device:
            got = f"{t.dtype} {tuple(t.shape)} on {t.device}" if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must be float32 of shape ({chains},) on {x.device}, got {got}")
    for name, t in (("grad_log_prob", grad_log_prob), ("log_prob", log_prob)):
        if not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous (it is updated in place)")
    h, steps = step_size_args(step_size, x)
    seed, offset, state = rng_args(seed, offset, x)
    accepted, prob = _mala_accept(x=x, log_prob=log_prob, grad_log_prob=grad_log_prob, y=y.contiguous(),
                                  log_prob_y=log_prob_y.contiguous(), grad_log_prob_y=grad_log_prob_y.contiguous(),
                                  step_size=h, step_sizes=steps, seed=seed, offset=offset, rng_state=state)
    return (accepted, prob) if return_prob else accepted


def gmm_langevin_(
    x: torch.Tensor,  # (B, D) state, updated in place
    gmm,  # fastgen.targets.GaussianMixture, D <= 64, K <= 64
    n_steps: int,
    step_size,  # float, or tensor () / (B,)
    seed,
    offset: int = 0,
) -> torch.Tensor:
    """``n_steps`` ULA steps on a diagonal Gaussian mixture in one launch:

        x <- x + h_b score(x) + sqrt(2 h_b) xi_t,   score(x) = sum_k r_k(x) (mu_k - x) / sigma_k^2,

    step t drawing positions ``offset + t * x.numel() + i`` (so it equals n_steps
    ula_step_ calls with the exact score). Reserves ``n_steps * x.numel()`` positions.
    """
    check_state(x)
    means, inv_vars, log_coef = gmm.kernel_params(x.device)
    if x.dim() != 2 or x.shape[1] != means.shape[1]:
        raise ValueError(f"x must have shape (chains, {means.shape[1]}) for this mixture, got {tuple(x.shape)}")
    if means.shape[1] > MAX_GMM_DIM or means.shape[0] > MAX_GMM_COMPONENTS:
        raise ValueError(f"gmm_langevin_ takes up to {MAX_GMM_COMPONENTS} components in dimension up to {MAX_GMM_DIM}, "
                         f"got {means.shape[0]} in dimension {means.shape[1]}")
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 0:
        raise ValueError(f"n_steps must be an int >= 0, got {n_steps!r}")
    h, steps = step_size_args(step_size, x)
    seed, offset, state = rng_args(seed, offset, x)
    _gmm_langevin(x=x, means=means, inv_vars=inv_vars, log_coef=log_coef, n_steps=n_steps, step_size=h,
                  step_sizes=steps, seed=seed, offset=offset, rng_state=state)
    return x
