"""Multi-tensor exponential moving average (one op over a list of tensors)."""

from __future__ import annotations

import math

import torch

from ._common import STATE_DTYPES, require
from ._registry import Loop

__all__ = ["ema_update_"]  # re-exported by fastgen.ops

loop = Loop("ema")


def _ema_update_shapes(a) -> None:
    require(len(a.averages) == len(a.values),
            lambda: f"averages and values must have the same length, got {len(a.averages)} and "
                    f"{len(a.values)}")
    require(math.isfinite(a.weight) and 0.0 <= a.weight <= 1.0,
            lambda: f"weight must be in [0, 1], got {a.weight}")
    for t, (average, value) in enumerate(zip(a.averages, a.values, strict=True)):
        first = a.averages[0]
        require(average.dtype in STATE_DTYPES,
                lambda: f"averages must be float32, float16 or bfloat16, got {average.dtype}", TypeError)
        require(average.device == first.device and average.dtype == first.dtype,
                lambda: f"averages must share one device and dtype: averages[{t}] is {average.dtype} on "
                        f"{average.device}, averages[0] {first.dtype} on {first.device}")
        require(value.device == average.device and value.dtype == average.dtype and
                value.shape == average.shape,
                lambda: f"values[{t}] must have the shape, dtype and device of averages[{t}] "
                        f"({tuple(average.shape)} {average.dtype} on {average.device}), got "
                        f"{tuple(value.shape)} {value.dtype} on {value.device}")
        require(average.is_contiguous() and value.is_contiguous(),
                lambda: f"averages[{t}] and values[{t}] must be contiguous")


_ema_update = loop.op("ema_update_(Tensor(a!)[] averages, Tensor[] values, float weight) -> ()",
                      shapes=_ema_update_shapes)


@torch.no_grad()
def ema_update_(averages: list[torch.Tensor], values: list[torch.Tensor], decay: float) -> list[torch.Tensor]:
    """Every average moves toward its value, in one fused pass over all of them:

        a_t <- a_t + (1 - decay) (v_t - a_t),   arithmetic in float32.

    ``averages`` and ``values`` are lists of contiguous float32/float16/bfloat16 tensors on one
    device, pairwise of one shape and dtype. Returns ``averages``."""
    if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.0 <= decay <= 1.0:
        raise ValueError(f"decay must be a number in [0, 1], got {decay!r}")
    averages, values = list(averages), [v.detach() for v in values]
    _ema_update(averages=averages, values=values, weight=1.0 - float(decay))
    return averages
