"""Loading of the optional compiled pieces: fastgen._C (the CPU/CUDA implementations of the
ops declared in fastgen/ops/) and Triton.

Importing fastgen never fails for lack of one of them; each missing piece is
reported once in a single warning and in :func:`fastgen.backends`.
"""

from __future__ import annotations

import importlib
import os
import warnings

import torch  # noqa: F401  (loads libtorch, which fastgen._C links against)

C = None  # the fastgen._C module, when it loads
C_ERROR = ""
C_CUDA = False  # whether fastgen._C was built with CUDA
TRITON = None  # fastgen.kernels (the Triton twins), when triton imports
TRITON_ERROR = ""
# triton.jit reads TRITON_INTERPRET when the kernels are defined, so it is read once here.
TRITON_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def _load() -> None:
    global C, C_CUDA, C_ERROR, TRITON, TRITON_ERROR
    missing = []
    try:
        C = importlib.import_module("fastgen._C")
        C_CUDA = bool(C.build_info()["cuda"])
    except ImportError as err:
        C_ERROR = f"fastgen._C did not load ({err}); build it with `pip install --no-build-isolation -e .`"
        missing.append(C_ERROR)
    try:
        importlib.import_module("triton")
    except ImportError as err:
        TRITON_ERROR = f"triton is not installed ({err})"
        missing.append(TRITON_ERROR)
    else:
        try:
            TRITON = importlib.import_module("fastgen.kernels")
        except Exception as err:  # a broken triton install must not break import
            TRITON_ERROR = f"the Triton kernels failed to load ({type(err).__name__}: {err})"
            missing.append(TRITON_ERROR)
    if missing:
        warnings.warn("fastgen: running without " + "; ".join(missing), RuntimeWarning, stacklevel=3)


_load()
