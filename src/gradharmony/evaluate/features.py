"""Frozen features of a split: window-averaged embeddings and pooled backbone features.

Uses the per-modality encoders of the model contract (docs/architecture.md):
``encode_video(video)``, ``encode_audio(audio)``, ``encode_text(text, text_mask)``.
Embeddings (``*_va``, ``*_vt``) are averaged over windows and re-normalised (VATT's
multi-window protocol); pooled features (``*_feat``) are averaged over windows.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from gradharmony.evaluate.clips import ClipSet, iter_clipsets
from gradharmony.evaluate.retrieval import average_windows


def _windows_mean(x: torch.Tensor, n: int, w: int, normalise: bool) -> torch.Tensor:
    x = x.float().reshape(n, w, -1)
    return average_windows(x) if normalise else x.mean(dim=1)


def video_batch(clips: ClipSet, idx: np.ndarray, device, windows: int | None = None
                ) -> torch.Tensor:
    """Float video ``[len(idx) * W, T, H, W, 3]`` in [0, 1] (windows of a clip adjacent;
    only the first ``windows`` when given)."""
    v = torch.from_numpy(np.ascontiguousarray(clips.video[idx, :windows])).to(device)
    return v.flatten(0, 1).float().div_(255.0)


def audio_batch(clips: ClipSet, idx: np.ndarray, device, windows: int | None = None
                ) -> torch.Tensor:
    """Float audio ``[len(idx) * W, S]`` (only the first ``windows`` when given)."""
    a = np.ascontiguousarray(clips.audio[idx, :windows])
    return torch.from_numpy(a).to(device).flatten(0, 1).float()


def _distinct_windows(x: np.ndarray) -> int:
    """1 when every window of every clip in ``x`` ``[b, W, ...]`` equals the first (a video no
    longer than the model clip), else W: identical windows are encoded once."""
    return 1 if all(np.array_equal(x[:, 0], x[:, j]) for j in range(1, x.shape[1])) else \
        x.shape[1]


def text_batch(tokenizer, texts: list[str], length: int, device, neighbors=None, k: int = 1):
    """Token ids ``[B, k, L]``, token mask and candidate mask of narrations (own first)."""
    if tokenizer is None:
        raise ValueError("this run has no vocab.json: text cannot be tokenised for evaluation")
    out = [tokenizer.encode_candidates(t, (neighbors[i] if neighbors else []), k, length)
           for i, t in enumerate(texts)]
    ids, mask, cand = (torch.from_numpy(np.stack(x)).to(device) for x in zip(*out))
    return ids, mask, cand


@torch.no_grad()
def encode_clips(model, clips: ClipSet, tokenizer=None, text_len: int = 16,
                 batch_size: int = 32, device="cpu", modalities=("video", "audio", "text"),
                 progress: bool = True) -> dict[str, np.ndarray]:
    """Encode a split with a frozen model. Returns ``[N, D]`` arrays among ``video_va``,
    ``video_vt``, ``video_feat``, ``audio_va``, ``audio_feat``, ``text_vt``, ``text_feat``
    (text: the clip's own narration).

    Example:
        >>> from gradharmony.models import create_model
        >>> model = create_model("tiny", depth=1, width=32, heads=2, mlp_dim=64, video_frames=4,
        ...                      video_size=32, audio_seconds=0.5, vocab_size=10).eval()
        >>> clips = ClipSet(np.zeros((4, 1, 4, 32, 32, 3), np.uint8),
        ...                 np.zeros((4, 1, 8000), np.float32), np.ones(4, bool),
        ...                 ["a"] * 4, [[]] * 4, np.array([0, 1, 0, 1]), list("abcd"), [{}] * 4)
        >>> encode_clips(model, clips, modalities=("video",), progress=False)["video_vt"].shape
        (4, 256)
    """
    model.eval()
    n = clips.video.shape[0]
    parts: dict[str, list[torch.Tensor]] = {}
    for start in tqdm(range(0, n, batch_size), desc="encode", disable=not progress,
                      leave=False):
        idx = np.arange(start, min(n, start + batch_size))
        b = len(idx)
        if "video" in modalities:
            wv = _distinct_windows(clips.video[idx])
            out = model.encode_video(video_batch(clips, idx, device, wv))
            for key in ("video_va", "video_vt", "video_feat"):
                if key in out:
                    parts.setdefault(key, []).append(
                        _windows_mean(out[key], b, wv, key != "video_feat").cpu())
        if "audio" in modalities:
            wa = _distinct_windows(clips.audio[idx])
            out = model.encode_audio(audio_batch(clips, idx, device, wa))
            for key in ("audio_va", "audio_feat"):
                if key in out:
                    parts.setdefault(key, []).append(
                        _windows_mean(out[key], b, wa, key != "audio_feat").cpu())
        if "text" in modalities:
            ids, mask, _ = text_batch(tokenizer, [clips.texts[i] for i in idx], text_len,
                                      device)
            out = model.encode_text(ids, mask)
            for key in ("text_vt", "text_feat"):
                if key in out:
                    parts.setdefault(key, []).append(out[key][:, 0].float().cpu())
    return {k: torch.cat(v).numpy() for k, v in parts.items()}


def encode_split(model, path, spec, windows: int = 1, tokenizer=None, text_len: int = 16,
                 batch_size: int = 32, device="cpu", modalities=("video", "audio", "text"),
                 limit: int | None = None, progress: bool = True) -> dict:
    """:func:`encode_clips` over the shards at ``path``, decoded chunk by chunk (bounded
    memory). Returns the feature arrays plus ``labels``, ``keys``, ``texts`` and ``skipped``."""
    skipped: dict[str, int] = {}
    feats: dict[str, list] = {}
    labels, keys, texts = [], [], []
    for part in iter_clipsets(path, spec, windows, max(batch_size, 64), limit, progress,
                              skipped):
        for k, v in encode_clips(model, part, tokenizer, text_len, batch_size, device,
                                 modalities, progress=False).items():
            feats.setdefault(k, []).append(v)
        labels.append(part.labels)
        keys += part.keys
        texts += part.texts
    out: dict = {k: np.concatenate(v) for k, v in feats.items()}
    out.update(labels=np.concatenate(labels), keys=keys, texts=texts, skipped=skipped)
    return out
