"""The paper's figures from plain arrays: conflict distributions (Fig. 4), a contact sheet of
the most and least gradient-aligned triplets (Fig. 3) and a t-SNE of the output space (Fig. 5).

Every function takes arrays, writes one PNG and returns its path, so it can be used on
numbers that did not come from a run directory.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

BANDS = ((5, 95), (25, 75))


def cosine_percentiles(cosines: list[np.ndarray]) -> np.ndarray:
    """Percentiles (5, 25, 50, 75, 95) of each step's cosines: ``[steps, 5]``.

    Example:
        >>> cosine_percentiles([np.linspace(-1, 1, 101)])[0].round(2).tolist()
        [-0.9, -0.5, 0.0, 0.5, 0.9]
    """
    if not cosines:
        raise ValueError("cosines is empty: no logged step to plot")
    return np.stack([np.percentile(np.asarray(c, dtype=float), [5, 25, 50, 75, 95])
                     for c in cosines])


def plot_conflict_distribution(
    series: dict[str, tuple[np.ndarray, list[np.ndarray]]], path: str | Path,
    title: str = "cos(g_va, g_vt) across training iterations",
    thresholds: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
) -> Path:
    """Figure 4: per method, percentile bands of the per-triplet cosine over steps.

    ``series`` maps a method label to ``(steps, cosines)`` where ``cosines[i]`` holds the
    per-triplet (or per-group) cosines logged at ``steps[i]``. One panel per method, shared y
    axis, the zero line drawn (below it the two gradients conflict). ``thresholds`` optionally
    maps a label to ``(steps, gamma)``: the curriculum threshold, drawn dashed.

    Example:
        >>> import tempfile, os
        >>> s = {"baseline": (np.arange(3), [np.random.default_rng(i).normal(size=32)
        ...                                  for i in range(3)])}
        >>> p = plot_conflict_distribution(s, os.path.join(tempfile.mkdtemp(), "f.png"))
        >>> p.exists()
        True
    """
    if not series:
        raise ValueError("series is empty: no run with logged cosines")
    n = len(series)
    fig, axes = plt.subplots(1, n, figsize=(max(6.0, 4.2 * n), 3.8), sharey=True,
                             squeeze=False)
    for ax, (label, (steps, cosines)) in zip(axes[0], series.items()):
        steps = np.asarray(steps)
        if len(steps) != len(cosines):
            raise ValueError(f"{label}: {len(steps)} steps but {len(cosines)} cosine arrays")
        q = cosine_percentiles(cosines)
        ax.fill_between(steps, q[:, 0], q[:, 4], alpha=0.2, color="C0", label="5-95th pct")
        ax.fill_between(steps, q[:, 1], q[:, 3], alpha=0.4, color="C0", label="25-75th pct")
        ax.plot(steps, q[:, 2], color="C0", lw=1.5, label="median")
        frac = np.array([np.mean(np.asarray(c) < 0) for c in cosines])
        ax.axhline(0.0, color="k", lw=0.8, ls="--")
        if thresholds and label in thresholds:
            ax.plot(*thresholds[label], color="C3", lw=1.2, ls="--", label="γ (drop below)")
        ax.set_title(f"{label}\n(mean share of cos < 0: {100 * frac.mean():.0f}%)", fontsize=10)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("cos(g_va, g_vt) per triplet")
    for ax in axes[0]:
        ax.legend(loc="lower right", fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def plot_cosine_histograms(
    cosines: dict[str, np.ndarray], path: str | Path,
    title: str = "Distribution of cos(g_va, g_vt) over all logged steps",
) -> Path:
    """Overlaid histograms of all logged cosines, one colour per method.

    Example:
        >>> import tempfile, os
        >>> p = plot_cosine_histograms({"a": np.zeros(10)}, os.path.join(tempfile.mkdtemp(),
        ...                            "h.png"))
        >>> p.suffix
        '.png'
    """
    if not cosines:
        raise ValueError("cosines is empty: no run with logged cosines")
    fig, ax = plt.subplots(figsize=(6, 3.6))
    bins = np.linspace(-1, 1, 41)
    for label, c in cosines.items():
        c = np.asarray(c, dtype=float).ravel()
        ax.hist(c, bins=bins, density=True, histtype="step", lw=1.5,
                label=f"{label} (mean {c.mean():+.2f})")
    ax.axvline(0.0, color="k", lw=0.8, ls="--")
    ax.set_xlabel("cos(g_va, g_vt)")
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_contact_sheet(
    groups: dict[str, list[dict]], path: str | Path, n_frames: int = 4,
    title: str = "Triplets with the most and least aligned gradients",
) -> Path:
    """Figure 3: for each group (e.g. "top 5%", "bottom 5%"), one row per triplet with a few
    frames, the narration, the cosine and the ground-truth alignment flags.

    Each item is ``{"frames": [T, H, W, 3] in [0, 1], "text": str, "cos": float,
    "flags": {"text_aligned": bool, ...}}`` (``flags`` may be empty when unknown).

    Example:
        >>> import tempfile, os
        >>> item = {"frames": np.zeros((8, 16, 16, 3)), "text": "a red ball", "cos": 0.5,
        ...         "flags": {"text_aligned": True}}
        >>> p = plot_contact_sheet({"top": [item]}, os.path.join(tempfile.mkdtemp(), "c.png"))
        >>> p.exists()
        True
    """
    rows = [(g, item) for g, items in groups.items() for item in items]
    if not rows:
        raise ValueError("groups holds no triplet to show")
    n_cols = n_frames + 1
    fig = plt.figure(figsize=(1.6 * n_frames + 4.2, 1.55 * len(rows) + 0.6))
    grid = fig.add_gridspec(len(rows), n_cols, width_ratios=[1] * n_frames + [2.6])
    for r, (group, item) in enumerate(rows):
        frames = np.asarray(item["frames"], dtype=float)
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"frames of a contact-sheet item must be [T, H, W, 3], got "
                             f"{frames.shape}")
        picks = np.linspace(0, frames.shape[0] - 1, n_frames).round().astype(int)
        for c, t in enumerate(picks):
            ax = fig.add_subplot(grid[r, c])
            ax.imshow(np.clip(frames[t], 0, 1))
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(group, fontsize=9, color="C2" if "top" in group else "C3")
            if r == 0:
                ax.set_title(f"frame {t}", fontsize=8)
        ax = fig.add_subplot(grid[r, n_frames])
        ax.axis("off")
        flags = item.get("flags") or {}
        flag_txt = ", ".join(f"{k}={'yes' if v else 'NO'}" for k, v in flags.items()) or "no flags"
        wrapped = textwrap.fill(f'"{item["text"]}"', 40)
        ax.text(0.0, 0.5, f"cos = {item['cos']:+.3f}\n{wrapped}\n{flag_txt}", fontsize=8,
                va="center", family="monospace",
                color="k" if all(flags.values()) else "C3")
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def tsne_2d(video: np.ndarray, text: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Joint 2-D t-SNE (scikit-learn, seeded, PCA init) of video and text embeddings.

    Runs with one OpenMP thread below 5000 points: on a shared CPU the thread pool's
    spin-waiting costs far more than it saves at these sizes.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> v2, t2 = tsne_2d(rng.normal(size=(10, 8)), rng.normal(size=(10, 8)))
        >>> v2.shape, t2.shape
        ((10, 2), (10, 2))
    """
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    video, text = np.asarray(video, float), np.asarray(text, float)
    if video.ndim != 2 or text.ndim != 2 or video.shape[1] != text.shape[1]:
        raise ValueError(f"video and text embeddings must be [N, D] with the same D, got "
                         f"{video.shape} and {text.shape}")
    x = np.concatenate([video, text])
    if x.shape[0] < 4:
        raise ValueError(f"t-SNE needs at least 4 points, got {x.shape[0]}")
    perplexity = float(min(30.0, (x.shape[0] - 1) / 3.0))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
    with threadpool_limits(limits=1 if x.shape[0] < 5000 else None):
        y = tsne.fit_transform(x)
    return y[: len(video)], y[len(video):]


