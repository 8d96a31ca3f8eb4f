"""Argument checks shared by the public entry points; each error names the argument."""

from __future__ import annotations

import torch


def check_finite(x: torch.Tensor, name: str) -> torch.Tensor:
    """x, if it holds no NaN or inf (one host read: such a value would otherwise come back as a result)."""
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} must be finite: it has NaN or infinite values")
    return x


def check_batch(x, name: str, *, dims: int | None = None) -> torch.Tensor:
    """x, if it is a finite floating-point tensor with a leading batch dimension (and exactly `dims` dimensions
    when given)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if x.dim() < 1 or (dims is not None and x.dim() != dims):
        shape = "(B, ...)" if dims is None else "(B" + ", D" * (dims - 1) + ")"
        raise ValueError(f"{name} must have shape {shape}, got {tuple(x.shape)}")
    return check_finite(x, name)
