"""Normalizing flows. One convention throughout (zuko's and nflows'): a transform's ``forward`` maps data to
the base space and returns ``(z, log_abs_det)`` of that map, per sample; ``inverse`` maps back. A
:class:`Flow` is a ``torch.distributions.Distribution`` (and an ``nn.Module`` holding its parameters).

Layers: :class:`AffineCoupling`, :class:`SplineCoupling` (fused coupling ops), :class:`Reverse`,
:class:`ResidualBlock` (i-ResNet / residual flows). Models: :class:`RealNVP`, :class:`NSF`, :class:`ResidualFlow`.
"""

from .core import Flow, Transform
from .coupling import NSF, AffineCoupling, RealNVP, Reverse, SplineCoupling
from .residual import LipSwish, ResidualBlock, ResidualFlow

__all__ = ["NSF", "AffineCoupling", "Flow", "LipSwish", "RealNVP", "ResidualBlock", "ResidualFlow", "Reverse",
           "SplineCoupling", "Transform"]
