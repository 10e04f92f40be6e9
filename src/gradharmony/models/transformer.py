"""Pre-norm transformer encoder built only from nn.Linear, nn.LayerNorm and parameter-free ops."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


class Attention(nn.Module):
    """Multi-head self-attention: ``nn.Linear`` projections + ``F.scaled_dot_product_attention``.

    ``mask`` (optional, bool ``[B, N]``) is True on tokens that may be attended to.

    Example:
        >>> attn = Attention(width=8, heads=2)
        >>> attn(torch.randn(3, 5, 8)).shape
        torch.Size([3, 5, 8])
    """

    def __init__(self, width: int, heads: int, dropout: float = 0.0):
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        B, N, W = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.heads, W // self.heads).permute(2, 0, 3, 1, 4)
        attn_mask = None if mask is None else mask[:, None, None, :]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(B, N, W))


class Block(nn.Module):
    """One pre-norm layer: ``x + Attn(LN(x))`` then ``x + MLP(LN(x))`` (GELU)."""

    def __init__(self, width: int, heads: int, mlp_dim: int, dropout: float = 0.0,
                 eps: float = 1e-6):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=eps)
        self.attn = Attention(width, heads, dropout)
        self.norm2 = nn.LayerNorm(width, eps=eps)
        self.fc1 = nn.Linear(width, mlp_dim)
        self.fc2 = nn.Linear(mlp_dim, width)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x), mask))
        return x + self.drop(self.fc2(self.drop(F.gelu(self.fc1(self.norm2(x))))))


class Transformer(nn.Module):
    """A stack of :class:`Block` followed by a final LayerNorm.

    With ``grad_checkpointing`` each block is recomputed during the backward pass (training
    with gradients only), trading compute for activation memory.

    Example:
        >>> tx = Transformer(width=8, depth=2, heads=2, mlp_dim=16)
        >>> tx(torch.randn(3, 5, 8), mask=torch.ones(3, 5, dtype=torch.bool)).shape
        torch.Size([3, 5, 8])
    """

    def __init__(self, width: int, depth: int, heads: int, mlp_dim: int, dropout: float = 0.0,
                 eps: float = 1e-6, grad_checkpointing: bool = False):
        super().__init__()
        self.blocks = nn.ModuleList(
            Block(width, heads, mlp_dim, dropout, eps) for _ in range(depth))
        self.norm = nn.LayerNorm(width, eps=eps)
        self.grad_checkpointing = grad_checkpointing

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        recompute = self.grad_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            if recompute:
                x = checkpoint(block, x, mask, use_reentrant=False)
            else:
                x = block(x, mask)
        return self.norm(x)
