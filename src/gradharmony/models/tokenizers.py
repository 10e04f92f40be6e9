"""Per-modality tokenizers: raw input -> tokens of the backbone width, with positions.

Each tokenizer projects patches (or word ids) with ``nn.Linear`` / ``nn.Embedding``, applies
VATT's pre-transformer projection (Linear + GELU) and adds learned positional embeddings. The
positional tables and the aggregation token are ``nn.Embedding`` looked up with *batched*
indices (``[B, N]``) so that every parameter use is attributable to one triplet.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _positions(n: int, batch: int, device: torch.device) -> torch.Tensor:
    return torch.arange(n, device=device).expand(batch, n)


class AggToken(nn.Module):
    """A learned aggregation token prepended to a token sequence (``[B, N, D] -> [B, 1+N, D]``).

    Example:
        >>> AggToken(8)(torch.zeros(2, 5, 8)).shape
        torch.Size([2, 6, 8])
    """

    def __init__(self, width: int):
        super().__init__()
        self.embed = nn.Embedding(1, width)
        nn.init.normal_(self.embed.weight, std=0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        B = tokens.shape[0]
        idx = torch.zeros(B, 1, dtype=torch.long, device=tokens.device)
        return torch.cat([self.embed(idx).to(tokens.dtype), tokens], dim=1)


class VideoTokenizer(nn.Module):
    """Video ``[B, T, H, W, 3]`` in [0, 1] -> ``[B, t*h*w, D]`` non-overlapping 3D patches.

    Pixels are mapped to [-1, 1]; frames/rows/columns beyond a whole number of patches are
    dropped (as a "valid" strided convolution). The spatio-temporal position is the sum of a
    temporal, a vertical and a horizontal embedding (as VATT).

    Example:
        >>> tok = VideoTokenizer(width=8, patch=(2, 4, 4), grid=(4, 2, 2))
        >>> tok(torch.rand(3, 8, 8, 8, 3)).shape
        torch.Size([3, 16, 8])
    """

    def __init__(self, width: int, patch: tuple[int, int, int], grid: tuple[int, int, int]):
        super().__init__()
        self.patch = tuple(patch)
        self.grid = tuple(grid)
        pt, ph, pw = self.patch
        self.proj = nn.Linear(pt * ph * pw * 3, width)
        self.pre_proj = nn.Linear(width, width)
        self.pos_t = nn.Embedding(grid[0], width)
        self.pos_h = nn.Embedding(grid[1], width)
        self.pos_w = nn.Embedding(grid[2], width)

    def patch_grid(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        pt, ph, pw = self.patch
        return frames // pt, height // ph, width // pw

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        B, T, H, W, C = video.shape
        pt, ph, pw = self.patch
        t, h, w = self.patch_grid(T, H, W)
        x = video[:, : t * pt, : h * ph, : w * pw] * 2.0 - 1.0
        x = x.reshape(B, t, pt, h, ph, w, pw, C).permute(0, 1, 3, 5, 2, 4, 6, 7)
        x = x.reshape(B, t * h * w, pt * ph * pw * C)
        x = F.gelu(self.pre_proj(self.proj(x)))
        grid = torch.stack(torch.meshgrid(
            torch.arange(t, device=x.device), torch.arange(h, device=x.device),
            torch.arange(w, device=x.device), indexing="ij"), dim=-1).reshape(1, -1, 3)
        grid = grid.expand(B, -1, -1)
        pos = self.pos_t(grid[..., 0]) + self.pos_h(grid[..., 1]) + self.pos_w(grid[..., 2])
        return x + pos.to(x.dtype)


class AudioTokenizer(nn.Module):
    """Waveform ``[B, S]`` -> ``[B, S // patch, D]`` raw 1D patches (remainder samples dropped).

    Example:
        >>> AudioTokenizer(width=8, patch=16, max_tokens=10)(torch.randn(2, 100)).shape
        torch.Size([2, 6, 8])
    """

    def __init__(self, width: int, patch: int, max_tokens: int):
        super().__init__()
        self.patch = patch
        self.proj = nn.Linear(patch, width)
        self.pre_proj = nn.Linear(width, width)
        self.pos = nn.Embedding(max_tokens, width)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        B, S = audio.shape
        n = S // self.patch
        x = audio[:, : n * self.patch].reshape(B, n, self.patch)
        x = F.gelu(self.pre_proj(self.proj(x)))
        return x + self.pos(_positions(n, B, x.device)).to(x.dtype)


class TextEmbedder(nn.Module):
    """Token ids ``[R, L]`` -> ``[R, L, D]``: word embedding, Linear + GELU, positions.

    Example:
        >>> TextEmbedder(width=8, vocab_size=50, embed_dim=6, max_words=4)(
        ...     torch.tensor([[3, 4, 0, 0]])).shape
        torch.Size([1, 4, 8])
    """

    def __init__(self, width: int, vocab_size: int, embed_dim: int, max_words: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_dim)
        self.pre_proj = nn.Linear(embed_dim, width)
        self.pos = nn.Embedding(max_words, width)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        R, L = ids.shape
        x = F.gelu(self.pre_proj(self.embed(ids)))
        return x + self.pos(_positions(L, R, x.device)).to(x.dtype)


def drop_tokens(tokens: torch.Tensor, keep: int) -> torch.Tensor:
    """DropToken: keep a random subset of ``keep`` tokens of each sample (its own subset).

    Example:
        >>> x = torch.arange(10.0).reshape(1, 10, 1).repeat(2, 1, 3)
        >>> y = drop_tokens(x, 4)
        >>> y.shape, bool((y[..., 0:1] == y).all())
        (torch.Size([2, 4, 3]), True)
    """
    B, N, D = tokens.shape
    if keep >= N:
        return tokens
    idx = torch.rand(B, N, device=tokens.device).argsort(dim=1)[:, :keep].sort(dim=1).values
    return torch.gather(tokens, 1, idx[..., None].expand(B, keep, D))
