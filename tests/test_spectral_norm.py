"""The grouped spectral-norm power iteration (a Tensor[] op with a backward) and fastgen.nn over it.

Parity of every backend with the reference, opcheck, compile, gradcheck and bad input come from the registry
harness (tests/test_registry.py) via SAMPLES. Here: the maths (convergence to the top singular value), the
drop-in against torch's own parametrization step by step, state dicts both ways, and the grouped module."""

import copy

import pytest
import torch
from conftest import Sample, cpu_backends
from torch import nn
from torch.nn.utils import parametrizations

import fastgen.nn as fnn
from fastgen.ops import REGISTRY, spectral_norm_power


def _matrices(device, dtype, shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    weights = [torch.randn(s, generator=g).to(device, dtype) for s in shapes]
    us = [torch.randn(s[0], generator=g).to(device, dtype) for s in shapes]
    vs = [torch.randn(s[1], generator=g).to(device, dtype) for s in shapes]
    return weights, us, vs


def _spectral_samples(device, dtype):
    out = []
    # first sample: n_power_iterations = 0, where sigma = u^T W v is linear in W and gradcheck applies
    # (with iterations, u and v depend on W but the backward holds them constant, as torch's does)
    for shapes, iterations in [([(5, 3), (4, 7)], 0), ([(5, 3), (1, 1), (0, 4), (3, 0), (1000, 1003)], 1),
                               ([(130, 17), (2, 300)], 3), ([], 1)]:
        weights, us, vs = _matrices(device, dtype, shapes)
        out.append(Sample(weights=weights, us=us, vs=vs, n_power_iterations=iterations, eps=1e-12, grad=("weights",)))
    weights, us, vs = _matrices(device, dtype, [(9, 4)] * 30, seed=1)  # more matrices than a CUDA launch takes
    out.append(Sample(weights=weights, us=us, vs=vs, n_power_iterations=2, eps=1e-3, grad=("weights",)))
    return out


SAMPLES = {"spectral_norm_power": _spectral_samples}


@pytest.mark.parametrize("backend", cpu_backends())
def test_power_iteration_converges_to_the_top_singular_value(backend):
    weights, us, vs = _matrices("cpu", torch.float32, [(40, 30), (7, 64), (64, 3)])
    # singular values 3, then at most 1.5: each step shrinks the error by (1.5 / 3)^2, so 40 steps reach float32
    spectra = [torch.cat([torch.tensor([3.0]), torch.linspace(1.5, 0.1, min(w.shape) - 1)]) for w in weights]
    weights = [torch.linalg.svd(w, full_matrices=False).U @ torch.diag(s) @ torch.linalg.svd(w, full_matrices=False).Vh
               for w, s in zip(weights, spectra, strict=True)]
    sigmas, _, _ = REGISTRY["spectral_norm_power"](weights=weights, us=us, vs=vs, n_power_iterations=40, eps=1e-12,
                                                   backend=backend)
    torch.testing.assert_close(sigmas, torch.stack([torch.linalg.matrix_norm(w, 2) for w in weights]), rtol=1e-5,
                               atol=1e-5)


@pytest.mark.parametrize("backend", cpu_backends())
def test_grouped_call_equals_one_call_per_matrix(backend):
    weights, us, vs = _matrices("cpu", torch.float32, [(5, 3), (64, 100), (1, 9), (300, 2)])
    op = REGISTRY["spectral_norm_power"]
    grouped = op(weights=weights, us=us, vs=vs, n_power_iterations=2, eps=1e-12, backend=backend)
    for t in range(len(weights)):
        alone = op(weights=weights[t:t + 1], us=us[t:t + 1], vs=vs[t:t + 1], n_power_iterations=2, eps=1e-12,
                   backend=backend)
        assert torch.equal(grouped[0][t:t + 1], alone[0])
        assert torch.equal(grouped[1][t], alone[1][0]) and torch.equal(grouped[2][t], alone[2][0])


def _layer(kind: str) -> nn.Module:
    torch.manual_seed(3)
    return {"linear": lambda: nn.Linear(20, 30), "conv": lambda: nn.Conv2d(3, 8, 3),
            "conv_transpose": lambda: nn.ConvTranspose2d(4, 6, 3), "conv1d": lambda: nn.Conv1d(2, 5, 4)}[kind]()


def _input(kind: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(4)
    shape = {"linear": (6, 20), "conv": (2, 3, 9, 9), "conv_transpose": (2, 4, 5, 5), "conv1d": (3, 2, 11)}[kind]
    return torch.randn(shape, generator=g)


@pytest.mark.parametrize("kind", ["linear", "conv", "conv_transpose", "conv1d"])
def test_drop_in_matches_torch_step_by_step(kind):
    ours, theirs = _layer(kind), _layer(kind)
    torch.manual_seed(5)
    parametrizations.spectral_norm(theirs)
    torch.manual_seed(5)
    fnn.spectral_norm(ours)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    for key, value in theirs.state_dict().items():  # same draws from the global RNG, 15 steps at init
        torch.testing.assert_close(ours.state_dict()[key], value, rtol=1e-5, atol=1e-6)
    ours.load_state_dict(theirs.state_dict())  # from here on the same u and v
    x = _input(kind)
    for _ in range(4):
        y_ours, y_theirs = ours(x), theirs(x)
        torch.testing.assert_close(y_ours, y_theirs, rtol=1e-5, atol=1e-6)
        y_ours.square().sum().backward()
        y_theirs.square().sum().backward()
        for key in ("parametrizations.weight.0._u", "parametrizations.weight.0._v"):
            torch.testing.assert_close(ours.state_dict()[key], theirs.state_dict()[key], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.parametrizations.weight.original.grad,
                               theirs.parametrizations.weight.original.grad, rtol=1e-4, atol=1e-5)
    ours.eval(), theirs.eval()
    u = ours.parametrizations.weight[0]._u.clone()
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-6)
    assert torch.equal(ours.parametrizations.weight[0]._u, u), "eval mode must not iterate"


def test_state_dict_loads_into_torch_and_back():
    ours, theirs = _layer("conv"), _layer("conv")
    fnn.spectral_norm(ours)
    parametrizations.spectral_norm(theirs)
    x = _input("conv")
    ours(x)  # a training step moves u and v
    theirs.load_state_dict(ours.state_dict())
    ours.eval(), theirs.eval()
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-6)
    theirs.train()
    theirs(x)
    ours.load_state_dict(theirs.state_dict())
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-6)


