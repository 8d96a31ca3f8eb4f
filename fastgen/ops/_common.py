"""Argument checks and backend lookup shared by the functional ops.

Every check runs before anything is written and names the argument.
"""

from __future__ import annotations

import math

import torch

from ..core import backend as _backend
from ..core.rng import MAX_SEED

STATE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


_CHOICES: dict = {}  # (forced backend, device type, index) -> backend: the choice is made once per key


def assume_constant_result(fn):
    """What ``torch._dynamo.assume_constant_result`` does (mark fn so that torch.compile calls it once while
    tracing and keeps its result as a constant), without importing torch._dynamo when fastgen is imported: that
    import alone costs about 2 s. tests/test_build.py checks that the marker is still the one dynamo sets."""
    fn._dynamo_marked_constant = True
    return fn


@assume_constant_result
def _backend_name(device_type: str, device_index: int) -> str:
    key = (_backend.requested_backend(), device_type, device_index)
    name = _CHOICES.get(key)
    if name is None:
        device = torch.device(device_type, device_index) if device_type == "cuda" else torch.device("cpu")
        name = _CHOICES[key] = _backend.select(device)
    return name


def backend_for(x: torch.Tensor) -> str:
    """The backend that will run an op on x (see fastgen.backends())."""
    return _backend_name(x.device.type, x.device.index if x.device.index is not None else 0)


def require(cond, message, error: type = ValueError) -> None:
    """Raise ``error(message())`` unless `cond` (`message` is formatted only on failure). A symbolic condition
    (dynamic shapes under torch.compile) goes to torch._check_type / _check_value, which keep it as a guard."""
    if cond is True:
        return
    if cond is False:
        raise error(message())
    (torch._check_type if error is TypeError else torch._check_value)(cond, message)


def check_state(x: torch.Tensor, name: str = "x") -> None:
    """A chain state: a contiguous float32/float16/bfloat16 tensor of shape (B, ...). Works on fake tensors."""
    if isinstance(x, torch.Tensor) and x.dtype in STATE_DTYPES and x.dim() >= 1 and x.is_contiguous():
        return
    require(isinstance(x, torch.Tensor), lambda: f"{name} must be a torch.Tensor, got {type(x).__name__}", TypeError)
    require(x.dtype in STATE_DTYPES, lambda: f"{name} must be float32, float16 or bfloat16, got {x.dtype}", TypeError)
    require(x.dim() >= 1, lambda: f"{name} must have a leading chain dimension (shape (B, ...)), got a 0-d tensor")
    require(x.is_contiguous(), lambda: f"{name} must be contiguous (call .contiguous() first)")


def check_like(t: torch.Tensor, name: str, x: torch.Tensor, x_name: str = "x", dtypes=None) -> None:
    """t has x's device and shape, and x's dtype (or one of `dtypes`)."""
    allowed = dtypes if dtypes is not None else (x.dtype,)
    if isinstance(t, torch.Tensor) and t.device == x.device and t.shape == x.shape and t.dtype in allowed:
        return
    require(isinstance(t, torch.Tensor), lambda: f"{name} must be a torch.Tensor, got {type(t).__name__}", TypeError)
    require(t.device == x.device, lambda: f"{name} must be on the device of {x_name} ({x.device}), got {t.device}")
    require(t.shape == x.shape,
            lambda: f"{name} must have the shape of {x_name} {tuple(x.shape)}, got {tuple(t.shape)}")
    require(t.dtype in allowed,
            lambda: f"{name} must have dtype {' or '.join(map(str, dict.fromkeys(allowed)))}, got {t.dtype}", TypeError)


def check_vector(t, name: str, x: torch.Tensor, length: int, dtype: torch.dtype, optional: bool = False,
                 x_name: str = "x") -> None:
    """t is a contiguous `dtype` tensor of shape (length,) on x's device (or None when optional)."""
    if t is None and optional:
        return
    require(isinstance(t, torch.Tensor), lambda: f"{name} must be a torch.Tensor, got {type(t).__name__}", TypeError)
    require(t.dtype == dtype and t.shape == (length,) and t.device == x.device and t.is_contiguous(),
            lambda: f"{name} must be contiguous {dtype} of shape ({length},) on the device of {x_name} ({x.device}), "
                    f"got {'' if t.is_contiguous() else 'non-contiguous '}{t.dtype} {tuple(t.shape)} on {t.device}")


