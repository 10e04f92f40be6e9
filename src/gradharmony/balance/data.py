"""Audio-visual classification data for ``train-av``: the synthetic set -> feature splits.

The source is :func:`gradharmony.data.synthetic.av_classification_arrays`, a set in which
audio is much more informative than video (as in CREMA-D): train is samples
``0 .. n_train - 1`` and test samples ``n_train .. n_train + n_test - 1`` of the same seed
(the layout of the ``av`` split on disk). Features are extracted once and cached.
"""

from __future__ import annotations

import hashlib
import json
import os

import torch

from gradharmony.balance.features import extract_features

#: CPU default of the raw clips: 2 s, 16 frames of 32 x 32 at 8 fps, 8 kHz audio.
DEFAULT_CLIP = {"frames": 16, "fps": 8.0, "size": 32, "sample_rate": 8000}
#: CPU default of the features: 8 x 8 thumbnails + frame differences; 16 x 24 log bands.
DEFAULT_FEATURES = {"grid": 8, "frames": 16, "bands": 24, "motion": True}


def load_av_features(
    n_train: int, n_test: int, seed: int = 0, clip: dict | None = None,
    features: dict | None = None, cache_dir: str | None = None,
) -> dict:
    """Feature splits ``{"train": ..., "test": ..., "class_names": [...], "source": str}``.

    ``clip`` overrides :data:`DEFAULT_CLIP` (any argument of ``av_classification_arrays``),
    ``features`` overrides :data:`DEFAULT_FEATURES`. With ``cache_dir`` the features are
    saved there under a name derived from all settings, and reloaded on the next call.

    Example:
        >>> d = load_av_features(3, 2, seed=0, clip={"frames": 4, "size": 16})
        >>> d["train"]["audio"].shape[0], d["test"]["visual"].shape, d["class_names"][0]
        (3, torch.Size([2, 3, 384]), 'bouncing')
    """
    from gradharmony.data.synthetic import av_classification_arrays

    if n_train < 1 or n_test < 1:
        raise ValueError(f"n_train and n_test must be >= 1, got {n_train}, {n_test}")
    clip = {**DEFAULT_CLIP, **(clip or {})}
    feats = {**DEFAULT_FEATURES, **(features or {})}
    settings = {"n_train": n_train, "n_test": n_test, "seed": seed, "clip": clip,
                "features": feats}
    path = None
    if cache_dir:
        digest = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
        path = os.path.join(cache_dir, f"av-features-{digest}.pt")
        if os.path.exists(path):
            return torch.load(path, weights_only=True)
    tr = av_classification_arrays(n_train, seed, start=0, **clip)
    te = av_classification_arrays(n_test, seed, start=n_train, **clip)
    out = {"train": extract_features(tr, **feats), "test": extract_features(te, **feats),
           "class_names": list(tr["class_names"]),
           "source": f"gradharmony.data.synthetic.av_classification_arrays {settings}"}
    if path:
        os.makedirs(cache_dir, exist_ok=True)
        tmp = path + ".tmp"
        torch.save(out, tmp)
        os.replace(tmp, path)
    return out
