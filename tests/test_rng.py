"""One noise stream on every backend: uniforms bit-exact, normals within 2e-6."""

import pytest
import torch
from conftest import Sample, run_on

import fastgen
from fastgen.core.rng import RNGState, reserve, resolve_seed
from fastgen.reference import rng as ref

SIZES = [0, 1, 3, 1000003]
SEEDS_OFFSETS = [(0, 0), (123456789, 17), (2**40 + 3, 2**34 - 5), (2**63 - 1, 2**33)]  # 2**34: counter 2**32


def reference(n, seed, offset, normal):
    out = torch.empty(n)
    ref.philox_fill_(out, seed, offset, None, normal)
    return out


def test_reference_matches_known_philox_vector():
    # Philox4x32-10 known answer (Random123 kat_vectors): key (0, 0), counter 0.
    lanes = ref.philox4x32(0, torch.zeros(1, dtype=torch.int64))
    assert [int(v) for v in lanes] == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("seed,offset", SEEDS_OFFSETS)
def test_uniforms_bit_exact(device_backend, n, seed, offset):
    device, backend = device_backend
    out = torch.full((n,), float("nan"), device=device)
    run_on(backend, fastgen.ops.philox_fill_, out, seed, offset)
    assert torch.equal(out.cpu(), reference(n, seed, offset, False))


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("seed,offset", SEEDS_OFFSETS)
def test_normals_within_2e6(device_backend, n, seed, offset):
    device, backend = device_backend
    out = torch.full((n,), float("nan"), device=device)
    run_on(backend, fastgen.ops.philox_fill_, out, seed, offset, normal=True)
    assert not out.isnan().any()
    if n:
        assert (out.cpu() - reference(n, seed, offset, True)).abs().max() <= 2e-6


def test_uniforms_and_normals_have_the_right_law():
    u = fastgen.ops.uniform(200_000, 5)
    z = fastgen.ops.normal(200_000, 5)
    assert 0.0 <= float(u.min()) and float(u.max()) < 1.0
    # 5-sigma Monte-Carlo bounds for the mean and variance.
    assert abs(float(u.mean()) - 0.5) < 5 * (1 / 12) ** 0.5 / 200_000**0.5
    assert abs(float(z.mean())) < 5 / 200_000**0.5
    assert abs(float(z.var()) - 1.0) < 5 * 2**0.5 / 200_000**0.5


def test_offsets_partition_one_stream():
    whole = fastgen.ops.normal(1000, 9)
    parts = torch.cat([fastgen.ops.normal(300, 9, 0), fastgen.ops.normal(700, 9, 300)])
    assert torch.equal(whole, parts)


def test_device_state_matches_explicit_and_advances(device_backend):
    device, backend = device_backend
    rng = RNGState(seed=77, device=device, offset=1000)
    a = torch.empty(64, device=device)
    run_on(backend, fastgen.ops.philox_fill_, a, rng.state, 5, normal=True)
    assert torch.equal(a, run_on(backend, fastgen.ops.normal, 64, 77, 1005, device=device))
    rng.advance_(64)
    b = torch.empty(64, device=device)
    run_on(backend, fastgen.ops.philox_fill_, b, rng.state, 5, normal=True)
    assert torch.equal(b, run_on(backend, fastgen.ops.normal, 64, 77, 1069, device=device))
    assert not torch.equal(a, b)


def test_reserve_starts_the_next_call_on_a_fresh_counter():
    assert [reserve(n) for n in (0, 1, 3, 4, 5, 8, 1001)] == [0, 4, 4, 4, 8, 8, 1004]
    # Normals at positions 0..4 read counters 0 and 1; uniforms after reserve(5) start at counter 2.
    lanes = ref.philox4x32(3, torch.tensor([2]))
    first_uniform = fastgen.ops.uniform(1, 3, reserve(5))
    assert torch.equal(first_uniform, ref.uint_to_uniform(lanes[0]))


def test_resolve_seed():
    assert resolve_seed(5) == 5
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert resolve_seed(generator=g1) == resolve_seed(generator=g2)
    with pytest.raises(ValueError, match="seed or generator"):
        resolve_seed(1, g1)
    with pytest.raises(ValueError, match="seed must be in"):
        resolve_seed(-1)
    with pytest.raises(TypeError, match="seed must be an int"):
        resolve_seed(1.5)


def test_fill_rejects_bad_arguments():
    with pytest.raises(TypeError, match="out must be"):
        fastgen.ops.philox_fill_(torch.empty(3, dtype=torch.float64), 0)
    with pytest.raises(ValueError, match="seed must be"):
        fastgen.ops.philox_fill_(torch.empty(3), -4)
    with pytest.raises(ValueError, match="offset must be"):
        fastgen.ops.philox_fill_(torch.empty(3), 0, -1)


# ---------------------------------------------------------------- registry harness inputs (tests/test_registry.py)


def _fill_samples(device, dtype):
    """philox_fill_ writes float32 whatever the state dtype: samples for float32 only."""
    if dtype != torch.float32:
        return []
    return [Sample(poison=("out",), out=torch.empty(n, device=device), seed=seed, offset=offset, normal=normal)
            for n, seed, offset in [(0, 1, 0), (1, 3, 5), (3, 2**40 + 3, 2**33 - 1), (1000003, 7, 13)]
            for normal in (False, True)]


SAMPLES = {"philox_fill_": _fill_samples}
