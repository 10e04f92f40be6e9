"""AUROC (Mann-Whitney, ties counted half) and its seeded percentile-bootstrap interval."""

from __future__ import annotations

import numpy as np


def _check(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel()
    if s.shape != y.shape:
        raise ValueError(f"scores {s.shape} and labels {y.shape} must have the same length")
    if s.size == 0:
        raise ValueError("scores is empty: AUROC needs at least one positive and one negative")
    if not np.isfinite(s).all():
        raise ValueError("scores contains NaN or infinite values")
    y = y.astype(bool)
    if y.all() or not y.any():
        raise ValueError(
            f"labels has a single class ({int(y.sum())} positives of {y.size}): AUROC needs both"
        )
    return s, y


def _rankdata(x: np.ndarray) -> np.ndarray:
    """Average 1-based ranks (ties share the mean of their positions)."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    boundaries = np.flatnonzero(np.diff(xs)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [xs.size]])
    avg = (starts + ends + 1) / 2.0  # mean of positions start+1 .. end
    ranks = np.empty_like(x)
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def auroc(scores, labels) -> float:
    """Area under the ROC curve of ``scores`` for detecting ``labels == 1`` (ties count 1/2).

    Equals ``sklearn.metrics.roc_auc_score(labels, scores)``.

    Example:
        >>> auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
        0.75
    """
    s, y = _check(scores, labels)
    ranks = _rankdata(s)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def bootstrap_auroc(
    scores, labels, n_boot: int = 1000, level: float = 0.95, seed: int = 0
) -> dict[str, float]:
    """AUROC with a percentile-bootstrap confidence interval (resampling clips, seeded).

    Resamples holding a single class are redrawn (they have no AUROC). Returns
    ``{"auroc", "low", "high", "level", "n_boot", "seed", "n", "n_pos"}``.

    Example:
        >>> r = bootstrap_auroc([0.1, 0.4, 0.35, 0.8, 0.7, 0.2], [0, 0, 1, 1, 1, 0], n_boot=200)
        >>> r["low"] <= r["auroc"] <= r["high"]
        True
    """
    s, y = _check(scores, labels)
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    rng = np.random.default_rng(seed)
    n = s.size
    values = np.empty(n_boot)
    filled = 0
    while filled < n_boot:
        idx = rng.integers(0, n, size=n)
        yb = y[idx]
        if yb.all() or not yb.any():
            continue
        values[filled] = auroc(s[idx], yb)
        filled += 1
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(values, [alpha, 1.0 - alpha])
    return {
        "auroc": auroc(s, y),
        "low": float(low),
        "high": float(high),
        "level": level,
        "n_boot": n_boot,
        "seed": seed,
        "n": int(n),
        "n_pos": int(y.sum()),
    }


def cluster_bootstrap_auroc(
    scores, labels, clusters, n_boot: int = 1000, level: float = 0.95, seed: int = 0
) -> dict[str, float]:
    """AUROC with a percentile interval from a cluster bootstrap: whole clusters (videos,
    batches) are resampled with replacement, so scores that are correlated within a cluster
    count as one draw, not as independent clips.

    ``clusters[i]`` is any hashable id of item ``i``'s cluster. With one item per cluster this
    is :func:`bootstrap_auroc` (same draws for the same seed). Resamples holding a single class
    are redrawn. Returns the keys of :func:`bootstrap_auroc` plus ``"clusters"``.

    Example:
        >>> s, y = [0.1, 0.4, 0.35, 0.8, 0.7, 0.2], [0, 0, 1, 1, 1, 0]
        >>> r = cluster_bootstrap_auroc(s, y, ["a", "a", "b", "b", "c", "c"], n_boot=200)
        >>> r["low"] <= r["auroc"] <= r["high"], r["clusters"]
        (True, 3)
    """
    s, y = _check(scores, labels)
    c = np.asarray(clusters).ravel()
    if c.shape != s.shape:
        raise ValueError(f"clusters {c.shape} and scores {s.shape} must have the same length")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    _, inverse = np.unique(c, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    counts = np.bincount(inverse)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    m = counts.size
    rng = np.random.default_rng(seed)
    values = np.empty(n_boot)
    filled = tries = 0
    while filled < n_boot:
        tries += 1
        if tries > 100 * n_boot:
            raise ValueError("cluster bootstrap: almost every resample holds a single class "
                             "(are the classes confined to a few clusters?)")
        pick = rng.integers(0, m, size=m)
        idx = np.concatenate([order[starts[p]:starts[p] + counts[p]] for p in pick])
        yb = y[idx]
        if yb.all() or not yb.any():
            continue
        values[filled] = auroc(s[idx], yb)
        filled += 1
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(values, [alpha, 1.0 - alpha])
    return {"auroc": auroc(s, y), "low": float(low), "high": float(high), "level": level,
            "n_boot": n_boot, "seed": seed, "n": int(s.size), "n_pos": int(y.sum()),
            "clusters": int(m)}
