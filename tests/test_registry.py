"""One harness over the op registry: every declared op, on every backend that runs here, in every state
dtype, against its reference (the ``fastgen_torch`` op), plus opcheck (all its tests),
``torch.compile(fullgraph=True)``, gradcheck where a backward is declared, and bad input.

A new op gets all of this by being declared (fastgen/ops/<loop>.py) and giving inputs in its
loop's test file: ``SAMPLES = {op_name: fn(device, dtype) -> [Sample, ...]}`` in tests/test_<loop>.py.
"""

import importlib
import re

import pytest
import torch
from conftest import Sample, cpu_backends, cuda_backends

from fastgen.ops import REGISTRY

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
TOL = {torch.float32: dict(rtol=1e-4, atol=1e-4), torch.float16: dict(rtol=2e-3, atol=2e-3),
       torch.bfloat16: dict(rtol=2e-2, atol=2e-2)}
INTERPRETER_MAX = 20_000  # elements; bigger samples take minutes in Triton's interpreter


def samples_of(name: str, device, dtype) -> list[Sample]:
    module = importlib.import_module(f"test_{REGISTRY[name].loop}")
    table = getattr(module, "SAMPLES", {})
    if name not in table:
        pytest.fail(f"op {name} has no SAMPLES entry in tests/test_{REGISTRY[name].loop}.py")
    return table[name](device, dtype)


def pairs() -> list[tuple[str, str]]:
    """(device, backend) pairs that run here, the reference excluded."""
    return [("cpu", b) for b in cpu_backends() if b != "torch"] + [("cuda", b) for b in cuda_backends() if b != "torch"]


def backends_with_reference() -> list[tuple[str, str]]:
    return pairs() + [("cpu", "torch")] + ([("cuda", "torch")] if cuda_backends() else [])


def clone(value):
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], torch.Tensor):
        return [v.clone() for v in value]
    return value


def prepared(sample: Sample) -> dict:
    kwargs = {k: clone(v) for k, v in sample.kwargs.items()}
    for name in sample.poison:
        targets = kwargs[name] if isinstance(kwargs[name], list) else [kwargs[name]]
        for t in targets:
            t.fill_(float("nan"))
    return kwargs


def as_list(out) -> list:
    """An op's return value as a list of its outputs (none for an in-place op)."""
    return [] if out is None else list(out if isinstance(out, tuple) else (out,))


def call(name: str, backend: str, kwargs: dict):
    """(outputs, mutated arguments) of one call."""
    out = REGISTRY[name](backend=backend, **kwargs)
    return as_list(out), [kwargs[m] for m in REGISTRY[name].mutated if kwargs.get(m) is not None]


def flat(values) -> list[torch.Tensor]:
    result = []
    for v in values:
        result.extend(v if isinstance(v, list) else [v])
    return result


def skip_unsupported(device, backend, dtype, sample=None):
    if backend == "triton" and device == "cpu":
        if dtype == torch.bfloat16:
            pytest.skip("Triton's CPU interpreter mishandles bfloat16")
        if sample is not None and max((v.numel() for v in flat(sample.kwargs.values()) if isinstance(v, torch.Tensor)),
                                      default=0) > INTERPRETER_MAX:
            return True
    return False


def test_every_op_has_samples():
    for name in REGISTRY:
        assert samples_of(name, "cpu", torch.float32), f"{name}: no float32 sample"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("device,backend", pairs(), ids=lambda p: str(p))
