"""Low-dimensional inputs for the CPU default, pre-extracted once from raw clips.

- video ``uint8 [n, T, H, W, 3]`` -> ``float32 [n, T - 1, 2 * 3 * grid^2]``: each frame
  average-pooled to a ``grid x grid`` colour thumbnail in [0, 1], concatenated with its
  difference to the previous thumbnail (the synthetic classes are motions);
- audio ``float32 [n, S]`` -> ``float32 [n, frames, bands]``: log-magnitude STFT (Hann window
  ``n_fft``), frequency bins averaged into ``bands`` equal-width bands, time into ``frames``.

Both then go through per-dimension standardisation with the *training* statistics
(:func:`standardize`). The encoders see these sequences instead of pixels and waveforms,
which keeps the whole experiment grid within minutes on two cores.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def video_features(video, grid: int = 4) -> torch.Tensor:
    """``uint8 [n, T, H, W, 3]`` -> ``float32 [n, T, 3 * grid * grid]``.

    Example:
        >>> v = np.zeros((2, 3, 8, 8, 3), np.uint8); v[..., :4, :4, 0] = 255
        >>> f = video_features(v, grid=2)
        >>> f.shape, f[0, 0, :4].tolist()     # red channel of the 2x2 thumbnail
        (torch.Size([2, 3, 12]), [1.0, 0.0, 0.0, 0.0])
    """
    v = torch.as_tensor(np.asarray(video))
    if v.dim() != 5 or v.shape[-1] != 3:
        raise ValueError(f"video must be [n, T, H, W, 3], got {tuple(v.shape)}")
    n, t, h, w, _ = v.shape
    x = v.reshape(n * t, h, w, 3).permute(0, 3, 1, 2).float()
    if v.dtype == torch.uint8:
        x = x / 255.0
    x = F.adaptive_avg_pool2d(x, grid)
    return x.reshape(n, t, 3 * grid * grid).contiguous()


def audio_features(audio, frames: int = 16, bands: int = 24, n_fft: int = 256) -> torch.Tensor:
    """``float32 [n, S]`` -> log band energies ``float32 [n, frames, bands]``.

    Example:
        >>> t = torch.arange(4000) / 8000.0
        >>> low, high = torch.sin(2 * torch.pi * 500 * t), torch.sin(2 * torch.pi * 3000 * t)
        >>> f = audio_features(torch.stack([low, high]), frames=4, bands=8)
        >>> f.shape, int(f[0].mean(0).argmax()), int(f[1].mean(0).argmax())
        (torch.Size([2, 4, 8]), 0, 5)
    """
    a = torch.as_tensor(np.asarray(audio), dtype=torch.float32)
    if a.dim() != 2:
        raise ValueError(f"audio must be [n, S], got {tuple(a.shape)}")
    if a.shape[1] < n_fft:
        raise ValueError(f"audio has {a.shape[1]} samples per clip; need at least n_fft={n_fft}")
    spec = torch.stft(a, n_fft, hop_length=n_fft // 2, window=torch.hann_window(n_fft),
                      return_complex=True).abs()            # [n, n_fft/2 + 1, time]
    spec = F.adaptive_avg_pool2d(spec[:, 1:].unsqueeze(1), (bands, frames)).squeeze(1)
    return torch.log(spec + 1e-4).transpose(1, 2).contiguous()


def standardize(train: torch.Tensor, *others: torch.Tensor, eps: float = 1e-6):
    """Standardise the last dim of every tensor with the mean/std of ``train``.

    Example:
        >>> a, b = standardize(torch.tensor([[[0.0], [2.0]]]), torch.tensor([[[4.0]]]))
        >>> a.flatten().round(decimals=4).tolist(), b.flatten().round(decimals=4).tolist()
        ([-1.0, 1.0], [3.0])
    """
    flat = train.reshape(-1, train.shape[-1])
    mean, std = flat.mean(0), flat.std(0, unbiased=False) + eps
    return tuple((x - mean) / std for x in (train, *others))


def with_motion(v: torch.Tensor) -> torch.Tensor:
    """``[n, T, D]`` -> ``[n, T - 1, 2D]``: each frame (from the second) with its difference
    to the previous one, so the encoder sees motion directly.

    Example:
        >>> with_motion(torch.tensor([[[1.0], [3.0], [6.0]]])).tolist()
        [[[3.0, 2.0], [6.0, 3.0]]]
    """
    if v.shape[1] < 2:
        raise ValueError(f"motion features need at least 2 frames, got {v.shape[1]}")
    return torch.cat([v[:, 1:], v[:, 1:] - v[:, :-1]], dim=2)


def extract_features(arrays: dict, grid: int = 8, frames: int = 16, bands: int = 24,
                     motion: bool = True) -> dict:
    """``{"video", "audio", "label"}`` raw arrays -> ``{"visual", "audio", "label"}`` tensors.

    The visual sequence is :func:`video_features` (with :func:`with_motion` when ``motion``).

    Example:
        >>> raw = {"video": np.zeros((2, 3, 8, 8, 3), np.uint8),
        ...        "audio": np.zeros((2, 1000), np.float32), "label": np.array([0, 1])}
        >>> {k: tuple(v.shape) for k, v in extract_features(raw, grid=2).items()}
        {'visual': (2, 2, 24), 'audio': (2, 16, 24), 'label': (2,)}
    """
    for key in ("video", "audio", "label"):
        if key not in arrays:
            raise ValueError(f"audio-visual arrays need key {key!r}, got {sorted(arrays)}")
    v = video_features(arrays["video"], grid)
    return {
        "visual": with_motion(v) if motion else v,
        "audio": audio_features(arrays["audio"], frames, bands),
        "label": torch.as_tensor(np.asarray(arrays["label"]), dtype=torch.int64),
    }
