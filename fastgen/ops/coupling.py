"""Coupling transforms: affine (RealNVP, Glow) and rational-quadratic spline (neural spline flows). The transformed
part of a sample, its log-determinant and their backward, one pass each. The rules are in
fastgen/reference/coupling.py."""

from __future__ import annotations

import math

import torch

from ..core.constants import ScaleMode
from ._common import check_state, require
from ._registry import Loop

__all__ = ["affine_coupling", "spline_coupling"]  # re-exported by fastgen.ops

loop = Loop("coupling")

SCALES = {"soft_clamp": int(ScaleMode.SOFT_CLAMP), "sigmoid": int(ScaleMode.SIGMOID)}


def _split(a, first: torch.Tensor, first_name: str) -> tuple[int, int]:
    """(batch, elements per sample) of the state, with split checked against them."""
    check_state(first, first_name)
    batch = first.shape[0]
    size = first.numel() // batch if batch else 0
    require(0 <= a.split < size or (batch == 0 and a.split >= 0),
            lambda: f"split must leave elements to transform: 0 <= split < {size} (the elements of one sample), got "
                    f"{a.split}")
    return batch, size


def rows(v: torch.Tensor) -> bool:
    """Each sample's elements contiguous (the dims after the first), samples at least that many elements apart:
    a contiguous tensor, or a slice of one along dim 1 (h and t sliced out of a conditioner's output, no copy)."""
    if v.is_contiguous():
        return True
    if v.dim() < 2:
        return False
    expected = 1
    for size, stride in zip(reversed(v.shape[1:]), reversed(v.stride()[1:]), strict=True):
        if size != 1 and stride != expected:
            return False
        expected *= size
    return v.shape[0] <= 1 or v.stride(0) >= expected


def _params(a, first: torch.Tensor, first_name: str) -> None:
    """What both affine ops share: split, the conditioner's outputs (h, and t where given), scale options."""
    batch, size = _split(a, first, first_name)
    names = (("h", a.h), ("t", a.t)) if hasattr(a, "t") else (("h", a.h),)
    for name, v in names:
        require(isinstance(v, torch.Tensor), lambda: f"{name} must be a torch.Tensor, got {type(v).__name__}",
                TypeError)
        require(v.dtype == first.dtype, lambda: f"{name} must have the dtype of {first_name} ({first.dtype}), got "
                                                f"{v.dtype}", TypeError)
        require(v.device == first.device and v.dim() >= 1 and v.shape[0] == batch and
                v.numel() == batch * (size - a.split) and rows(v),
                lambda: f"{name} must be on the device of {first_name} with {size - a.split} elements per sample "
                        f"(the transformed part: {size} - split), batch {batch} first, each sample's elements "
                        f"contiguous (a contiguous tensor or a dim-1 slice of one), got {tuple(v.shape)} with "
                        f"strides {tuple(v.stride())} on {v.device}")
    require(a.scale_mode in SCALES.values(), lambda: f"scale_mode must be 0 (soft clamp) or 1 (sigmoid), got "
                                                     f"{a.scale_mode}")
    require(math.isfinite(a.clamp) and a.clamp > 0, lambda: f"clamp must be finite and > 0, got {a.clamp}")


def _affine_coupling_shapes(a):
    _params(a, a.x, "x")
    return torch.empty_like(a.x), a.x.new_empty((a.x.shape[0],), dtype=torch.float32)


def _data_side(a) -> None:
    """A backward's data-side x and log-det gradient, against its output gradient."""
    require(a.x.shape == a.grad_out.shape and a.x.dtype == a.grad_out.dtype and a.x.device == a.grad_out.device
            and a.x.is_contiguous(), lambda: "x must be contiguous with the shape, dtype and device of grad_out")
    require(a.grad_log_det.dtype == torch.float32 and a.grad_log_det.shape == (a.x.shape[0],) and
            a.grad_log_det.device == a.x.device and a.grad_log_det.is_contiguous(),
            lambda: f"grad_log_det must be contiguous float32 of shape ({a.x.shape[0]},) on the device of x")


def _affine_coupling_backward_shapes(a):
    _params(a, a.grad_out, "grad_out")
    _data_side(a)
    return torch.empty_like(a.grad_out), a.h.new_empty(a.h.shape)


def _affine_coupling_setup(ctx, inputs, output) -> None:
    x, h, t, split, inverse, scale_mode, clamp = inputs
    ctx.save_for_backward(output[0] if inverse else x, h)  # the data side: the forward's input, the inverse's output
    ctx.options = dict(split=split, inverse=inverse, scale_mode=scale_mode, clamp=clamp)
    ctx.t_shape = t.shape


