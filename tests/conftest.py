"""Shared fixtures. Without CUDA the Triton kernels run in Triton's interpreter
(TRITON_INTERPRET must be set before triton.jit sees the kernels)."""

import contextlib
import io
import os
from typing import NamedTuple

# The torch reference's recorded bit-identity hashes (tests/test_bit_identity.py) come from ATen's AVX2 kernels;
# pinning them gives the same bits on AVX-512 machines. Read when torch loads, so it is set first.
os.environ.setdefault("ATEN_CPU_CAPABILITY", "avx2")
# Under pytest-xdist each worker gets one thread: two workers with two OpenMP threads each on two cores spin-wait
# on each other (tests ran 3-6x slower than alone).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import fastgen  # noqa: E402
from fastgen.core import backend as _backend  # noqa: E402


def load_example(name: str):
    """examples/<name>.py as a module (the examples are scripts, not a package)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cpu_backends() -> list[str]:
    """Backends that run CPU tensors here (torch always; cpu when built; triton when interpreted)."""
    return [b for b in ("cpu", "triton", "torch") if _backend._usable(b, torch.device("cpu")) is None]


def cuda_backends() -> list[str]:
    if not torch.cuda.is_available():
        return []
    return [b for b in ("cuda", "triton", "torch") if _backend._usable(b, torch.device("cuda")) is None]


def device_backends() -> list[tuple[str, str]]:
    """(device, backend) pairs to test against the reference."""
    return [("cpu", b) for b in cpu_backends() if b != "torch"] + [("cuda", b) for b in cuda_backends() if b != "torch"]


@pytest.fixture(params=device_backends(), ids=lambda p: f"{p[0]}-{p[1]}")
def device_backend(request):
    return request.param


def run_on(backend: str, fn, *args, **kwargs):
    with fastgen.use_backend(backend):
        return fn(*args, **kwargs)


class CliResult(NamedTuple):
    returncode: int
    stdout: str
    stderr: str


def run_cli(*args, **_process_options) -> CliResult:
    """``fastgen ARGS`` in this process (``fastgen.cli.main``), with what a subprocess would show: its exit code,
    stdout and stderr. Tests that need a process of their own (signals, locks, torchrun, peak RSS) start one."""
    from fastgen.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    return CliResult(code, out.getvalue(), err.getvalue())


class Sample:
    """Inputs of one op call for the registry harness (tests/test_registry.py): keyword arguments of the
    op's schema; `poison` names in-place outputs filled with NaN first (every element must be written);
    `grad` names the arguments gradcheck differentiates (default: the floating tensors shaped like the first)."""

    def __init__(self, poison=(), grad=None, **kwargs):
        self.kwargs, self.poison, self.grad = kwargs, tuple(poison), grad

    def __repr__(self):
        shapes = {k: tuple(v.shape) for k, v in self.kwargs.items() if hasattr(v, "shape")}
        return f"Sample({shapes})"
