"""Small models for the generation tests, importable as module:callable."""

import torch


def shrink(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """An eps model for a Gaussian target: row-wise, so samples do not depend on the batch."""
    return 0.5 * x


def wrong_shape(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return x[:, :1]


def nan_after_zero(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """NaN for every sample whose first coordinate is negative (about half of them)."""
    return torch.where(x[:, :1] < 0, torch.full_like(x, float("nan")), 0.5 * x)


def meta(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x, device="meta")


def slow(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """shrink, 20 ms a call: runs that overlap in time."""
    import time

    time.sleep(0.02)
    return 0.5 * x


def missing_key(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return {"sample": x}["eps"]


def labelled(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """A class-conditional eps model (class k pulls towards k, the null label -1 towards 0), row-wise."""
    return 0.5 * x - 0.3 * y.to(x.dtype).reshape(-1, *[1] * (x.dim() - 1)).clamp_min(0)


_W1 = torch.randn(4, 64, generator=torch.Generator().manual_seed(0)) * 0.3
_W2 = torch.randn(64, 4, generator=torch.Generator().manual_seed(1)) * 0.1


def mlp(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """An eps model on 4-D samples whose own tensors (a 64-wide hidden layer) outweigh the state 16 to 1."""
    return torch.tanh(x @ _W1 + t.reshape(-1, 1)) @ _W2
