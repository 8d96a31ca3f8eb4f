"""Philox4x32-10 in plain torch integer ops: the specification of fastgen's noise.

Flat element ``i`` of a call takes stream position ``n = offset + i``, and
value ``n`` is element ``n % 4`` of ``triton.language.rand4x`` /
``randn4x`` at counter ``n // 4``: key ``(lo32(seed), hi32(seed))``, counter
``(lo32(n // 4), hi32(n // 4), 0, 0)``, lanes ``l0..l3``. A uniform is lane
``n % 4`` mapped as ``triton.language.rand`` does; a normal is Box-Muller of
the lane pair ``(l0, l1)`` (for ``n % 4`` in 0, 1) or ``(l2, l3)`` (2, 3):
``r cos(theta)`` at even ``n``, ``r sin(theta)`` at odd ``n``. So one Philox
call serves four values. Values are held in int64 tensors, so 32-bit products
are formed from 16-bit halves.
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
    """(seed override or None, int64 stream positions offset + i), honouring a device rng_state."""
    idx = torch.arange(numel, dtype=torch.int64, device=device)
    if rng_state is not None:
        return rng_state[0], idx + (rng_state[1] + offset)
    return None, idx + offset


def philox4x32(seed, c: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The four lanes of Philox4x32-10 at counters c (int64 tensor), as int64 in [0, 2^32)."""
    c0 = c & _MASK32
    c1 = (c >> 32) & _MASK32
    c2 = torch.zeros_like(c)
    c3 = torch.zeros_like(c)
    k0, k1 = _seed_words(seed)
    for _ in range(10):
        hi0, lo0 = _mulhilo(_ROUND_A, c0)
        hi2, lo2 = _mulhilo(_ROUND_B, c2)
        c0, c1, c2, c3 = hi2 ^ c1 ^ k0, lo2, hi0 ^ c3 ^ k1, lo0
        k0 = (k0 + _KEY_A) & _MASK32
        k1 = (k1 + _KEY_B) & _MASK32
    return c0, c1, c2, c3


def uint_to_uniform(lane: torch.Tensor) -> torch.Tensor:
    """Uniform in [0, 1): the lane read as int32, negatives mapped by ~v, times 4.6566127342e-10."""
    v = torch.where(lane >= 2**31, lane - 2**32, lane)
    v = torch.where(v < 0, -v - 1, v)
    return v.to(torch.float32) * _UNIFORM_SCALE


def _counter(n: torch.Tensor) -> torch.Tensor:
    """Philox counter n // 4 of stream positions n taken as unsigned 64-bit (positions past 2**63 - 1 wrap to
    negative int64 here; a logical shift keeps the CPU and CUDA kernels' uint64 counter)."""
    return (n >> 2) & ((1 << 62) - 1)


def uniform_at(seed, n: torch.Tensor) -> torch.Tensor:
    """Uniforms at stream positions n: lane n % 4 of counter n // 4."""
    l0, l1, l2, l3 = philox4x32(seed, _counter(n))
    j = n & 3
    return uint_to_uniform(torch.where(j == 0, l0, torch.where(j == 1, l1, torch.where(j == 2, l2, l3))))


def normal_at(seed, n: torch.Tensor) -> torch.Tensor:
    """Normals at stream positions n: Box-Muller of counter n // 4's lane pair (n % 4) // 2."""
    l0, l1, l2, l3 = philox4x32(seed, _counter(n))
    upper = (n & 2) != 0
    u1 = uint_to_uniform(torch.where(upper, l2, l0)).clamp_min(1.0e-7)
    theta = uint_to_uniform(torch.where(upper, l3, l1)) * _TWO_PI
    r = torch.sqrt(-2.0 * torch.log(u1))
    return r * torch.where((n & 1) != 0, torch.sin(theta), torch.cos(theta))


def philox_fill_(out: torch.Tensor, seed: int, offset: int, rng_state: torch.Tensor | None, normal: bool):
    """out[i] <- uniform (or normal) at stream position offset + i."""
    state_seed, n = counters(out.numel(), offset, out.device, rng_state)
    key = seed if state_seed is None else state_seed
    values = normal_at(key, n) if normal else uniform_at(key, n)
    out.copy_(values.view(out.shape))
