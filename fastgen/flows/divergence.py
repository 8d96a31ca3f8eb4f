"""Divergences (Jacobian traces) of a vector field, per sample: Hutchinson's estimator on fastgen's probes, or
the exact trace for small dimensions."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..core.checks import check_finite
from ..core.rng import reserve, resolve_seed
from ..ops import hutchinson_dot, probe

__all__ = ["divergence"]


def divergence(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, *, method: str = "hutchinson",
               probes: int = 1, noise: str = "rademacher", seed: int | None = None,
               generator: torch.Generator | None = None, create_graph: bool = False,
               frobenius: bool = False):
    """div f(x)_b = tr(d f(x_b) / d x_b) for f mapping (B, ...) to the same shape, per sample.

    ``method="hutchinson"``: the mean over ``probes`` probes eps (``noise`` "rademacher" or "gaussian", from
    fastgen's noise stream at ``seed``) of eps^T J eps, one vector-Jacobian product per probe, the reduction fused
    with regenerating eps (:func:`fastgen.ops.hutchinson_dot`); unbiased, and exact for a diagonal J with
    Rademacher probes. ``method="exact"``: D vector-Jacobian products on flat (B, D) inputs.
    ``create_graph=True`` keeps the graph (for training through the divergence). With ``frobenius=True`` also
    returns |J|_F^2 per sample: |eps^T J|^2 averaged over the probes (exact with method="exact"), the
    regularizer of RNODE-style training, from the same products."""
    if isinstance(x, torch.Tensor):
        check_finite((x, "x"))
    _, div, frob = divergence_terms(f, x, method=method, probes=probes, noise=noise,
                                    seed=resolve_seed(seed, generator) if method == "hutchinson" else 0,
                                    create_graph=create_graph, frobenius=frobenius)
    return (div, frob) if frobenius else div


def divergence_terms(f, x: torch.Tensor, *, method: str, probes: int, noise: str, seed: int, create_graph: bool,
                     frobenius: bool, offset: int = 0):
    """(f(x), div f(x), |J|_F^2 or None) from one evaluation of f: :func:`divergence` with f's value kept (for
    continuous flows and score matching, which need both); the probes start at stream position ``offset``."""
    if method not in ("hutchinson", "exact"):
        raise ValueError(f"method must be 'hutchinson' or 'exact', got {method!r}")
    if noise not in ("rademacher", "gaussian"):
        raise ValueError(f"noise must be 'rademacher' or 'gaussian', got {noise!r}")
    if isinstance(probes, bool) or not isinstance(probes, int) or probes < 1:
        raise ValueError(f"probes must be an int >= 1, got {probes!r}")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 1:
        raise ValueError("x must be a floating-point tensor of shape (B, ...)")
    with torch.enable_grad():
        xg = x if x.requires_grad else x.detach().requires_grad_(True)
        y = f(xg)
        if not isinstance(y, torch.Tensor) or y.shape != x.shape:
            raise ValueError(f"f must map x to its own shape {tuple(x.shape)}, got "
                             f"{tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__}")
        batch = x.shape[0]
        if not y.requires_grad:  # f does not depend on x (a constant field): J = 0
            zeros = xg.new_zeros(batch)
            return y, zeros, (zeros.clone() if frobenius else None)
        if method == "exact":
            if x.dim() != 2:
                raise ValueError(f"method='exact' takes flat inputs (B, D), got shape {tuple(x.shape)}")
            div, frob = xg.new_zeros(batch), xg.new_zeros(batch)
            for i in range(x.shape[1]):
                row = torch.autograd.grad(y[:, i].sum(), xg, retain_graph=True, create_graph=create_graph,
                                      materialize_grads=True)[0]
                div = div + row[:, i]
                if frobenius:
                    frob = frob + row.square().sum(1)
            return y, div, (frob if frobenius else None)
        rademacher = noise == "rademacher"
        div, frob = 0.0, 0.0
        for k in range(probes):
            at = offset + k * reserve(x.numel())
            eps = probe(x.shape, seed, at, rademacher=rademacher, device=x.device, dtype=y.dtype)
            vjp = torch.autograd.grad(y, xg, eps, retain_graph=True, create_graph=create_graph,
                                      materialize_grads=True)[0]
            if vjp.dtype == torch.float64:  # beyond the fused op's dtypes: the probe is at hand anyway
                div = div + (vjp * eps).reshape(batch, -1).sum(1)
            else:
                div = div + hutchinson_dot(vjp.contiguous(), seed, at, rademacher=rademacher).to(y.dtype)
            if frobenius:
                frob = frob + vjp.square().reshape(batch, -1).sum(1)
    return y, div / probes, (frob / probes if frobenius else None)
