"""Zero-shot video<->text retrieval: recall at K and median rank.

Tie rule (pessimistic): a candidate whose score *equals* the true candidate's score is
counted as ranked ahead of it, so the rank of the truth for query ``i`` is
``1 + #{j != i : S[i, j] >= S[i, i]}``. A model that outputs a constant similarity therefore
scores the worst rank, never a lucky R@1.
"""

from __future__ import annotations

import numpy as np
import torch

TIE_RULE = "pessimistic: candidates scoring equal to the true one rank ahead of it"


def _as_numpy(x, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D [queries, candidates] matrix, got {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is empty: shape {arr.shape}")
    if arr.shape[1] < arr.shape[0]:
        raise ValueError(
            f"{name} has fewer candidates than queries {arr.shape}: the ground truth of query i "
            "is candidate i (the diagonal)"
        )
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite scores")
    return arr


def truth_ranks(similarity) -> np.ndarray:
    """1-based rank of the true candidate (the diagonal) for every query, ties pessimistic.

    Example:
        >>> truth_ranks([[0.9, 0.1], [0.5, 0.5]]).tolist()
        [1, 2]
    """
    s = _as_numpy(similarity, "similarity")
    n = s.shape[0]
    diag = s[np.arange(n), np.arange(n)][:, None]
    ahead = (s >= diag).sum(axis=1) - 1  # the true candidate itself always satisfies >=
    return (ahead + 1).astype(np.int64)


def retrieval_metrics(similarity, ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """R@K (percent) and median rank (1-based) for a [queries, candidates] similarity matrix.

    The ground truth of query ``i`` is candidate ``i``. Ties are pessimistic (see module
    docstring). ``MedR`` is ``numpy.median`` of the ranks (a half-integer for an even number
    of queries whose two middle ranks differ).

    Example:
        >>> s = [[0.9, 0.2, 0.1], [0.8, 0.3, 0.1], [0.1, 0.1, 0.1]]
        >>> {k: round(v, 2) for k, v in retrieval_metrics(s, ks=(1, 2)).items()}
        {'R@1': 33.33, 'R@2': 66.67, 'MedR': 2.0}
    """
    ranks = truth_ranks(similarity)
    out = {f"R@{k}": float(100.0 * np.mean(ranks <= k)) for k in ks}
    out["MedR"] = float(np.median(ranks))
    return out


def average_windows(embeddings: torch.Tensor) -> torch.Tensor:
    """Average L2-normalised embeddings over the windows of each clip and re-normalise.

    ``embeddings`` is ``[N, W, D]`` (W windows per clip), the result ``[N, D]``: the VATT
    protocol of scoring a clip by the mean of its windows' embeddings.

    Example:
        >>> e = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
        >>> average_windows(e)
        tensor([[0.7071, 0.7071]])
    """
    if embeddings.ndim != 3:
        raise ValueError(f"embeddings must be [clips, windows, dim], got {tuple(embeddings.shape)}")
    mean = torch.nn.functional.normalize(embeddings.float(), dim=-1).mean(dim=1)
    return torch.nn.functional.normalize(mean, dim=-1)


def bidirectional_retrieval(video: torch.Tensor, text: torch.Tensor) -> dict[str, dict]:
    """Video->text and text->video metrics from paired ``[N, D]`` embeddings (row i with row i).

    Example:
        >>> v = torch.eye(3)
        >>> r = bidirectional_retrieval(v, v)
        >>> r["video_to_text"]["R@1"], r["text_to_video"]["MedR"]
        (100.0, 1.0)
    """
    if video.ndim != 2 or text.ndim != 2 or video.shape != text.shape:
        raise ValueError(
            f"video and text embeddings must both be [N, D] with the same shape, got "
            f"{tuple(video.shape)} and {tuple(text.shape)}"
        )
    v = torch.nn.functional.normalize(video.double(), dim=-1)
    t = torch.nn.functional.normalize(text.double(), dim=-1)
    sim = v @ t.T
    return {
        "video_to_text": retrieval_metrics(sim),
        "text_to_video": retrieval_metrics(sim.T),
    }