def check_mixture(a, x: torch.Tensor, x_name: str) -> None:
    """The fused mixture kernels' arguments a.means (K, D), a.inv_vars (K, D), a.log_coef (K,): contiguous float32
    on x's device, D and K within the kernels' limits, x (chains, D)."""
    from ..core.constants import MAX_GMM_COMPONENTS, MAX_GMM_DIM

    components, dim = a.means.shape[0], a.means.shape[-1]
    require(x.dim() == 2 and x.shape[1] == dim,
            lambda: f"{x_name} must have shape (chains, {dim}) for this mixture, got {tuple(x.shape)}")
    require(dim <= MAX_GMM_DIM and components <= MAX_GMM_COMPONENTS,
            lambda: f"the fused mixture kernel takes dimension <= {MAX_GMM_DIM} and up to "
                    f"{MAX_GMM_COMPONENTS} components, got {components} in dimension {dim}")
    for name, shape in (("means", (components, dim)), ("inv_vars", (components, dim)), ("log_coef", (components,))):
        t = getattr(a, name)
        require(t.dtype == torch.float32 and t.shape == shape and t.device == x.device and t.is_contiguous(),
                lambda: f"{name} must be contiguous float32 of shape {shape} on the device of {x_name} ({x.device}), "
                        f"got {t.dtype} {tuple(t.shape)} on {t.device}")


def check_rng_state(rng_state, x: torch.Tensor, x_name: str = "x") -> None:
    """None, or the (seed, offset) int64 tensor of an RNGState on x's device."""
    check_vector(rng_state, "rng_state", x, 2, torch.int64, optional=True, x_name=x_name)


def check_rng_ints(seed: int, offset: int) -> None:
    require(0 <= seed <= MAX_SEED, lambda: f"seed must be an int in [0, 2**63 - 1], got {seed}")
    require(0 <= offset <= MAX_SEED, lambda: f"offset must be an int in [0, 2**63 - 1], got {offset}")


def _compiling() -> bool:
    return torch.compiler.is_compiling()


def step_size_args(step_size, x: torch.Tensor, name: str = "step_size") -> tuple[float, torch.Tensor | None]:
    """(scalar h, per-chain h or None) from a positive float or a tensor of shape (), (1,) or (B,).

    Tensor values are checked when that needs no host-device sync (CPU tensors,
    outside torch.compile); CUDA step sizes are checked once by the samplers.
    """
    chains = x.shape[0]
    if isinstance(step_size, torch.Tensor):
        if step_size.device != x.device:
            raise ValueError(f"{name} must be on the device of x ({x.device}), got {step_size.device}")
        if not step_size.is_floating_point():
            raise TypeError(f"{name} must be a floating tensor, got {step_size.dtype}")
        if step_size.numel() == 1 and step_size.dim() <= 1:
            per_chain = step_size.reshape(1).float().expand(chains).contiguous()
        elif step_size.shape == (chains,):
            per_chain = step_size.float().contiguous()
        else:
            raise ValueError(f"{name} must be a float or a tensor of shape () or ({chains},), "
                             f"got {tuple(step_size.shape)}")
        if per_chain.device.type == "cpu" and not _compiling():
            if not bool(torch.isfinite(per_chain).all()) or bool((per_chain <= 0).any()):
                raise ValueError(f"{name} must be finite and > 0 for every chain")
        return 1.0, per_chain
    if isinstance(step_size, bool) or not isinstance(step_size, (int, float)):
        raise TypeError(f"{name} must be a float or a tensor, got {type(step_size).__name__}")
    if not math.isfinite(step_size) or step_size <= 0:
        raise ValueError(f"{name} must be finite and > 0, got {step_size}")
    return float(step_size), None


def rng_args(seed, offset: int, x: torch.Tensor) -> tuple[int, int, torch.Tensor | None]:
    """(seed, offset, rng_state) from an int seed, or from an RNGState tensor of shape (2,)."""
    if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset <= MAX_SEED:
        raise ValueError(f"offset must be an int in [0, 2**63 - 1], got {offset!r}")
    if isinstance(seed, torch.Tensor):
        if seed.dtype != torch.int64 or seed.shape != (2,):
            raise ValueError(f"seed as a tensor must be an RNGState.state: int64 of shape (2,), got {seed.dtype} "
                             f"{tuple(seed.shape)}")
        if seed.device != x.device:
            raise ValueError(f"seed (RNG state) must be on the device of x ({x.device}), got {seed.device}")
        return 0, offset, seed
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be an int in [0, 2**63 - 1] or an RNGState.state tensor, got {seed!r}")
    return seed, offset, None


def clamp_args(clamp) -> tuple[float | None, float | None]:
    if clamp is None:
        return None, None
    try:
        lo, hi = clamp
    except (TypeError, ValueError):
        raise ValueError(f"clamp must be a (lo, hi) pair, got {clamp!r}") from None
    lo = None if lo is None else float(lo)
    hi = None if hi is None else float(hi)
    if lo is not None and hi is not None and not lo <= hi:
        raise ValueError(f"clamp must satisfy lo <= hi, got ({lo}, {hi})")
    return lo, hi


def positive_float(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)
