"""Numbers shared by Python, C++, CUDA and Triton, named once here.

``kernels/constants.h`` mirrors them for C++ and CUDA (tests/test_constants.py checks
that the two agree); the Triton kernels and the references import them from here.
"""

from __future__ import annotations

from enum import IntEnum


class Prediction(IntEnum):
    """What a diffusion model returns; the fused step converts it to (x0, eps)."""

    EPS = 0
    X0 = 1
    V = 2
    SCORE = 3
    VELOCITY = 4  # a flow path's u = alpha'(t) x0 + sigma'(t) eps (rows carry D_ALPHA, D_SIGMA)


class AuxStore(IntEnum):
    """What a diffusion step leaves in its aux tensor."""

    NONE = 0
    X0 = 1  # the step's x0 estimate
    INCREMENT = 2  # x_new - x
    EPS = 3  # the step's eps estimate


class Coef(IntEnum):
    """Columns of a diffusion coefficient row: the model reads x_m = k x = alpha x0 + sigma eps, and
    x <- c_x x + c_x0 x0 + c_eps eps + c_aux aux + c_noise xi. The Langevin corrector reads C_X as a_b.
    D_ALPHA, D_SIGMA are alpha'(t), sigma'(t), read by the velocity prediction only (0 elsewhere)."""

    ALPHA = 0
    SIGMA = 1
    K = 2
    C_X = 3
    C_X0 = 4
    C_EPS = 5
    C_AUX = 6
    C_NOISE = 7
    D_ALPHA = 8
    D_SIGMA = 9


COEF_WIDTH = len(Coef)  # 10 columns per row


class ScaleMode(IntEnum):
    """How an affine coupling's log-scale s comes from its logits h."""

    SOFT_CLAMP = 0  # s = clamp tanh(h / clamp)
    SIGMOID = 1  # Glow's s = log sigmoid(h + 2)

#: Limits of the in-register Gaussian-mixture Langevin kernel.
MAX_GMM_DIM = 64
MAX_GMM_COMPONENTS = 64