@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_matches_reference(name, device, backend, dtype):
    skip_unsupported(device, backend, dtype)
    samples = samples_of(name, device, dtype)
    if not samples:
        pytest.skip(f"{name} takes no {dtype} state")
    ran = 0
    for sample in samples:
        if skip_unsupported(device, backend, dtype, sample):
            continue
        got_out, got_mut = call(name, backend, prepared(sample))
        want_out, want_mut = call(name, "torch", prepared(sample))
        for got, want in zip(flat(got_out + got_mut), flat(want_out + want_mut), strict=True):
            if got.dtype == torch.bool:
                assert torch.equal(got, want), f"{name} {sample}"
            else:
                torch.testing.assert_close(got, want, **TOL.get(dtype, TOL[torch.float32]), msg=f"{name} {sample}")
        mutated = [m for m in REGISTRY[name].mutated if sample.kwargs.get(m) is not None]
        written = dict(zip(mutated, got_mut, strict=True))
        for arg in sample.poison:
            for t in flat([written[arg]]):
                assert not t.isnan().any(), f"{name}: {arg} has unwritten (NaN-poisoned) elements"
        ran += 1
    assert ran, "no sample ran"


def first_sample(name, device="cpu") -> Sample:
    return samples_of(name, device, torch.float32)[0]


def namespaces() -> list[tuple[str, str]]:
    """(op, backend) pairs, one backend per registered namespace that runs here."""
    backends = [b for b in ("cpu", "triton") if b in cpu_backends()] + ["torch"]
    return [(name, b) for name in sorted(REGISTRY) for b in backends]


@pytest.mark.parametrize("name,backend", namespaces())
def test_opcheck(name, backend):
    op = REGISTRY[name]
    for sample in samples_of(name, "cpu", torch.float32)[:2]:
        if skip_unsupported("cpu", backend, torch.float32, sample):
            continue
        torch.library.opcheck(op.overload(backend), op.positional(prepared(sample)))


@pytest.mark.parametrize("name,backend", namespaces())
def test_compile_fullgraph(name, backend):
    op = REGISTRY[name]
    sample = first_sample(name)
    torch._dynamo.reset()

    def run(kwargs):
        out = op(backend=backend, **kwargs)
        return out

    compiled = torch.compile(run, fullgraph=True, backend="aot_eager")
    kwargs_eager, kwargs_compiled = prepared(sample), prepared(sample)
    eager_out, compiled_out = run(kwargs_eager), compiled(kwargs_compiled)
    wanted, got = flat(as_list(eager_out)), flat(as_list(compiled_out))
    wanted += flat([kwargs_eager[m] for m in op.mutated if kwargs_eager.get(m) is not None])
    got += flat([kwargs_compiled[m] for m in op.mutated if kwargs_compiled.get(m) is not None])
    for g, w in zip(got, wanted, strict=True):
        assert torch.equal(g, w), f"{name} on {backend}: compiled result differs from eager"


def with_backward() -> list[tuple[str, str]]:
    return [(n, b) for n, b in namespaces() if REGISTRY[n].backward is not None]


@pytest.mark.filterwarnings("ignore:Input #:UserWarning")
@pytest.mark.parametrize("name,backend", with_backward())
def test_gradcheck(name, backend):
    """gradcheck of the declared backward. The kernels take float32/16/bf16 states, not float64, so the
    finite differences run in float32 (eps 1e-2, tolerances to match); the gradients of every backend
    must also equal the reference's."""
    op = REGISTRY[name]
    sample = first_sample(name)
    kwargs = prepared(sample)
    if sample.grad is not None:
        inputs = list(sample.grad)
    else:
        inputs = [n for n in op.argument_names if isinstance(kwargs.get(n), torch.Tensor) and
                  kwargs[n].is_floating_point() and n not in op.mutated]
        inputs = [n for n in inputs if kwargs[n].shape == kwargs[inputs[0]].shape]
    # Tensor[] arguments travel flattened: gradcheck takes a tuple of tensors.
    sizes = [len(kwargs[n]) if isinstance(kwargs[n], list) else None for n in inputs]
    tensors = [t.detach().clone().requires_grad_() for t in flat([kwargs[n] for n in inputs])]

    def packed(flat_tensors):
        values, i = {}, 0
        for n, size in zip(inputs, sizes, strict=True):
            values[n] = list(flat_tensors[i:i + size]) if size is not None else flat_tensors[i]
            i += 1 if size is None else size
        return {**kwargs, **values}

    def fn(*flat_tensors):
        out = op(backend=backend, **packed(flat_tensors))
        return tuple(flat(list(out))) if isinstance(out, tuple) else out

    def total(out):
        return sum(o.sum() for o in flat(out if isinstance(out, tuple) else (out,)) if o.requires_grad)

    assert torch.autograd.gradcheck(fn, tuple(tensors), eps=1e-2, atol=2e-3, rtol=2e-3, fast_mode=True)
    grads = torch.autograd.grad(total(fn(*tensors)), tensors)
    ref_tensors = [t.detach().clone().requires_grad_() for t in tensors]
    ref_grads = torch.autograd.grad(total(op(backend="torch", **packed(ref_tensors))), ref_tensors)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r)


