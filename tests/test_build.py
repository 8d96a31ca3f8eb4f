"""The build, backends and optional pieces."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fastgen

ROOT = Path(__file__).resolve().parents[1]


def test_build_info():
    info = fastgen.build_info()
    if not info:
        pytest.skip("fastgen._C is not built")
    for key in ("compiler", "cxx_flags", "simd", "openmp", "cuda", "cuda_archs"):
        assert key in info
    assert info["cuda"] == (torch.version.cuda is not None and info["cuda_archs"] != "")


def test_backends_report_every_backend():
    status = fastgen.backends()
    assert list(status) == ["cuda", "triton", "cpu", "torch"]
    assert status["torch"] == "available"
    for name, why in status.items():
        assert why.startswith("available") or len(why) > 10, f"{name}: no reason given"


def test_backend_override_errors():
    with pytest.raises(ValueError, match="backend must be one of"):
        with fastgen.use_backend("gpu"):
            pass
    if not torch.cuda.is_available():
        with fastgen.use_backend("cuda"):
            with pytest.raises(RuntimeError, match="backend 'cuda' cannot run here"):
                fastgen.ops.uniform(4, 0)


def _run(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, **env}, timeout=300)


BLOCK = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name in {blocked!r}:
            raise ImportError("blocked for the test: " + name)
sys.meta_path.insert(0, Block())
"""


def test_import_without_compiled_ops_falls_back_to_torch():
    code = BLOCK.format(blocked={"fastgen._C"}) + """
import warnings
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    import fastgen, torch
print(len([x for x in w if "fastgen: running without" in str(x.message)]))
print(fastgen.backends()["cpu"][:20])
x = fastgen.langevin(torch.zeros(4, 2), score=lambda x: -x, n_steps=3, step_size=0.1, seed=0)
print(fastgen.ops._common.backend_for(x), x.shape)
"""
    out = _run(code, FASTGEN_BACKEND="", TRITON_INTERPRET="0")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split("\n")
    assert lines[0] == "1" and "fastgen._C did not" in lines[1] and lines[2].startswith("torch")


def test_import_without_triton():
    code = BLOCK.format(blocked={"triton"}) + """
import warnings
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    import fastgen
print(len(w), "triton is not installed" in fastgen.backends()["triton"])
"""
    out = _run(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1 True"


def test_fastgen_backend_environment_variable():
    out = _run("import fastgen, torch; x = torch.zeros(3); print(fastgen.ops._common.backend_for(x))",
               FASTGEN_BACKEND="torch")
    assert out.returncode == 0 and out.stdout.strip() == "torch", out.stderr
    out = _run("import fastgen, torch; fastgen.ops.uniform(3, 0)", FASTGEN_BACKEND="bogus")
    assert out.returncode != 0 and "FASTGEN_BACKEND must be one of" in out.stderr


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not found")
@pytest.mark.parametrize("source", sorted(p.name for p in (ROOT / "kernels").glob("*.cu")))
def test_cuda_kernels_compile_for_sm90(source, tmp_path):
    """kernels/*.cu include no torch header, so nvcc checks them on a machine with no GPU."""
    out = subprocess.run(["nvcc", "-std=c++17", "-arch=sm_90", "-c", str(ROOT / "kernels" / source), "-o",
                          str(tmp_path / "k.o")], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr


def _cuda_include() -> str | None:
    from glob import glob

    from torch.utils import cpp_extension

    for home in (os.environ.get("CUDA_HOME"), cpp_extension.CUDA_HOME, *sorted(glob("/usr/local/cuda*"))):
        if home and os.path.exists(os.path.join(home, "include", "cuda_runtime_api.h")):
            return os.path.join(home, "include")
    return None


@pytest.mark.slow
@pytest.mark.skipif(_cuda_include() is None or shutil.which("g++") is None, reason="no CUDA headers or g++")
@pytest.mark.parametrize("source", sorted(p.name for p in (ROOT / "csrc").glob("*.cpp")))
def test_cuda_host_code_compiles(source):
    """The CUDA branches of csrc/ (FASTGEN_WITH_CUDA), syntax-checked against torch's headers without a GPU build."""
    import sysconfig

    from torch.utils import cpp_extension

    includes = [f"-I{p}" for p in cpp_extension.include_paths()] + [f"-I{_cuda_include()}",
                                                                     f"-I{sysconfig.get_paths()['include']}"]
    out = subprocess.run(["g++", "-fsyntax-only", "-std=c++17", "-DFASTGEN_WITH_CUDA",
                          "-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE", *includes, str(ROOT / "csrc" / source)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]


def test_backend_choice_is_marked_as_dynamo_marks_constants():
    """fastgen marks its backend choice constant for torch.compile without importing torch._dynamo at import
    time; the marker must be exactly what torch._dynamo.assume_constant_result sets."""
    import torch._dynamo

    from fastgen.ops import _common

    def probe():
        return None

    def ours():
        return None

    torch._dynamo.assume_constant_result(probe)
    _common.assume_constant_result(ours)
    assert vars(probe) == vars(ours) == {"_dynamo_marked_constant": True}
    out = _run("import sys, fastgen; print('torch._dynamo' in sys.modules)")
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr
