"""Normalizing flows. One convention throughout (zuko's and nflows'): a transform's ``forward`` maps data to
the base space and returns ``(z, log_abs_det)`` of that map, per sample; ``inverse`` maps back. A
:class:`Flow` is a ``torch.distributions.Distribution`` (and an ``nn.Module`` holding its parameters).

Layers: :class:`AffineCoupling`, :class:`SplineCoupling` (fused coupling ops), :class:`MaskedAutoregressive`,
:class:`InverseAutoregressive` (with :class:`MADE`; the fused affine op), :class:`Planar`, :class:`Radial`,
:class:`Sylvester`, :class:`Reverse`, :class:`ResidualBlock` (i-ResNet / residual flows); for images :class:`ActNorm`,
:class:`InvConv1x1LU`, :class:`ChannelCoupling`, :class:`Squeeze`, :class:`Unsqueeze`, :class:`Split`. Models:
:class:`RealNVP`, :class:`NSF`, :class:`MAF`, :class:`IAF`, :class:`Glow`, :class:`ResidualFlow`.

Continuous flows: :class:`CNF` (FFJORD, ``continuous``), on the batched ODE solver :func:`odeint` (``ode``) and
the per-sample divergences :func:`divergence` (``divergence``: Hutchinson probes from the noise stream, or exact).

Flow matching (``matching``): probability paths (:class:`LinearPath`, :class:`PolynomialPath`, :class:`CosinePath`,
:class:`VPPath`; processes of fastgen.diffusion, so ``fastgen.sample(velocity, shape, sde=LinearPath(), ...)`` runs
the fused loop on them), the losses :func:`cfm_loss` (CFM, OT-CFM, Schrödinger-bridge CFM), :func:`sample_flow` and
:func:`flow_log_prob`; minibatch optimal transport (``optimal_transport``): :func:`assignment`, :func:`sinkhorn`.
"""

from .autoregressive import IAF, MADE, MAF, InverseAutoregressive, MaskedAutoregressive
from .continuous import CNF, ContinuousFlow, MLPDynamics  # noqa: I001  (after .core)
from .core import Flow, Transform
from .coupling import NSF, AffineCoupling, RealNVP, Reverse, SplineCoupling
from .divergence import divergence
from .glow import ActNorm, ChannelCoupling, Glow, InvConv1x1LU, Split, Squeeze, Unsqueeze, gaussian_prior
from .matching import (
    AffinePath,
    CosinePath,
    LinearPath,
    PolynomialPath,
    VPPath,
    cfm_loss,
    flow_log_prob,
    reflow_pairs,
    sample_flow,
    shift_time,
    time_grid,
    to_x0_eps,
)
from .ode import odeint
from .optimal_transport import assignment, sinkhorn
from .planar import Planar, Radial, Sylvester
from .residual import LipSwish, ResidualBlock, ResidualFlow

__all__ = ["CNF", "IAF", "MADE", "MAF", "NSF", "ActNorm", "AffineCoupling", "ChannelCoupling", "ContinuousFlow",
           "Flow", "Glow", "MLPDynamics", "divergence", "odeint",
           "InvConv1x1LU", "InverseAutoregressive", "LipSwish", "MaskedAutoregressive", "Planar", "Radial", "RealNVP",
           "ResidualBlock", "ResidualFlow", "Reverse", "SplineCoupling", "Split", "Squeeze", "Sylvester", "Transform",
           "Unsqueeze", "gaussian_prior", "AffinePath", "CosinePath", "LinearPath", "PolynomialPath", "VPPath",
           "assignment", "cfm_loss", "flow_log_prob", "reflow_pairs", "sample_flow", "shift_time", "sinkhorn",
           "time_grid", "to_x0_eps"]
