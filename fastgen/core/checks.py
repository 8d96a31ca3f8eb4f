"""Argument checks shared by the public entry points; each error names the argument."""

from __future__ import annotations

import torch


def check_finite(*named: tuple[torch.Tensor, str]) -> None:
    """Each (tensor, name) holds no NaN or inf, read on the host once for all of them (such a value would otherwise
    come back as a result); the error names the first that does."""
    flags = torch.stack([torch.isfinite(x).all() for x, _ in named]).tolist()
    for ok, (_, name) in zip(flags, named, strict=True):
        if not ok:
            raise ValueError(f"{name} must be finite: it has NaN or infinite values")


def check_batch(x, name: str, *, dims: int | None = None, finite: bool = True) -> torch.Tensor:
    """x, if it is a floating-point tensor with a leading batch dimension (exactly `dims` dimensions when given),
    and finite (one host read; ``finite=False`` leaves that to a caller that checks several at once)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if x.dim() < 1 or (dims is not None and x.dim() != dims):
        shape = "(B, ...)" if dims is None else "(B" + ", D" * (dims - 1) + ")"
        raise ValueError(f"{name} must have shape {shape}, got {tuple(x.shape)}")
    if finite:
        check_finite((x, name))
    return x
