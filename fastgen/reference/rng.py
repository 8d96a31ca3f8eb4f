"""Philox4x32-10 in plain torch integer ops: the specification of fastgen's noise.

Key ``(lo32(seed), hi32(seed))``, counter ``(lo32(n), hi32(n), 0, 0)`` with
``n = offset + i`` for flat element ``i``. A uniform is lane 0 mapped as
``triton.language.rand`` does; a normal is Box-Muller's first output from
lanes 0 and 1, as ``triton.language.randn`` does. Values are held in int64
tensors, so 32-bit products are formed from 16-bit halves.
"""

from __future__ import annotations

import torch

_MASK32 = 0xFFFFFFFF
_ROUND_A = 0xD2511F53
_ROUND_B = 0xCD9E8D57
_KEY_A = 0x9E3779B9
_KEY_B = 0xBB67AE85
_UNIFORM_SCALE = 4.6566127342e-10
_TWO_PI = 6.283185307179586


def _mulhilo(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low 32 bits of a * b for a 32-bit constant a and 32-bit values b."""
    p_hi = a * (b >> 16)  # < 2^48
    p_lo = a * (b & 0xFFFF)  # < 2^48
    hi = (p_hi + (p_lo >> 16)) >> 16
    lo = (((p_hi & 0xFFFF) << 16) + p_lo) & _MASK32
    return hi, lo


def _seed_words(seed):
    if isinstance(seed, torch.Tensor):
        return seed & _MASK32, (seed >> 32) & _MASK32
    return seed & _MASK32, (seed >> 32) & _MASK32


def counters(numel: int, offset, device, rng_state: torch.Tensor | None = None):
    """(seed override or None, int64 counters offset + i), honouring a device rng_state."""
    idx = torch.arange(numel, dtype=torch.int64, device=device)
    if rng_state is not None:
        return rng_state[0], idx + (rng_state[1] + offset)
    return None, idx + offset


def philox_lanes01(seed, n: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Lanes 0 and 1 of Philox4x32-10 at counters n (int64 tensor), as int64 in [0, 2^32)."""
    c0 = n & _MASK32
    c1 = (n >> 32) & _MASK32
    c2 = torch.zeros_like(n)
    c3 = torch.zeros_like(n)
    k0, k1 = _seed_words(seed)
    for _ in range(10):
        hi0, lo0 = _mulhilo(_ROUND_A, c0)
        hi2, lo2 = _mulhilo(_ROUND_B, c2)
        c0, c1, c2, c3 = hi2 ^ c1 ^ k0, lo2, hi0 ^ c3 ^ k1, lo0
        k0 = (k0 + _KEY_A) & _MASK32
        k1 = (k1 + _KEY_B) & _MASK32
    return c0, c1


def uint_to_uniform(lane: torch.Tensor) -> torch.Tensor:
    """Uniform in [0, 1): the lane read as int32, negatives mapped by ~v, times 4.6566127342e-10."""
    v = torch.where(lane >= 2**31, lane - 2**32, lane)
    v = torch.where(v < 0, -v - 1, v)
    return v.to(torch.float32) * _UNIFORM_SCALE


def uniform_at(seed, n: torch.Tensor) -> torch.Tensor:
    lane0, _ = philox_lanes01(seed, n)
    return uint_to_uniform(lane0)


def normal_at(seed, n: torch.Tensor) -> torch.Tensor:
    lane0, lane1 = philox_lanes01(seed, n)
    u1 = uint_to_uniform(lane0).clamp_min(1.0e-7)
    theta = uint_to_uniform(lane1) * _TWO_PI
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(theta)


def philox_fill_(out: torch.Tensor, seed: int, offset: int, rng_state: torch.Tensor | None, normal: bool):
    """out[i] <- uniform (or normal) at counter offset + i."""
    state_seed, n = counters(out.numel(), offset, out.device, rng_state)
    key = seed if state_seed is None else state_seed
    values = normal_at(key, n) if normal else uniform_at(key, n)
    out.copy_(values.view(out.shape))
    return out
