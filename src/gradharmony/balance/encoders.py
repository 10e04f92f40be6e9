"""Per-modality encoders for the late-fusion classifier, built by name from a registry.

Inputs are pre-extracted sequences ``[B, T, D]`` (frames x features; see
:mod:`gradharmony.balance.features`); each encoder returns a feature vector ``[B, dim]``.
Register your own with :func:`register_encoder` or pass modules to ``AVClassifier``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

ENCODERS: dict[str, Callable[..., nn.Module]] = {}


def register_encoder(name: str):
    """Decorator adding ``factory(in_dim, dim) -> nn.Module`` to :data:`ENCODERS`.

    Example:
        >>> @register_encoder("identity-mean")
        ... class MeanPool(nn.Module):
        ...     def __init__(self, in_dim, dim):
        ...         super().__init__()
        ...         self.out_dim = in_dim
        ...     def forward(self, x):
        ...         return x.mean(1)
        >>> build_encoder("identity-mean", 5, 8)(torch.ones(2, 3, 5)).shape
        torch.Size([2, 5])
    """

    def wrap(factory):
        ENCODERS[name] = factory
        return factory

    return wrap


@register_encoder("conv1d")
class TemporalConvEncoder(nn.Module):
    """Two temporal convolutions (kernel 3) with ReLU, then mean pooling over time.

    Example:
        >>> TemporalConvEncoder(12, 16)(torch.randn(4, 8, 12)).shape
        torch.Size([4, 16])
    """

    def __init__(self, in_dim: int, dim: int = 32):
        super().__init__()
        self.out_dim = dim
        self.conv1 = nn.Conv1d(in_dim, dim, 3, padding=1)
        self.conv2 = nn.Conv1d(dim, dim, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv1(x.transpose(1, 2)))
        return torch.relu(self.conv2(h)).mean(2)


@register_encoder("mlp")
class MeanMLPEncoder(nn.Module):
    """Per-frame two-layer MLP, mean pooled over time (no convolution).

    Example:
        >>> MeanMLPEncoder(12, 16)(torch.randn(4, 8, 12)).shape
        torch.Size([4, 16])
    """

    def __init__(self, in_dim: int, dim: int = 32):
        super().__init__()
        self.out_dim = dim
        self.net = nn.Sequential(nn.Linear(in_dim, dim), nn.ReLU(), nn.Linear(dim, dim), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).mean(1)


def build_encoder(name: str, in_dim: int, dim: int = 32) -> nn.Module:
    """Encoder ``name`` from :data:`ENCODERS` for inputs ``[B, T, in_dim]``.

    Example:
        >>> build_encoder("conv1d", 6, 8).out_dim
        8
    """
    if name not in ENCODERS:
        raise ValueError(f"encoder must be one of {sorted(ENCODERS)}, got {name!r}")
    return ENCODERS[name](in_dim, dim)
