"""Normalizing flows. One convention throughout (zuko's and nflows'): a transform's ``forward`` maps data to
the base space and returns ``(z, log_abs_det)`` of that map, per sample; ``inverse`` maps back. A
:class:`Flow` is a ``torch.distributions.Distribution`` (and an ``nn.Module`` holding its parameters).

Layers: :class:`ResidualBlock` (i-ResNet / residual flows). Models: :class:`ResidualFlow`.
"""

from .core import Flow, Transform
from .residual import LipSwish, ResidualBlock, ResidualFlow

__all__ = ["Flow", "LipSwish", "ResidualBlock", "ResidualFlow", "Transform"]