def plot_tsne(
    embeddings: dict[str, tuple[np.ndarray, np.ndarray]], path: str | Path, seed: int = 0,
    title: str = "t-SNE of video and text embeddings (retrieval split)",
) -> Path:
    """Figure 5: one panel per method, video and text points in two colours.

    ``embeddings`` maps a method label to ``(video [N, D], text [N, D])``.

    Example:
        >>> import tempfile, os
        >>> rng = np.random.default_rng(0)
        >>> e = {"baseline": (rng.normal(size=(6, 4)), rng.normal(size=(6, 4)))}
        >>> plot_tsne(e, os.path.join(tempfile.mkdtemp(), "t.png")).exists()
        True
    """
    if not embeddings:
        raise ValueError("embeddings is empty: no run to plot")
    n = len(embeddings)
    fig, axes = plt.subplots(1, n, figsize=(max(6.0, 3.8 * n), 4.0), squeeze=False)
    for ax, (label, (video, text)) in zip(axes[0], embeddings.items()):
        v2, t2 = tsne_2d(video, text, seed)
        ax.scatter(v2[:, 0], v2[:, 1], s=10, c="C0", alpha=0.7, label="video")
        ax.scatter(t2[:, 0], t2[:, 1], s=10, c="C1", alpha=0.7, marker="^", label="text")
        ax.set_title(label)
        ax.set_xlabel("t-SNE 1")
        ax.set_ylabel("t-SNE 2")
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