def _discriminator() -> nn.Sequential:
    torch.manual_seed(6)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.LeakyReLU(0.2), nn.Conv2d(8, 16, 4, stride=2),
                         nn.LeakyReLU(0.2), nn.Flatten(), nn.Linear(16 * 3 * 3, 32), nn.LeakyReLU(0.2),
                         nn.Linear(32, 1))


@pytest.mark.parametrize("scale_inputs", [True, False])
def test_grouped_module_equals_one_parametrization_per_layer(scale_inputs):
    grouped, single = _discriminator(), _discriminator()
    torch.manual_seed(7)
    group = fnn.SpectralNorm.apply(grouped, scale_inputs=scale_inputs)
    torch.manual_seed(7)
    for module in single:
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            fnn.spectral_norm(module)
    assert grouped.state_dict().keys() == single.state_dict().keys()
    x = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(8))
    for _ in range(3):
        y_grouped, y_single = grouped(x), single(x)
        torch.testing.assert_close(y_grouped, y_single, rtol=1e-5, atol=1e-6)
        y_grouped.square().sum().backward()
        y_single.square().sum().backward()
    for (name, a), b in zip(grouped.named_parameters(), single.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6, msg=name)
    torch.testing.assert_close(grouped.state_dict(), single.state_dict(), rtol=1e-5, atol=1e-6)
    grouped.eval(), single.eval()
    before = copy.deepcopy(grouped.state_dict())
    torch.testing.assert_close(grouped(x), single(x), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grouped.state_dict(), before, rtol=0, atol=0)  # eval: no iteration
    # a weight read outside the model's forward is W / sigma
    layer = grouped[7]
    sigma = group.sigmas()[id(layer.parametrizations.weight[0])]
    torch.testing.assert_close(layer.weight, layer.parametrizations.weight.original / sigma)


