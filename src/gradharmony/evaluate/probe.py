"""Linear probe on frozen features: standardised multinomial logistic regression.

Protocol: features are standardised with the mean/std of the training part; a validation
split is carved deterministically (stratified, seeded) from the training part; the inverse
regularisation ``C`` with the best validation top-1 is kept (ties: the smaller ``C``, i.e.
the stronger regularisation); the probe is refit on the whole training part with that ``C``
and scored on the test split.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

DEFAULT_CS = (0.001, 0.01, 0.1, 1.0, 10.0, 100.0)


def _to_numpy(x, name: str, ndim: int) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is empty (0 rows): the split has no clips")
    return arr


def topk_accuracy(scores, labels, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """Top-k accuracy in percent from ``[N, C]`` class scores. With fewer than k classes,
    top-k is computed over all C classes (hence 100%).

    Ties are pessimistic: a class scoring equal to the true class ranks ahead of it.

    Example:
        >>> topk_accuracy([[0.1, 0.9, 0.0], [0.5, 0.2, 0.3]], [1, 2], ks=(1, 2))
        {'top1': 50.0, 'top2': 100.0}
    """
    s = _to_numpy(scores, "scores", 2).astype(np.float64)
    y = _to_numpy(labels, "labels", 1).astype(np.int64)
    if s.shape[0] != y.shape[0]:
        raise ValueError(f"scores has {s.shape[0]} rows but labels has {y.shape[0]}")
    if y.min() < 0 or y.max() >= s.shape[1]:
        raise ValueError(f"labels must lie in [0, {s.shape[1]}), got range [{y.min()}, {y.max()}]")
    true = s[np.arange(len(y)), y][:, None]
    rank = (s >= true).sum(axis=1)  # 1-based, pessimistic
    return {f"top{k}": float(100.0 * np.mean(rank <= k)) for k in ks}


def stratified_split(labels, fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic stratified split of indices into (fit, validation).

    Every class keeps at least one clip on the fit side; a class with >= 2 clips puts
    ``max(1, round(fraction * n_c))`` clips in validation.

    Example:
        >>> fit, val = stratified_split([0, 0, 0, 0, 1, 1, 1, 1], fraction=0.25, seed=0)
        >>> len(fit), len(val), sorted(set((val // 4).tolist()))
        (6, 2, [0, 1])
    """
    y = np.asarray(labels).ravel()
    rng = np.random.default_rng(seed)
    fit, val = [], []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        idx = idx[rng.permutation(idx.size)]
        n_val = 0 if idx.size < 2 else min(idx.size - 1, max(1, round(fraction * idx.size)))
        val.extend(idx[:n_val].tolist())
        fit.extend(idx[n_val:].tolist())
    return np.sort(np.array(fit, dtype=np.int64)), np.sort(np.array(val, dtype=np.int64))


def _fit(x, y, c, seed, max_iter):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=c, max_iter=max_iter, random_state=seed, tol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x, y)
    return clf


def _scores(clf, x, n_classes):
    """Class scores ``[N, n_classes]``; classes absent from the fit get -inf."""
    d = clf.decision_function(x)
    if d.ndim == 1:  # binary: sklearn returns the score of classes_[1] only
        d = np.stack([-d, d], axis=1)
    out = np.full((x.shape[0], n_classes), -np.inf)
    out[:, clf.classes_] = d
    return out


def linear_probe(
    train_x, train_y, test_x, test_y,
    cs: tuple[float, ...] = DEFAULT_CS,
    val_fraction: float = 0.2,
    seed: int = 0,
    max_iter: int = 1000,
) -> dict:
    """Fit a linear probe and report top-1/top-5 (percent) with the protocol used.

    Returns ``{"top1", "top5", "C", "val_top1", "C_grid", "n_train", "n_val", "n_test",
    "n_classes", "standardised", "seed"}``.

    Example:
        >>> x = np.array([[0.0], [0.1], [0.2], [1.0], [1.1], [1.2]])
        >>> y = np.array([0, 0, 0, 1, 1, 1])
        >>> linear_probe(x, y, x, y, cs=(1.0,), val_fraction=0.34)["top1"]
        100.0
    """
    xtr = _to_numpy(train_x, "train features", 2).astype(np.float64)
    ytr = _to_numpy(train_y, "train labels", 1).astype(np.int64)
    xte = _to_numpy(test_x, "test features", 2).astype(np.float64)
    yte = _to_numpy(test_y, "test labels", 1).astype(np.int64)
    if xtr.shape[0] != ytr.shape[0] or xte.shape[0] != yte.shape[0]:
        raise ValueError(
            f"features and labels disagree in length: train {xtr.shape[0]} vs {ytr.shape[0]}, "
            f"test {xte.shape[0]} vs {yte.shape[0]}"
        )
    if xtr.shape[1] != xte.shape[1]:
        raise ValueError(f"train features have dim {xtr.shape[1]}, test features {xte.shape[1]}")
    if (ytr < 0).any() or (yte < 0).any():
        raise ValueError("labels must be >= 0 (a clip with label -1 has no class)")
    classes = np.unique(ytr)
    if classes.size < 2:
        raise ValueError(f"the training split has a single class ({classes.tolist()}): "
                         "a probe needs at least two")
    if np.unique(yte).size < 2:
        raise ValueError(f"the test split has a single class ({np.unique(yte).tolist()}): "
                         "top-k accuracy on it says nothing")
    if not np.isin(np.unique(yte), classes).all():
        raise ValueError("the test split has classes absent from the training split")
    if not cs:
        raise ValueError("cs (the regularisation grid) is empty")
    n_classes = int(max(ytr.max(), yte.max()) + 1)

    mean = xtr.mean(axis=0)
    std = xtr.std(axis=0)
    std[std < 1e-12] = 1.0
    xtr = (xtr - mean) / std
    xte = (xte - mean) / std

    fit_idx, val_idx = stratified_split(ytr, val_fraction, seed)
    best_c, best_val = cs[0], -1.0
    if val_idx.size and np.unique(ytr[fit_idx]).size >= 2:
        for c in sorted(cs):
            clf = _fit(xtr[fit_idx], ytr[fit_idx], c, seed, max_iter)
            acc = topk_accuracy(_scores(clf, xtr[val_idx], n_classes), ytr[val_idx], (1,))["top1"]
            if acc > best_val:
                best_c, best_val = c, acc
    clf = _fit(xtr, ytr, best_c, seed, max_iter)
    res = topk_accuracy(_scores(clf, xte, n_classes), yte, (1, 5))
    res.update(
        C=float(best_c), val_top1=float(best_val), C_grid=[float(c) for c in cs],
        n_train=int(fit_idx.size + val_idx.size), n_val=int(val_idx.size),
        n_test=int(yte.size), n_classes=int(classes.size), standardised=True, seed=seed,
    )
    return res
