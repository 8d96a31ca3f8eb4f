"""Plain-PyTorch specification of the multi-tensor EMA op (same arguments as the registered op)."""

from __future__ import annotations


def ema_update_(averages, values, weight):
    """averages[t] <- averages[t] + weight (values[t] - averages[t]) for every t, in float32."""
    for average, value in zip(averages, values, strict=True):
        a = average.float()
        average.copy_(a + weight * (value.float() - a))
