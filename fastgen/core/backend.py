"""Backend choice: cuda, triton, cpu (compiled C++) or torch (the reference).

Automatic choice: a CUDA tensor goes to ``cuda`` if built, else ``triton``,
else ``torch``; a CPU tensor to ``cpu`` if built, else ``torch``. Overrides,
strongest first: ``with fastgen.use_backend(name):`` and ``FASTGEN_BACKEND``.
"""

from __future__ import annotations

import contextlib
import contextvars
import os

import torch

from . import extensions as _ext

BACKENDS = ("cuda", "triton", "cpu", "torch")
_override: contextvars.ContextVar[str | None] = contextvars.ContextVar("fastgen_backend", default=None)


def _triton_interpreted() -> bool:
    return _ext.TRITON_INTERPRET


def backends() -> dict[str, str]:
    """Each backend's status: ``"available"`` or the reason it is not."""
    status = {}
    if _ext.C is None:
        status["cuda"] = status["cpu"] = _ext.C_ERROR
    else:
        status["cpu"] = "available"
        if not _ext.C_CUDA:
            status["cuda"] = ("fastgen._C was built without CUDA "
                              "(torch without CUDA, nvcc missing, or FASTGEN_BUILD_CUDA=0)")
        elif not torch.cuda.is_available():
            status["cuda"] = "built with CUDA, but no CUDA device is visible"
        else:
            status["cuda"] = "available"
    if _ext.TRITON is None:
        status["triton"] = _ext.TRITON_ERROR
    elif torch.cuda.is_available():
        status["triton"] = "available"
    elif _triton_interpreted():
        status["triton"] = "available (interpreter on CPU tensors, TRITON_INTERPRET=1)"
    else:
        status["triton"] = "no CUDA device; set TRITON_INTERPRET=1 before importing fastgen to run it on CPU tensors"
    status["torch"] = "available"
    return {name: status[name] for name in BACKENDS}


def _usable(name: str, device: torch.device) -> str | None:
    """None if `name` can run tensors on `device`, else the reason it cannot."""
    if name == "torch":
        return None
    if name == "cpu":
        if device.type != "cpu":
            return f"backend 'cpu' runs CPU tensors, got a tensor on {device}"
        return None if _ext.C is not None else _ext.C_ERROR
    if name == "cuda":
        if device.type != "cuda":
            return f"backend 'cuda' runs CUDA tensors, got a tensor on {device}"
        if _ext.C is None:
            return _ext.C_ERROR
        return None if _ext.C_CUDA else "fastgen._C was built without CUDA"
    if _ext.TRITON is None:
        return _ext.TRITON_ERROR
    if device.type == "cuda" or (device.type == "cpu" and _triton_interpreted()):
        return None
    return f"backend 'triton' runs CUDA tensors (CPU tensors only with TRITON_INTERPRET=1), got a tensor on {device}"


# Read once, at import (as TRITON_INTERPRET is): an environment lookup per op call costs microseconds.
_ENV_BACKEND = os.environ.get("FASTGEN_BACKEND") or None


def requested_backend() -> str | None:
    """The backend forced by use_backend() or FASTGEN_BACKEND (read at import), if any."""
    name = _override.get() or _ENV_BACKEND
    if name is not None and name not in BACKENDS:
        raise ValueError(f"FASTGEN_BACKEND must be one of {', '.join(BACKENDS)}, got {name!r}")
    return name


def select(device: torch.device) -> str:
    """The backend that runs tensors on `device` (forced one first, else automatic)."""
    forced = requested_backend()
    if forced is not None:
        reason = _usable(forced, device)
        if reason is not None:
            raise RuntimeError(f"fastgen: backend {forced!r} cannot run here: {reason}")
        return forced
    order = ("cuda", "triton", "torch") if device.type == "cuda" else ("cpu", "torch")
    return next(name for name in order if _usable(name, device) is None)


@contextlib.contextmanager
def use_backend(name: str):
    """Force every fastgen op in this block onto backend `name`.

    Example::

        with fastgen.use_backend("triton"):
            fastgen.ops.ula_step_(x, score, 1e-2, seed=0, offset=0)
    """
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {name!r}")
    token = _override.set(name)
    try:
        yield
    finally:
        _override.reset(token)
