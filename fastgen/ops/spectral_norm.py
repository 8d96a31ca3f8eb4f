"""Spectral normalization: one power-iteration step for every normalized weight of a model, in one grouped op."""

from __future__ import annotations

import math

import torch

from ._common import STATE_DTYPES, require
from ._registry import Loop

__all__ = ["spectral_norm_power"]  # re-exported by fastgen.ops

loop = Loop("spectral_norm")


def _spectral_norm_power_shapes(a):
    count = len(a.weights)
    require(len(a.us) == count and len(a.vs) == count,
            lambda: f"weights, us and vs must have the same length, got {count}, {len(a.us)} and {len(a.vs)}")
    require(a.n_power_iterations >= 0, lambda: f"n_power_iterations must be >= 0, got {a.n_power_iterations}")
    require(math.isfinite(a.eps) and a.eps > 0, lambda: f"eps must be finite and > 0, got {a.eps}")
    for t, (weight, u, v) in enumerate(zip(a.weights, a.us, a.vs, strict=True)):
        first = a.weights[0]
        require(weight.dtype in STATE_DTYPES,
                lambda: f"weights must be float32, float16 or bfloat16, got {weight.dtype}", TypeError)
        require(weight.device == first.device and weight.dtype == first.dtype,
                lambda: f"weights must share one device and dtype: weights[{t}] is {weight.dtype} on "
                        f"{weight.device}, weights[0] {first.dtype} on {first.device}")
        require(weight.dim() == 2 and weight.is_contiguous(),
                lambda: f"weights[{t}] must be a contiguous matrix (h, w), got shape {tuple(weight.shape)}"
                        f"{'' if weight.is_contiguous() else ' (non-contiguous)'}")
        for name, vec, length in (("us", u, weight.shape[0]), ("vs", v, weight.shape[1])):
            require(vec.device == weight.device and vec.dtype == weight.dtype and vec.shape == (length,)
                    and vec.is_contiguous(),
                    lambda: f"{name}[{t}] must be contiguous of shape ({length},) with the dtype and device of "
                            f"weights[{t}] ({weight.dtype} on {weight.device}), got {vec.dtype} "
                            f"{tuple(vec.shape)} on {vec.device}")
    device = a.weights[0].device if count else torch.device("cpu")
    return (torch.empty(count, dtype=torch.float32, device=device),
            [torch.empty_like(u) for u in a.us], [torch.empty_like(v) for v in a.vs])


def _spectral_norm_power_setup(ctx, inputs, output) -> None:
    ctx.save_for_backward(*output[1], *output[2])
    ctx.dtypes = [w.dtype for w in inputs[0]]


def _spectral_norm_power_backward(ctx, grad_sigmas, grad_us, grad_vs):
    """sigma_l = u_l^T W_l v_l with u_l, v_l the returned vectors held constant (as torch's parametrization
    does): d sigma_l / d W_l = u_l v_l^T."""
    saved = ctx.saved_tensors
    count = len(saved) // 2
    grads = [torch.outer(saved[t].float() * grad_sigmas[t], saved[count + t].float()).to(ctx.dtypes[t])
             for t in range(count)]
    return grads, [None] * count, [None] * count, None, None


_spectral_norm_power = loop.op(
    "spectral_norm_power(Tensor[] weights, Tensor[] us, Tensor[] vs, int n_power_iterations, float eps) "
    "-> (Tensor sigmas, Tensor[] us_out, Tensor[] vs_out)",
    shapes=_spectral_norm_power_shapes, backward=_spectral_norm_power_backward,
    setup_context=_spectral_norm_power_setup)


def spectral_norm_power(
    weights: list[torch.Tensor],  # L matrices (h_l, w_l), one dtype and device
    us: list[torch.Tensor],  # (h_l,) left singular vector estimates
    vs: list[torch.Tensor],  # (w_l,) right singular vector estimates
    n_power_iterations: int = 1,
    eps: float = 1e-12,
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """Power iteration for the top singular value of every matrix, all matrices in one grouped op:

        repeat n_power_iterations times:  u <- W v / max(|W v|, eps);  v <- W^T u / max(|W^T u|, eps)
        sigma = u^T W v

    Arithmetic is float32. Returns ``(sigmas, us, vs)``: sigmas (L,) float32, differentiable in the
    weights with u and v held constant (d sigma / d W = u v^T, as in torch's spectral_norm); new u and
    v in the weights' dtype (the inputs are not modified). ``n_power_iterations=0`` evaluates sigma at
    the given u and v (eval mode). Weights must be contiguous; conv weights are passed as the
    (out, in*kh*kw) matrix ``weight.flatten(1)``."""
    if isinstance(n_power_iterations, bool) or not isinstance(n_power_iterations, int) or n_power_iterations < 0:
        raise ValueError(f"n_power_iterations must be an int >= 0, got {n_power_iterations!r}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps <= 0:
        raise ValueError(f"eps must be a finite number > 0, got {eps!r}")
    weights, us, vs = list(weights), [u.detach() for u in us], [v.detach() for v in vs]
    for t, weight in enumerate(weights):
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
            raise ValueError(f"weights[{t}] must be a matrix (h, w), got "
                             f"{tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__}")
    return _spectral_norm_power(weights=weights, us=us, vs=vs, n_power_iterations=n_power_iterations,
                                eps=float(eps))
