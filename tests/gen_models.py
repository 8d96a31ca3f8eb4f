"""Small models for the generation tests, importable as module:callable."""

import torch


def shrink(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """An eps model for a Gaussian target: row-wise, so samples do not depend on the batch."""
    return 0.5 * x


def wrong_shape(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return x[:, :1]
