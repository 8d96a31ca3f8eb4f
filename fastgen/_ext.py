"""Loading of the optional compiled pieces: fastgen._C (CPU/CUDA ops) and Triton.

Importing fastgen never fails for lack of one of them; each missing piece is
reported once in a single warning and in :func:`fastgen.backends`.
"""

from __future__ import annotations

import importlib
import os
import warnings

import torch

C = None  # the fastgen._C module, when it loads
C_ERROR = ""
C_CUDA = False  # whether fastgen._C was built with CUDA
TRITON = None  # fastgen.kernels (the Triton twins), when triton imports
TRITON_ERROR = ""
# triton.jit reads TRITON_INTERPRET when the kernels are defined, so it is read once here.
TRITON_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def _register_fakes() -> None:
    """Shape-only kernels of the C++ ops, for torch.compile and opcheck."""

    @torch.library.register_fake("fastgen::philox_fill_")
    def _(out, seed, offset, rng_state, normal):
        return None

    @torch.library.register_fake("fastgen::ula_step_")
    def _(x, score, step_size, step_sizes, seed, offset, rng_state, clamp_lo, clamp_hi, grad_clip):
        return None

    @torch.library.register_fake("fastgen::mala_propose")
    def _(x, grad_log_prob, step_size, step_sizes, seed, offset, rng_state):
        return torch.empty_like(x)

    @torch.library.register_fake("fastgen::mala_accept_")
    def _(x, log_prob, grad_log_prob, y, log_prob_y, grad_log_prob_y, step_size, step_sizes, seed, offset, rng_state):
        chains = x.shape[0]
        return x.new_empty((chains,), dtype=torch.bool), x.new_empty((chains,), dtype=torch.float32)

    @torch.library.register_fake("fastgen::gmm_langevin_")
    def _(x, means, inv_vars, log_coef, n_steps, step_size, step_sizes, seed, offset, rng_state):
        return None


    @torch.library.register_fake("fastgen::diffusion_step_")
    def _(x, model_out, coef, index, prediction, clip, clip_eps, aux, aux_store, noise, seed, offset, rng_state,
          sample_seeds, sample_offset):
        return None

    @torch.library.register_fake("fastgen::langevin_correct_")
    def _(x, model_out, coef, index, prediction, snr, seed, offset, rng_state, sample_seeds, sample_offset):
        return None


def _load() -> None:
    global C, C_CUDA, C_ERROR, TRITON, TRITON_ERROR
    missing = []
    try:
        C = importlib.import_module("fastgen._C")
        C_CUDA = bool(C.build_info()["cuda"])
        _register_fakes()
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
