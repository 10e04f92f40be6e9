"""Contrastive cross-modal alignment losses: NCE (video-audio) and MIL-NCE (video-text).

Both follow the MIL-NCE / VATT reference code. For ``B`` clips with ``k`` candidate narrations
each, the similarities are ``S[i, j, c] = <z_v[i], z_t[j, c]> / tau`` (shape ``[B, B, k]``).
For anchor ``i`` (default ``direction="both"``)::

    loss_i = logsumexp( {S[i, j, c] : all j, c}  U  {S[j, i, c] : all j, c} )
           - logsumexp( {S[i, i, c] : all c} )

i.e. the denominator pools the row (video ``i`` against every narration of the batch) and the
column (the narrations of clip ``i`` against every video), so the positives ``S[i, i, :]`` are
counted twice, exactly as the reference implementations do. ``direction="v2t"`` keeps only the
row (the paper's one-directional Eq. (2)/(3)), ``direction="t2v"`` only the column.
:func:`nce` is :func:`mil_nce` with ``k = 1``.

Masking:

- ``candidate_mask[j, c] = False`` (a padding candidate): ``z_t[j, c]`` is neither a positive
  nor a negative anywhere.
- ``sample_mask[j] = False`` (a clip without narration, or without usable audio): triplet ``j``
  is excluded entirely (not an anchor, its video and its embeddings are not negatives). Its
  per-triplet value is 0 with ``reduction="none"``, and ``reduction="mean"`` averages over the
  remaining anchors. A clip whose candidates are all padding is treated as masked. A batch with
  no valid anchor gives a loss of exactly 0 whose gradient is 0 (not NaN).

Cross-device negatives: with ``gather=True`` (the default) and ``torch.distributed``
initialised with more than one rank, the embeddings (and masks) of every rank are gathered
with :func:`gather_with_grad`, so every rank computes the loss of the *global* batch while the
gradient flows only into its own rows. The gradient of the global loss is then the **sum** of
the ranks' local parameter gradients. With ``reduction="none"`` the returned vector covers the
global batch (rank ``r``'s triplets at the rows that :func:`local_rows` gives).

Computation is done in float32 whatever the input dtype (bf16 autocast safe).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from gradharmony._dist import multi_rank

__all__ = ["gather_with_grad", "local_rows", "mil_nce", "nce"]

_DIRECTIONS = ("both", "v2t", "t2v")


def _gather_sizes(n: int, device: torch.device) -> list[int]:
    size = torch.tensor([n], dtype=torch.long, device=device)
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    return [int(s.item()) for s in sizes]


def local_rows(n_local: int, device: torch.device | None = None) -> slice:
    """The rows of the gathered (global) batch that hold this rank's ``n_local`` triplets.

    Without ``torch.distributed`` (or with one rank) this is ``slice(0, n_local)``. Under
    ``torch.distributed`` it is a collective call: every rank must call it.

    Example:
        >>> local_rows(8)
        slice(0, 8, None)
    """
    if not multi_rank():
        return slice(0, n_local)
    sizes = _gather_sizes(n_local, device or torch.device("cpu"))
    start = sum(sizes[: dist.get_rank()])
    return slice(start, start + n_local)


def gather_with_grad(z: torch.Tensor) -> torch.Tensor:
    """Concatenate ``z`` from every rank along dim 0, keeping the local slot differentiable.

    Under ``torch.distributed`` every rank receives the same global tensor; the rows that came
    from this rank *are* the local tensor (autograd flows into them), the other ranks' rows are
    constants. Ranks may hold different numbers of rows. Without ``torch.distributed`` (or with
    a single rank) ``z`` is returned unchanged. Boolean tensors are supported (as masks).

    Example:
        >>> z = torch.randn(4, 3, requires_grad=True)
        >>> gather_with_grad(z) is z
        True
    """
    if not multi_rank():
        return z
    rank, world = dist.get_rank(), dist.get_world_size()
    sizes = _gather_sizes(z.shape[0], z.device)
    send = z.detach()
    if send.dtype == torch.bool:
        send = send.to(torch.uint8)
    send = send.contiguous()
    n_max = max(sizes)
    if send.shape[0] < n_max:
        pad = send.new_zeros((n_max - send.shape[0],) + tuple(send.shape[1:]))
        send = torch.cat([send, pad])
    slots = [torch.empty_like(send) for _ in range(world)]
    dist.all_gather(slots, send)
    parts = [s[:n].to(z.dtype) for s, n in zip(slots, sizes)]
    parts[rank] = z
    return torch.cat(parts, dim=0)


def _check_embeddings(name: str, z: torch.Tensor, ndim: int, shape_doc: str) -> None:
    if not isinstance(z, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {shape_doc}, got {type(z)}")
    if z.dim() != ndim:
        raise ValueError(f"{name} must have shape {shape_doc}, got {tuple(z.shape)}")
    if not z.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {z.dtype}")
    if z.device.type != "meta" and not bool(torch.isfinite(z).all()):
        raise ValueError(f"{name} contains NaN or infinite values")


def _check_mask(name: str, mask: torch.Tensor | None, shape: tuple[int, ...],
                device: torch.device) -> torch.Tensor:
    if mask is None:
        return torch.ones(shape, dtype=torch.bool, device=device)
    if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != shape:
        got = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask)
        raise ValueError(f"{name} must be a bool tensor of shape {list(shape)}, got {got}")
    if mask.dtype != torch.bool:
        raise ValueError(f"{name} must have dtype torch.bool, got {mask.dtype}")
    return mask.to(device)


def mil_nce(
    z_v: torch.Tensor,
    z_t: torch.Tensor,
    temperature: float = 0.07,
    candidate_mask: torch.Tensor | None = None,
    sample_mask: torch.Tensor | None = None,
    normalize: bool = True,
    direction: str = "both",
    reduction: str = "mean",
    gather: bool = True,
) -> torch.Tensor:
    """MIL-NCE between anchors ``z_v`` [B, D] and their ``k`` candidates ``z_t`` [B, k, D].

    Args:
        z_v: video embeddings, ``[B, D]``.
        z_t: candidate narration embeddings, ``[B, k, D]`` (index 0 = the clip's own).
        temperature: softmax temperature ``tau`` (> 0).
        candidate_mask: bool ``[B, k]``, False on padding candidates.
        sample_mask: bool ``[B]``, False on triplets to leave out (clips without narration).
        normalize: L2-normalise ``z_v`` and ``z_t`` first.
        direction: ``"both"`` (reference code, default), ``"v2t"`` (paper Eq. (3): video
            anchor against all narrations) or ``"t2v"`` (narrations of the clip against all
            videos).
        reduction: ``"mean"`` over valid anchors, or ``"none"`` for per-triplet values
            (0 on masked triplets).
        gather: gather negatives from all ranks under ``torch.distributed`` (no-op otherwise).

    Returns:
        A scalar (``"mean"``) or a ``[B]`` tensor (``"none"``; the global batch when gathered).

    Example:
        >>> z_v = torch.eye(3)
        >>> z_t = torch.eye(3)[:, None, :].repeat(1, 2, 1)   # k = 2 copies of the positive
        >>> loss = mil_nce(z_v, z_t, temperature=1.0)
        >>> # row and column each: 2 positives e^1 and 4 negatives e^0; positives counted twice
        >>> import math
        >>> expected = math.log(4 * math.e + 8) - math.log(2 * math.e)
        >>> abs(loss.item() - expected) < 1e-6
        True
    """
    _check_embeddings("z_v", z_v, 2, "[B, D]")
    _check_embeddings("z_t", z_t, 3, "[B, k, D]")
    B, D = z_v.shape
    if z_t.shape[0] != B or z_t.shape[2] != D:
        raise ValueError(
            f"z_t must have shape [B={B}, k, D={D}] to match z_v, got {tuple(z_t.shape)}")
    if z_t.shape[1] < 1:
        raise ValueError("z_t must hold at least one candidate (k >= 1)")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if direction not in _DIRECTIONS:
        raise ValueError(f"direction must be one of {_DIRECTIONS}, got {direction!r}")
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    k = z_t.shape[1]
    cand = _check_mask("candidate_mask", candidate_mask, (B, k), z_v.device)
    samp = _check_mask("sample_mask", sample_mask, (B,), z_v.device)

    z_v, z_t = z_v.float(), z_t.float()
    if normalize:
        z_v = F.normalize(z_v, dim=-1)
        z_t = F.normalize(z_t, dim=-1)
    if gather:
        z_v, z_t = gather_with_grad(z_v), gather_with_grad(z_t)
        cand, samp = gather_with_grad(cand), gather_with_grad(samp)
    return _mil_nce_core(z_v, z_t, temperature, cand, samp, direction, reduction)


def _mil_nce_core(z_v, z_t, temperature, cand, samp, direction, reduction):
    n, k = z_t.shape[:2]
    valid = samp & cand.any(dim=1)  # [n] anchors that take part
    text_ok = cand & valid[:, None]  # [n, k] narrations usable as positives / negatives
    sim = torch.einsum("id,jcd->ijc", z_v, z_t) / temperature  # [n, n, k]

    # Anchors without any valid entry get an all-valid (finite) mask; their loss is zeroed
    # below, which keeps the gradient 0 instead of NaN.
    free = ~valid
    pos_mask = text_ok | free[:, None]
    eye = torch.eye(n, dtype=torch.bool, device=sim.device)
    positives = sim[eye]  # [n, k]: S[i, i, c]
    log_num = positives.masked_fill(~pos_mask, float("-inf")).logsumexp(dim=1)

    parts = []
    if direction in ("both", "v2t"):
        row_mask = text_ok[None, :, :].expand(n, n, k) | free[:, None, None]
        parts.append(sim.masked_fill(~row_mask, float("-inf")).reshape(n, n * k))
    if direction in ("both", "t2v"):
        sim_t = sim.transpose(0, 1)  # sim_t[i, j, c] = S[j, i, c]
        col_mask = (text_ok[:, None, :] & valid[None, :, None]) | free[:, None, None]
        parts.append(sim_t.masked_fill(~col_mask, float("-inf")).reshape(n, n * k))
    log_den = torch.cat(parts, dim=1).logsumexp(dim=1)

    per_triplet = torch.where(valid, log_den - log_num, torch.zeros_like(log_num))
    if reduction == "none":
        return per_triplet
    return per_triplet.sum() / valid.sum().clamp(min=1)


def nce(
    z_v: torch.Tensor,
    z_a: torch.Tensor,
    temperature: float = 0.07,
    sample_mask: torch.Tensor | None = None,
    normalize: bool = True,
    direction: str = "both",
    reduction: str = "mean",
    gather: bool = True,
) -> torch.Tensor:
    """Symmetric NCE between paired embeddings ``z_v`` [B, D] and ``z_a`` [B, D].

    This is :func:`mil_nce` with one candidate: for anchor ``i``,
    ``loss_i = logsumexp({s_ij}_j U {s_ji}_j) - s_ii`` with ``s = z_v z_a^T / tau`` (the
    positive counted twice). ``direction="v2t"`` (alias ``"v2a"``) is the paper's Eq. (2):
    ``logsumexp_j s_ij - s_ii``; ``"t2v"`` (alias ``"a2v"``) uses the column. ``sample_mask``
    leaves triplets out (e.g. clips without an audio track). Other arguments as
    :func:`mil_nce`.

    Example:
        >>> z = torch.eye(4)
        >>> loss = nce(z, z, temperature=1.0)
        >>> import math   # 2 positives e^1 and 6 negatives e^0 in the denominator
        >>> abs(loss.item() - (math.log(2 * math.e + 6) - 1.0)) < 1e-6
        True
    """
    aliases = {"v2a": "v2t", "a2v": "t2v"}
    direction = aliases.get(direction, direction)
    _check_embeddings("z_v", z_v, 2, "[B, D]")
    _check_embeddings("z_a", z_a, 2, "[B, D]")
    if z_a.shape != z_v.shape:
        raise ValueError(
            f"z_a must have the shape of z_v {tuple(z_v.shape)}, got {tuple(z_a.shape)}")
    return mil_nce(z_v, z_a[:, None, :], temperature=temperature, sample_mask=sample_mask,
                   normalize=normalize, direction=direction, reduction=reduction,
                   gather=gather)
