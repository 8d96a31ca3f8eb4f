"""Normalizing flows. One convention throughout (zuko's and nflows'): a transform's ``forward`` maps data to
the base space and returns ``(z, log_abs_det)`` of that map, per sample; ``inverse`` maps back. A
:class:`Flow` is a ``torch.distributions.Distribution`` (and an ``nn.Module`` holding its parameters).

Layers: :class:`AffineCoupling` (fused coupling op), :class:`Reverse`, :class:`ResidualBlock` (i-ResNet /
residual flows). Models: :class:`RealNVP`, :class:`ResidualFlow`.
"""

from .core import Flow, Transform
from .coupling import AffineCoupling, RealNVP, Reverse
from .residual import LipSwish, ResidualBlock, ResidualFlow

__all__ = ["AffineCoupling", "Flow", "LipSwish", "RealNVP", "ResidualBlock", "ResidualFlow", "Reverse", "Transform"]
