"""VATT's "fac" (fine-and-coarse) projection heads into the common spaces."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def make_norm(kind: str, dim: int) -> nn.Module:
    """``"batchnorm"`` -> BatchNorm1d, ``"layernorm"`` -> LayerNorm, ``"none"`` -> Identity.

    Example:
        >>> type(make_norm("layernorm", 4)).__name__
        'LayerNorm'
    """
    if kind == "batchnorm":
        return nn.BatchNorm1d(dim, momentum=0.1)
    if kind == "layernorm":
        return nn.LayerNorm(dim)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"head norm must be 'batchnorm', 'layernorm' or 'none', got {kind!r}")


class FACHead(nn.Module):
    """Projections of pooled features into the video-audio and video-text spaces.

    As VATT: video -> Linear -> Norm -> ReLU -> Linear -> Norm = video-audio embedding (va_dim);
    then ReLU -> Linear -> Norm = video-text embedding (vt_dim); audio -> Linear (va_dim);
    text -> Linear (vt_dim). Outputs are not normalised here. Linear layers followed by a norm
    have no bias unless ``norm="none"``.

    Example:
        >>> head = FACHead(width=16, va_dim=8, vt_dim=4, norm="layernorm")
        >>> head.video(torch.randn(3, 16))[1].shape, head.text(torch.randn(6, 16)).shape
        (torch.Size([3, 4]), torch.Size([6, 4]))
    """

    def __init__(self, width: int, va_dim: int = 512, vt_dim: int = 256,
                 norm: str = "batchnorm"):
        super().__init__()
        bias = norm == "none"
        self.vid_to_hid = nn.Linear(width, va_dim, bias=bias)
        self.hid_norm = make_norm(norm, va_dim)
        self.hid_to_va = nn.Linear(va_dim, va_dim, bias=bias)
        self.va_norm = make_norm(norm, va_dim)
        self.va_to_vt = nn.Linear(va_dim, vt_dim, bias=bias)
        self.vt_norm = make_norm(norm, vt_dim)
        self.aud_to_va = nn.Linear(width, va_dim)
        self.txt_to_vt = nn.Linear(width, vt_dim)

    def video(self, feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled video features ``[B, D]`` -> (video-audio ``[B, va]``, video-text ``[B, vt]``)."""
        hid = F.relu(self.hid_norm(self.vid_to_hid(feat)))
        va = self.va_norm(self.hid_to_va(hid))
        vt = self.vt_norm(self.va_to_vt(F.relu(va)))
        return va, vt

    def audio(self, feat: torch.Tensor) -> torch.Tensor:
        """Pooled audio features ``[B, D]`` -> video-audio space ``[B, va]``."""
        return self.aud_to_va(feat)

    def text(self, feat: torch.Tensor) -> torch.Tensor:
        """Pooled text features ``[R, D]`` -> video-text space ``[R, vt]``."""
        return self.txt_to_vt(feat)