def test_grouped_forward_runs_one_power_iteration_op():
    model = _discriminator()
    fnn.SpectralNorm.apply(model)
    calls = []

    class Counting(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if "spectral_norm_power" in str(func):
                calls.append(func)
            return func(*args, **(kwargs or {}))

    with Counting():
        model(torch.randn(2, 1, 8, 8))
    assert len(calls) == 1, f"expected one grouped op per forward, got {len(calls)}"


@pytest.mark.parametrize("lipschitz", [0.5, 0.97, 1.0])
def test_lipschitz_coefficient_scales_only_layers_above_it(lipschitz):
    model = nn.Sequential(nn.Linear(6, 6), nn.Linear(6, 6))
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(6) * 0.3)  # sigma 0.3: below every c, left alone
        model[1].weight.copy_(torch.eye(6) * 2.0)  # sigma 2: scaled to c
    fnn.SpectralNorm.apply(model, lipschitz=lipschitz, n_power_iterations=5)
    model.eval()
    torch.testing.assert_close(model[0].weight, torch.eye(6) * 0.3)
    torch.testing.assert_close(model[1].weight, torch.eye(6) * lipschitz)
    x = torch.randn(4, 6)
    torch.testing.assert_close(model(x), model[1].bias + (model[0].bias + x @ (torch.eye(6) * 0.3)) * lipschitz)


def test_remove_keeps_the_normalized_weights():
    model = _discriminator()
    group = fnn.SpectralNorm.apply(model)
    model.eval()
    x = torch.randn(3, 1, 8, 8)
    y = model(x)
    group.remove()
    assert "parametrizations.weight.original" not in "".join(model.state_dict())
    torch.testing.assert_close(model(x), y)


def test_bad_input_names_the_argument():
    w, u, v = torch.randn(3, 4), torch.randn(3), torch.randn(4)
    with pytest.raises(ValueError, match=r"weights\[0\] must be a matrix"):
        spectral_norm_power([torch.randn(3, 4, 2)], [u], [v])
    with pytest.raises(ValueError, match="n_power_iterations"):
        spectral_norm_power([w], [u], [v], n_power_iterations=-1)
    with pytest.raises(ValueError, match="eps"):
        spectral_norm_power([w], [u], [v], eps=0.0)
    with pytest.raises(ValueError, match=r"us\[0\]"):
        spectral_norm_power([w], [torch.randn(4)], [v])
    with pytest.raises(ValueError, match="lipschitz"):
        fnn.SpectralNorm.apply(nn.Linear(3, 3), lipschitz=1.5)
    with pytest.raises(ValueError, match="lipschitz"):
        fnn.SpectralNorm.apply(nn.Linear(3, 3), lipschitz=0.0)
    with pytest.raises(ValueError, match="n_power_iterations"):
        fnn.spectral_norm(nn.Linear(3, 3), n_power_iterations=0)
    with pytest.raises(IndexError, match="dim"):
        fnn.spectral_norm(nn.Linear(3, 3), dim=2)
    with pytest.raises(ValueError, match="no parameter or buffer named 'kernel'"):
        fnn.spectral_norm(nn.Linear(3, 3), name="kernel")
    with pytest.raises(ValueError, match="no layer"):
        fnn.SpectralNorm.apply(nn.ReLU())


def test_applying_twice_says_the_model_is_normalized_already():
    """The second SpectralNorm.apply said "model has no layer of type Linear..." of a model full of them."""
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
    fnn.SpectralNorm.apply(model)
    with pytest.raises(ValueError, match="spectrally normalized already"):
        fnn.SpectralNorm.apply(model)