def _affine_coupling_autograd(ctx, grad_out, grad_log_det):
    """Through affine_coupling_backward: (grad of the input, of h); grad_t is the output gradient's transformed
    part (forward) or minus the input gradient's (inverse)."""
    x, h = ctx.saved_tensors
    batch, split = x.shape[0], ctx.options["split"]
    grad_out = torch.zeros_like(x) if grad_out is None else grad_out.contiguous()
    grad_log_det = x.new_zeros((batch,), dtype=torch.float32) if grad_log_det is None else \
        grad_log_det.float().contiguous()
    grad_in, grad_h = _affine_coupling_backward(grad_out=grad_out, grad_log_det=grad_log_det, x=x, h=h,
                                                **ctx.options)
    moved = (grad_in if ctx.options["inverse"] else grad_out).reshape(batch, math.prod(x.shape[1:]))[:, split:]
    grad_t = (-moved if ctx.options["inverse"] else moved).reshape(ctx.t_shape)
    return grad_in, grad_h, grad_t, None, None, None, None


_affine_coupling = loop.op(
    "affine_coupling(Tensor x, Tensor h, Tensor t, int split, bool inverse=False, int scale_mode=0, "
    "float clamp=2.) -> (Tensor out, Tensor log_det)",
    shapes=_affine_coupling_shapes, backward=_affine_coupling_autograd, setup_context=_affine_coupling_setup)
_affine_coupling_backward = loop.op(
    "affine_coupling_backward(Tensor grad_out, Tensor grad_log_det, Tensor x, Tensor h, int split, "
    "bool inverse=False, int scale_mode=0, float clamp=2.) -> (Tensor grad_in, Tensor grad_h)",
    shapes=_affine_coupling_backward_shapes)


