"""Input checks of VATT with errors that name the tensor and the expected shape."""

from __future__ import annotations

import torch

from .config import VATTConfig


def _finite(name: str, x: torch.Tensor) -> None:
    if x.device.type != "meta" and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or infinite values")


def _tensor(name: str, x, shape_doc: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {shape_doc}, got {type(x)}")
    return x


def video_channels_last(video: torch.Tensor, cfg: VATTConfig) -> torch.Tensor:
    """Check ``video`` and return it as float ``[B, T, H, W, 3]``.

    Accepts channels-last ``[B, T, H, W, 3]`` or channels-first ``[B, 3, T, H, W]`` (detected
    by ``shape[1] == 3 and shape[-1] != 3``), values in [0, 1].

    Example:
        >>> video_channels_last(torch.rand(2, 3, 16, 64, 64), VATTConfig()).shape
        torch.Size([2, 16, 64, 64, 3])
    """
    doc = "[B, T, H, W, 3] (or [B, 3, T, H, W])"
    video = _tensor("video", video, doc)
    if video.dim() != 5:
        raise ValueError(f"video must have shape {doc}, got {tuple(video.shape)}")
    if video.shape[1] == 3 and video.shape[-1] != 3:
        video = video.permute(0, 2, 3, 4, 1)
    if video.shape[-1] != 3:
        raise ValueError(f"video must have 3 colour channels, shape {doc}; "
                         f"got {tuple(video.shape)}")
    if not video.is_floating_point():
        raise ValueError(f"video must be a float tensor with values in [0, 1], got {video.dtype}")
    _, t, h, w, _ = video.shape
    pt, ph, pw = cfg.video_patch
    if t < pt or h < ph or w < pw:
        raise ValueError(f"video clip [T={t}, H={h}, W={w}] is smaller than one patch "
                         f"{tuple(cfg.video_patch)} (t, h, w)")
    gt, gh, gw = cfg.video_grid
    if t // pt > gt or h // ph > gh or w // pw > gw:
        raise ValueError(
            f"video [T={t}, H={h}, W={w}] gives a patch grid ({t // pt}, {h // ph}, {w // pw}) "
            f"larger than the positional table ({gt}, {gh}, {gw}); expected at most "
            f"T={cfg.video_frames}, H=W={cfg.video_size}")
    if cfg.check_inputs:
        _finite("video", video)
    return video


def audio_waveform(audio: torch.Tensor, cfg: VATTConfig) -> torch.Tensor:
    """Check ``audio`` (float ``[B, S]``) against the patch size and positional table.

    Example:
        >>> audio_waveform(torch.zeros(2, 32000), VATTConfig()).shape
        torch.Size([2, 32000])
    """
    audio = _tensor("audio", audio, "[B, S]")
    if audio.dim() != 2:
        raise ValueError(f"audio must have shape [B, S] (mono waveform), got {tuple(audio.shape)}")
    if not audio.is_floating_point():
        raise ValueError(f"audio must be a float tensor with values in [-1, 1], got {audio.dtype}")
    n = audio.shape[1]
    if n < cfg.audio_patch:
        raise ValueError(f"audio has {n} samples, fewer than one patch ({cfg.audio_patch})")
    if n // cfg.audio_patch > cfg.num_audio_tokens:
        raise ValueError(
            f"audio [B, S={n}] gives {n // cfg.audio_patch} patches, more than the positional "
            f"table ({cfg.num_audio_tokens}); expected S <= {cfg.audio_samples}")
    if cfg.check_inputs:
        _finite("audio", audio)
    return audio


def text_ids(text: torch.Tensor, text_mask: torch.Tensor | None,
             cfg: VATTConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Check ``text`` (int ``[B, k, L]``) and ``text_mask`` (bool ``[B, k, L]``, default ids != 0).

    Example:
        >>> ids, mask = text_ids(torch.tensor([[[5, 6, 0]]]), None, VATTConfig())
        >>> mask.tolist()
        [[[True, True, False]]]
    """
    text = _tensor("text", text, "[B, k, L]")
    if text.dim() != 3:
        raise ValueError(f"text must have shape [B, k, L] (token ids of k candidates), "
                         f"got {tuple(text.shape)}")
    if text.dtype.is_floating_point or text.dtype == torch.bool or text.is_complex():
        raise ValueError(f"text must hold integer token ids (int64), got {text.dtype}")
    b, k, length = text.shape
    if length > cfg.max_words:
        raise ValueError(f"text [B, k, L={length}] is longer than the positional table "
                         f"(max_words={cfg.max_words})")
    if k < 1 or length < 1:
        raise ValueError(f"text must have k >= 1 candidates and L >= 1 tokens, "
                         f"got {(b, k, length)}")
    if text.device.type != "meta" and text.numel() and (
            int(text.min()) < 0 or int(text.max()) >= cfg.vocab_size):
        raise ValueError(f"text ids must lie in [0, vocab_size={cfg.vocab_size}), got range "
                         f"[{int(text.min())}, {int(text.max())}]")
    if text_mask is None:
        text_mask = text != 0
    else:
        text_mask = _tensor("text_mask", text_mask, "[B, k, L]")
        if tuple(text_mask.shape) != (b, k, length) or text_mask.dtype != torch.bool:
            raise ValueError(f"text_mask must be a bool tensor of shape [B={b}, k={k}, "
                             f"L={length}], "
                             f"got {text_mask.dtype} {tuple(text_mask.shape)}")
    return text.long(), text_mask


def same_batch(sizes: dict[str, int]) -> int:
    """The common batch size of the given tensors, or an error naming them.

    Example:
        >>> same_batch({"video": 4, "audio": 4})
        4
    """
    if len(set(sizes.values())) > 1:
        raise ValueError(f"batch sizes differ between modalities: {sizes}")
    return next(iter(sizes.values()))
