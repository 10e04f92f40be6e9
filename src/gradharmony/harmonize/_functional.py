"""Vector-space primitives: cosine and Algorithm 1 (cross-modality gradient realignment)."""

from __future__ import annotations

import torch
from torch import Tensor


def cosine(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise cosine similarity over the last dimension; 0 where either norm is 0.

    Example:
        >>> cosine(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0]))
        tensor(0.7071)
        >>> cosine(torch.zeros(2, 3), torch.ones(2, 3))
        tensor([0., 0.])
    """
    if a.shape != b.shape:
        raise ValueError(f"cosine: a has shape {tuple(a.shape)} but b has {tuple(b.shape)}")
    dot = (a * b).sum(-1)
    denom = a.norm(dim=-1) * b.norm(dim=-1)
    return torch.where(denom > 0, dot / denom.clamp_min(torch.finfo(denom.dtype).tiny), 0.0)


def realign(g_va: Tensor, g_vt: Tensor) -> tuple[Tensor, Tensor]:
    """Algorithm 1 of the paper: project conflicting gradients onto each other's normal plane.

    When ``<g_va, g_vt> < 0`` each gradient is projected onto the normal plane of the
    *original* other one; otherwise both are returned unchanged. Works on ``[n]`` vectors or
    row-wise on ``[B, n]``. The harmonized update is the sum of the two outputs.

    Example:
        >>> va, vt = realign(torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0]))
        >>> va, vt
        (tensor([0.5000, 0.5000]), tensor([0., 1.]))
    """
    if g_va.shape != g_vt.shape:
        raise ValueError(
            f"realign: g_va has shape {tuple(g_va.shape)} but g_vt has {tuple(g_vt.shape)}"
        )
    dot = (g_va * g_vt).sum(-1, keepdim=True).clamp_max(0.0)
    sq_va = (g_va * g_va).sum(-1, keepdim=True)
    sq_vt = (g_vt * g_vt).sum(-1, keepdim=True)
    tiny = torch.finfo(sq_va.dtype).tiny
    new_va = g_va - torch.where(sq_vt > 0, dot / sq_vt.clamp_min(tiny), 0.0) * g_vt
    new_vt = g_vt - torch.where(sq_va > 0, dot / sq_va.clamp_min(tiny), 0.0) * g_va
    return new_va, new_vt


def gram_cosine(gram: Tensor) -> Tensor:
    """Pairwise cosines ``[..., L, L]`` from a Gramian ``[..., L, L]``; 0 where a norm is 0.

    Example:
        >>> gram_cosine(torch.tensor([[4.0, -2.0], [-2.0, 4.0]]))
        tensor([[ 1.0000, -0.5000],
                [-0.5000,  1.0000]])
    """
    diag = gram.diagonal(dim1=-2, dim2=-1).clamp_min(0.0).sqrt()
    denom = diag.unsqueeze(-1) * diag.unsqueeze(-2)
    return torch.where(denom > 0, gram / denom.clamp_min(torch.finfo(gram.dtype).tiny), 0.0)
