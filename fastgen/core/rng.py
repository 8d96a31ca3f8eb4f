"""Seeds and the device-resident RNG state of fastgen's counter-based noise.

Every fastgen op draws from one Philox4x32-10 stream keyed by a 63-bit seed:
flat element ``i`` of a call takes stream position ``offset + i``, and each
call reserves as many positions as it draws. Position ``n`` is value ``n % 4``
of Philox counter ``n // 4`` (``triton.language.randn4x`` / ``rand4x``), so one
Philox call serves four values. A result depends on (seed, offset) only, on
every backend. Samplers take ``seed=`` (an int) or ``generator=`` (a
``torch.Generator``); with neither, one seed is drawn from torch's global RNG.
"""

from __future__ import annotations

import torch

MAX_SEED = 2**63 - 1


def resolve_seed(seed: int | None = None, generator: torch.Generator | None = None) -> int:
    """The 63-bit seed of a call: `seed` itself, or one drawn from `generator` (else torch's global RNG)."""
    if seed is not None and generator is not None:
        raise ValueError("give seed or generator, not both")
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        if not 0 <= seed <= MAX_SEED:
            raise ValueError(f"seed must be in [0, 2**63 - 1], got {seed}")
        return seed
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    device = generator.device if generator is not None else "cpu"
    # One draw (a host read once per sampler call, never inside its loop).
    return int(torch.randint(0, MAX_SEED, (1,), generator=generator, device=device).item())


def reserve(n: int) -> int:
    """Positions to reserve for a call drawing n values: n rounded up to whole counters.

    Needed only where uniforms follow normals (MALA's accept after its proposal):
    a normal and a uniform must never read the same Philox lane.
    """
    return (n + 3) // 4 * 4


def hmc_layout(numel: int, chains: int) -> tuple[int, int]:
    """The stream layout of one HMC transition of `chains` chains of `numel` elements in all (fastgen.mcmc.hmc and
    the gmm_hmc_ op; kernels/hmc.h): (positions it uses, R(numel) + 2 R(chains): the momentum, the step-size jitter,
    the accept uniforms; where the accept uniforms start, R(numel) + R(chains))."""
    return reserve(numel) + 2 * reserve(chains), reserve(numel) + reserve(chains)


class RNGState:
    """(seed, offset) kept in a small int64 tensor on the device.

    Pass ``rng.state`` as the ``seed`` of an op: the kernel reads the seed and
    adds the op's ``offset`` to ``state[1]`` on the device. Advancing with
    :meth:`advance_` is a device op too, so a loop captured in a CUDA graph
    draws fresh noise at every replay::

        rng = fastgen.rng.RNGState(seed=0, device="cuda")
        with torch.cuda.graph(g):
            fastgen.ops.ula_step_(x, score, 1e-2, rng.state, offset=0)
            rng.advance_(x.numel())
    """

    def __init__(self, seed: int | None = None, device: torch.device | str = "cpu", *, generator=None, offset=0):
        value = resolve_seed(seed, generator)
        if offset < 0:
            raise ValueError(f"offset must be >= 0, got {offset}")
        self.state = torch.tensor([value, offset], dtype=torch.int64, device=device)

    def advance_(self, n: int) -> RNGState:
        """Reserve n stream positions: state[1] += n, on the device."""
        self.state[1:].add_(n)
        return self

    def __repr__(self) -> str:
        return f"RNGState(device={self.state.device})"
