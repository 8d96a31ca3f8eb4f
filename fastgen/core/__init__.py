"""What every family runs on: the loading of the compiled pieces (``extensions``: fastgen._C and the Triton
kernels), the backend choice (``backend``), the counter-based noise stream (``rng``) and the codes shared with
C++, CUDA and Triton (``constants``)."""

from . import extensions  # noqa: I001  (first: loads fastgen._C and the Triton kernels)
from . import constants, rng
from .backend import backends, use_backend
from .rng import RNGState

__all__ = ["RNGState", "backends", "constants", "extensions", "rng", "use_backend"]