def bad_variants(value: torch.Tensor):
    """(what, replacement) pairs that a check must reject or the op handle exactly as the reference does."""
    wrong_dtype = torch.float64 if value.is_floating_point() else torch.int32
    yield "dtype", value.to(wrong_dtype)
    yield "device", value.to("meta")
    yield "shape", value.unsqueeze(0).expand((2,) + tuple(value.shape)).contiguous() if value.dim() else \
        value.reshape(1, 1)


@pytest.mark.parametrize("device,backend", [p for p in backends_with_reference() if p[0] == "cpu"],
                         ids=lambda p: str(p))
@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_bad_input_names_the_argument_and_writes_nothing(name, device, backend):
    """Every tensor argument of a float32 sample, given the wrong dtype, device or shape: the op raises an
    error naming that argument and writes nothing, or it computes what the reference computes."""
    op = REGISTRY[name]
    sample = first_sample(name, device)
    if skip_unsupported(device, backend, torch.float32, sample):
        pytest.skip("sample too large for the interpreter")
    for arg in op.argument_names:
        value = sample.kwargs.get(arg)
        if not isinstance(value, torch.Tensor):
            continue
        for what, bad in bad_variants(value):
            kwargs = prepared(sample)
            kwargs[arg] = bad
            before = {m: kwargs[m].clone() for m in op.mutated if isinstance(kwargs.get(m), torch.Tensor)}
            try:
                got_out = as_list(REGISTRY[name](backend=backend, **kwargs))
            except (RuntimeError, ValueError, TypeError, IndexError, NotImplementedError) as err:
                message = str(err)
                assert re.search(rf"\b{arg}\b", message) or (arg == "x" and "state" in message), \
                    f"{name} on {backend}: {arg} with the wrong {what} raised an error not naming it: {message}"
                for m, t in before.items():
                    if kwargs[m] is not bad and kwargs[m].device.type != "meta":
                        assert torch.equal(kwargs[m].nan_to_num(), t.nan_to_num()), \
                            f"{name} on {backend}: {m} written although {arg} had the wrong {what}"
                continue
            reference = prepared(sample)
            reference[arg] = bad.clone()
            try:
                want_out, want_mut = call(name, "torch", reference)
            except (RuntimeError, ValueError, TypeError, IndexError):
                pytest.fail(f"{name} on {backend} accepted {arg} with the wrong {what}; the reference rejects it")
            got_mut = [kwargs[m] for m in op.mutated if kwargs.get(m) is not None]
            for g, w in zip(flat(got_out + got_mut), flat(want_out + want_mut), strict=True):
                assert g.device == w.device, f"{name} on {backend}: output on {g.device}, the reference's on {w.device}"
                if g.device.type != "meta":
                    torch.testing.assert_close(g.double(), w.double(), equal_nan=True, **TOL[torch.float32],
                                               msg=lambda m: f"{name} on {backend}: {arg} with the wrong {what}: {m}")


def test_keyword_call_follows_the_schema():
    for op in REGISTRY.values():
        required = [a.name for a in op.arguments if not a.has_default_value()]
        with pytest.raises(TypeError, match=required[0]):
            op()
        with pytest.raises(TypeError, match="not_an_argument"):
            op(not_an_argument=1)
