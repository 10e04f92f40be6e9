"""Audio-visual classification data for ``train-av``: raw arrays -> feature splits.

The default source is ``gradharmony.data.synthetic.av_classification_arrays`` (a set in which
audio is much more informative than video, as in CREMA-D). Until that generator is
available, :func:`standin_av_arrays` provides arrays of the same layout.
"""

from __future__ import annotations

import numpy as np
import torch

from gradharmony.balance.features import extract_features


def standin_av_arrays(
    n: int, seed: int = 0, num_classes: int = 6, frames: int = 4, size: int = 16,
    samples: int = 4000, audio_reliability: float = 0.85, video_reliability: float = 0.6,
) -> dict:
    """Small audio-visual set of the synthetic generator's layout, audio dominant.

    Class c: a tone at frequency ``f_c`` (audio) and a square of colour/position c (video).
    Each modality shows its own class with probability ``*_reliability``, otherwise another
    class's cue drawn independently per modality, so the two are complementary.

    Example:
        >>> a = standin_av_arrays(5, seed=1)
        >>> a["video"].shape, a["video"].dtype, a["audio"].shape, a["label"].tolist()[:2]
        ((5, 4, 16, 16, 3), dtype('uint8'), (5, 4000), [2, 3])
    """
    rng = np.random.default_rng(seed)
    y = rng.integers(num_classes, size=n)

    def cue(rel):
        other = (y + rng.integers(1, num_classes, size=n)) % num_classes
        return np.where(rng.random(n) < rel, y, other)

    ca, cv = cue(audio_reliability), cue(video_reliability)
    t = np.arange(samples) / 8000.0
    freqs = 300.0 * 1.45 ** np.arange(num_classes)
    phase = rng.uniform(0, 2 * np.pi, size=(n, 1))
    audio = 0.3 * np.sin(2 * np.pi * freqs[ca][:, None] * t + phase)
    audio += rng.normal(0, 0.3, size=audio.shape)
    video = rng.normal(0.45, 0.25, size=(n, frames, size, size, 3))
    colors = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 1, 1], [1, 0, 1]], float)
    half = size // 2
    for i in range(n):
        c = cv[i]
        r0 = (c % 2) * half + rng.integers(0, half // 2)
        c0 = (c // 2 % 2) * half + rng.integers(0, half // 2)
        video[i, :, r0:r0 + half // 2 + 2, c0:c0 + half // 2 + 2] += 0.35 * colors[c % 6]
    video = (np.clip(video, 0, 1) * 255).astype(np.uint8)
    return {"video": video, "audio": np.clip(audio, -1, 1).astype(np.float32),
            "label": y.astype(np.int64),
            "class_names": [f"class{c}" for c in range(num_classes)]}


def av_arrays(n: int, seed: int, **kwargs) -> tuple[dict, str]:
    """Raw arrays from the synthetic generator, or the stand-in when it is unavailable."""
    try:
        from gradharmony.data.synthetic import av_classification_arrays
    except ImportError:
        return standin_av_arrays(n, seed, **kwargs), "standin"
    return av_classification_arrays(n, seed=seed, **kwargs), "gradharmony.data.synthetic"


def load_av_features(n_train: int, n_test: int, seed: int = 0, **kwargs) -> dict:
    """Feature splits ``{"train": ..., "test": ..., "source": str, "class_names": [...]}``.

    Train and test are generated with different seeds (``seed`` and ``seed + 10_000``).

    Example:
        >>> d = load_av_features(8, 4, seed=0)
        >>> d["train"]["audio"].shape[0], d["test"]["visual"].shape[0]
        (8, 4)
    """
    tr_raw, source = av_arrays(n_train, seed, **kwargs)
    te_raw, _ = av_arrays(n_test, seed + 10_000, **kwargs)
    return {"train": extract_features(tr_raw), "test": extract_features(te_raw),
            "source": source, "class_names": list(tr_raw.get("class_names", []))}


def as_tensors(split: dict) -> dict:
    """Make sure every array of a split is a torch tensor."""
    return {k: torch.as_tensor(v) for k, v in split.items()}