def affine_coupling(
    x: torch.Tensor,  # (B, ...) input (data side forward, base side inverse)
    h: torch.Tensor,  # (B, ...) log-scale logits for the D - split transformed elements of each sample
    t: torch.Tensor,  # (B, ...) shifts, as h
    split: int,  # elements of each (flattened) sample that pass unchanged
    *,
    inverse: bool = False,
    scale: str = "soft_clamp",
    clamp: float = 2.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Affine coupling in one pass: with s the log-scale from h (``scale``: "soft_clamp", s = clamp tanh(h /
    clamp), or "sigmoid", Glow's s = log sigmoid(h + 2)),

        forward:  y = [x_a, x_b exp(s) + t],    log_det = sum s
        inverse:  x = [y_a, (y_b - t) exp(-s)], log_det = -sum s

    with x_a the first ``split`` elements of each flattened sample and x_b the rest. Returns (out in x's dtype,
    log_det (B,) float32), differentiable in x, h and t (the backward is one fused pass too). h and t hold the
    transformed part in element order, any shape with that many elements per sample (for (B, C, H, W) split at
    channel c: split = c H W, h and t (B, C - c, H, W)); slices of one conditioner output along dim 1 are read in
    place, without a copy."""
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {', '.join(SCALES)}, got {scale!r}")
    if isinstance(split, bool) or not isinstance(split, int):
        raise TypeError(f"split must be an int, got {type(split).__name__}")
    if isinstance(clamp, bool) or not isinstance(clamp, (int, float)):
        raise TypeError(f"clamp must be a number, got {type(clamp).__name__}")
    h, t = (v if not isinstance(v, torch.Tensor) or rows(v) else v.contiguous() for v in (h, t))
    return _affine_coupling(x=x.contiguous(), h=h, t=t, split=split, inverse=bool(inverse),
                            scale_mode=SCALES[scale], clamp=float(clamp))


MAX_BINS = 64


def _spline_params(a, first: torch.Tensor, first_name: str) -> None:
    """What both spline ops share: split, the spline's options, params."""
    batch, size = _split(a, first, first_name)
    require(1 <= a.bins <= MAX_BINS, lambda: f"bins must be in [1, {MAX_BINS}], got {a.bins}")
    require(math.isfinite(a.bound) and a.bound > 0, lambda: f"bound must be finite and > 0, got {a.bound}")
    for name in ("min_width", "min_height"):
        v = getattr(a, name)
        require(0 <= v and v * a.bins < 1, lambda: f"{name} must be >= 0 with bins * {name} < 1, got {v}")
    require(0 <= a.min_derivative < 1 and math.isfinite(a.min_derivative),
            lambda: f"min_derivative must be in [0, 1), got {a.min_derivative}")
    p = a.params
    require(isinstance(p, torch.Tensor), lambda: f"params must be a torch.Tensor, got {type(p).__name__}", TypeError)
    require(p.dtype == first.dtype, lambda: f"params must have the dtype of {first_name} ({first.dtype}), got "
                                            f"{p.dtype}", TypeError)
    per = 3 * a.bins - 1
    require(p.device == first.device and p.is_contiguous() and p.dim() >= 1 and p.shape[0] == batch and
            p.numel() == batch * (size - a.split) * per,
            lambda: f"params must be contiguous on the device of {first_name} with (D - split) * (3 bins - 1) = "
                    f"{size - a.split} * {per} elements per sample, batch {batch} first, got {tuple(p.shape)} on "
                    f"{p.device}")


def _spline_coupling_shapes(a):
    _spline_params(a, a.x, "x")
    return torch.empty_like(a.x), a.x.new_empty((a.x.shape[0],), dtype=torch.float32)


def _spline_coupling_backward_shapes(a):
    _spline_params(a, a.grad_out, "grad_out")
    _data_side(a)
    return torch.empty_like(a.grad_out), torch.empty_like(a.params)


_SPLINE_OPTIONS = ("split", "bins", "bound", "inverse", "min_width", "min_height", "min_derivative")


def _spline_coupling_setup(ctx, inputs, output) -> None:
    x, params, *options = inputs
    ctx.save_for_backward(output[0] if options[3] else x, params)  # the data side, as the affine op
    ctx.options = dict(zip(_SPLINE_OPTIONS, options, strict=True))


def _spline_coupling_autograd(ctx, grad_out, grad_log_det):
    x, params = ctx.saved_tensors
    grad_out = torch.zeros_like(x) if grad_out is None else grad_out.contiguous()
    grad_log_det = x.new_zeros((x.shape[0],), dtype=torch.float32) if grad_log_det is None else \
        grad_log_det.float().contiguous()
    grad_in, grad_params = _spline_coupling_backward(grad_out=grad_out, grad_log_det=grad_log_det, x=x,
                                                     params=params, **ctx.options)
    return grad_in, grad_params, *([None] * len(_SPLINE_OPTIONS))


_spline_coupling = loop.op(
    "spline_coupling(Tensor x, Tensor params, int split, int bins, float bound=5., bool inverse=False, "
    "float min_width=1e-3, float min_height=1e-3, float min_derivative=1e-3) -> (Tensor out, Tensor log_det)",
    shapes=_spline_coupling_shapes, backward=_spline_coupling_autograd, setup_context=_spline_coupling_setup)
_spline_coupling_backward = loop.op(
    "spline_coupling_backward(Tensor grad_out, Tensor grad_log_det, Tensor x, Tensor params, int split, int bins, "
    "float bound=5., bool inverse=False, float min_width=1e-3, float min_height=1e-3, float min_derivative=1e-3) "
    "-> (Tensor grad_in, Tensor grad_params)",
    shapes=_spline_coupling_backward_shapes)


def spline_coupling(
    x: torch.Tensor,  # (B, ...) input (data side forward, base side inverse)
    params: torch.Tensor,  # (B, ...) raw spline parameters: 3 bins - 1 per transformed element, element-major
    split: int,  # elements of each (flattened) sample that pass unchanged
    bins: int = 8,
    *,
    bound: float = 5.0,
    inverse: bool = False,
    min_width: float = 1e-3,
    min_height: float = 1e-3,
    min_derivative: float = 1e-3,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rational-quadratic spline coupling (Durkan et al. 2019) in one pass: the first ``split`` elements of each
    flattened sample pass unchanged; each other element x goes through its own monotone spline of ``bins`` bins on
    [-bound, bound] (identity outside: linear tails, log-det 0), whose 3 bins - 1 raw parameters (bins width
    logits, bins height logits, bins - 1 interior-knot derivative logits, in this order; nflows' layout) follow
    each other in ``params`` (any shape with (D - split)(3 bins - 1) elements per sample). In bin k, theta =
    (x - x_k) / w_k, s = h_k / w_k:

        y = y_k + h_k (s theta^2 + d_k theta (1 - theta)) / (s + (d_k + d_{k+1} - 2 s) theta (1 - theta))

    with widths and heights softmax-normalized (each at least ``min_width`` / ``min_height`` of 2 bound) and
    derivatives min_derivative + softplus (1 at -bound and bound). Returns (out in x's dtype, log_det (B,) float32:
    the sum of log dy/dx, negated for the inverse), differentiable in x and params (one fused backward pass). The
    inverse solves each bin's quadratic; every finite input gives a finite output, however far outside the
    bound."""
    for name, v in (("split", split), ("bins", bins)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    floats = dict(bound=bound, min_width=min_width, min_height=min_height, min_derivative=min_derivative)
    for name, v in floats.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TypeError(f"{name} must be a number, got {type(v).__name__}")
    return _spline_coupling(x=x.contiguous(), params=params.contiguous(), split=split, bins=bins,
                            inverse=bool(inverse), **{k: float(v) for k, v in floats.items()})
