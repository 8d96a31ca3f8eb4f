"""The multi-tensor EMA op (a Tensor[] op) and fastgen.training.EMA over it. Parity on every backend,
opcheck, compile and bad input come from the registry harness (tests/test_registry.py) via SAMPLES."""

import pytest
import torch
from conftest import Sample

import fastgen
from fastgen.ops import ema_update_


def _pairs(device, dtype, sizes, seed=0):
    g = torch.Generator().manual_seed(seed)
    averages = [torch.randn(s, generator=g).to(device, dtype) for s in sizes]
    values = [torch.randn(s, generator=g).to(device, dtype) for s in sizes]
    return averages, values


def _ema_samples(device, dtype):
    out = []
    for sizes in [[(3, 5), (1,), (0,), (1000003,)], [(7,)], []]:
        averages, values = _pairs(device, dtype, sizes)
        out.append(Sample(averages=averages, values=values, weight=0.1))
    averages, values = _pairs(device, dtype, [(60, 2)] * 50 + [(3,)] * 5, seed=1)  # more pairs than a CUDA launch takes
    out.append(Sample(averages=averages, values=values, weight=1.0))
    return out


SAMPLES = {"ema_update_": _ema_samples}


def test_update_rule():
    averages, values = _pairs("cpu", torch.float32, [(4, 3), (5,)])
    want = [a + 0.25 * (v - a) for a, v in zip(averages, values, strict=True)]
    got = ema_update_([a.clone() for a in averages], values, decay=0.75)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w)


def test_bad_decay_and_mismatched_lists_write_nothing():
    averages, values = _pairs("cpu", torch.float32, [(4,), (5,)])
    before = [a.clone() for a in averages]
    with pytest.raises(ValueError, match="decay"):
        ema_update_(averages, values, decay=1.5)
    with pytest.raises(ValueError, match="same length"):
        ema_update_(averages, values[:1], decay=0.5)
    with pytest.raises(ValueError, match=r"values\[1\] must have the shape"):
        ema_update_(averages, [values[0], values[1][:2]], decay=0.5)
    assert all(torch.equal(a, b) for a, b in zip(averages, before, strict=True))


def test_training_ema_tracks_parameters():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    ema = fastgen.training.EMA(model.parameters(), decay=0.9, warmup=False)
    start = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update()
    for shadow, s, p in zip(ema.shadow, start, model.parameters(), strict=True):
        torch.testing.assert_close(shadow, s + 0.1 * (p.detach() - s))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_matches_torch_foreach_lerp(dtype):
    """Against PyTorch's own multi-tensor EMA (torch._foreach_lerp_, what the EMA helpers of most training
    code call) on the same inputs: equal up to one rounding of the state dtype."""
    averages, values = _pairs("cpu", dtype, [(64, 3, 3), (17,), (1000,)], seed=3)
    want = [a.clone() for a in averages]
    torch._foreach_lerp_(want, values, 0.01)
    got = ema_update_([a.clone() for a in averages], values, decay=0.99)
    tol = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}[dtype]
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=tol, atol=tol)
