"""Build fastgen._C against the installed torch.

The CPU ops are always built. The CUDA ops are built when FASTGEN_BUILD_CUDA
is 1, or when it is ``auto`` (the default) and torch has CUDA and nvcc is found.
Build with ``pip install --no-build-isolation -e .`` so the installed torch is used.
"""

import glob
import os
import shutil

import torch
from setuptools import find_packages, setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))
CXX_FLAGS = ["-O3", "-std=c++17", "-fopenmp", "-fno-math-errno", "-fno-trapping-math", "-Wall", "-Wno-unknown-pragmas"]


def want_cuda() -> bool:
    mode = os.environ.get("FASTGEN_BUILD_CUDA", "auto").lower()
    if mode not in ("auto", "0", "1"):
        raise SystemExit(f"FASTGEN_BUILD_CUDA must be auto, 0 or 1, got {mode!r}")
    have_nvcc = CUDA_HOME is not None and shutil.which(os.path.join(CUDA_HOME, "bin", "nvcc")) is not None
    have = torch.version.cuda is not None and have_nvcc
    if mode == "1" and not have:
        raise SystemExit(
            "FASTGEN_BUILD_CUDA=1 but "
            + ("torch has no CUDA" if torch.version.cuda is None else "nvcc was not found (set CUDA_HOME)")
        )
    return mode == "1" or (mode == "auto" and have)


def cuda_archs() -> list[str]:
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST", "9.0").replace(",", ";").replace(" ", ";")
    return [a.strip() for a in archs.split(";") if a.strip()]


HEADERS = sorted(glob.glob("csrc/*.h") + glob.glob("kernels/*.h") + glob.glob("kernels/*.cuh"))


def extension():
    sources = sorted(glob.glob("csrc/*.cpp"))
    with_cuda = want_cuda()
    flags = list(CXX_FLAGS)
    archs = cuda_archs() if with_cuda else []
    macros = [
        ("FASTGEN_CXX_FLAGS", '"' + " ".join(flags) + '"'),
        ("FASTGEN_CUDA_ARCHS", '"' + ";".join(archs) + '"'),
    ]
    if not with_cuda:
        return CppExtension(
            "fastgen._C", sources, depends=HEADERS, define_macros=macros, extra_compile_args={"cxx": flags},
            extra_link_args=["-fopenmp"],
        )
    gencode = []
    for arch in archs:
        num = arch.replace(".", "").replace("+PTX", "")
        gencode += [f"-gencode=arch=compute_{num},code=sm_{num}"]
    return CUDAExtension(
        "fastgen._C",
        sources + sorted(glob.glob("kernels/*.cu")),
        depends=HEADERS,
        define_macros=macros + [("FASTGEN_WITH_CUDA", None)],
        extra_compile_args={"cxx": flags, "nvcc": ["-O3", "-std=c++17", "--expt-relaxed-constexpr", *gencode]},
        extra_link_args=["-fopenmp"],
    )


setup(
    name="fastgen",
    version="0.1.0",
    description="Fused Triton/CUDA/CPU kernels for the hot loops of generative models",
    # Every package under fastgen/ is found, not listed; kernels/ and bench/ install as fastgen.kernels and
    # fastgen.bench (tests/test_wheel.py builds a wheel and imports it in a clean venv).
    packages=find_packages(include=["fastgen", "fastgen.*"]) + ["fastgen.kernels", "fastgen.bench"],
    package_dir={"fastgen.kernels": "kernels", "fastgen.bench": "bench"},
    package_data={"fastgen.kernels": ["*.cu", "*.h", "*.cuh"]},
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    entry_points={"console_scripts": ["fastgen=fastgen.cli:main"]},
    python_requires=">=3.10",
    install_requires=["torch>=2.4", "numpy"],
    extras_require={"triton": ["triton>=3.0"], "plot": ["matplotlib"]},
)
