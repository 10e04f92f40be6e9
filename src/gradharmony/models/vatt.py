"""VATT: the Video-Audio-Text Transformer (Akbari et al. 2021), modality-agnostic or -specific.

Per modality: tokenizer (patches / words -> Linear -> Linear+GELU -> + positions), DropToken
(video and audio, training only), a learned aggregation token, the transformer backbone, a
post-projection (Linear+GELU) of the aggregation token = the pooled feature, and the "fac"
heads into the video-audio (512) and video-text (256) spaces. The modality-agnostic model
shares one backbone between the three modalities (the paper's main setting); the
modality-specific model has one backbone per modality (the paper's Table 3).

Every forward keeps the triplet on dim 0: the text pass runs on ``B * k`` rows, row ``r``
belonging to triplet ``r // k``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import validation
from .config import VATTConfig, get_config
from .heads import FACHead
from .tokenizers import AggToken, AudioTokenizer, TextEmbedder, VideoTokenizer, drop_tokens
from .transformer import Transformer

MODALITIES = ("video", "audio", "text")


class VATT(nn.Module):
    """The Video-Audio-Text Transformer.

    Args:
        config: a :class:`VATTConfig`.
        modality_agnostic: one backbone shared by video, audio and text (True) or one
            backbone per modality (False).

    ``forward(batch)`` takes the batch dict of ``docs/architecture.md`` (``video``
    ``[B, T, H, W, 3]`` or ``[B, 3, T, H, W]`` in [0, 1], ``audio`` ``[B, S]``, ``text``
    ``[B, k, L]`` int64 with ``text_mask``; any subset of the three) and returns, for the
    modalities present, ``video_va`` ``[B, 512]``, ``video_vt`` ``[B, 256]``, ``audio_va``
    ``[B, 512]``, ``text_vt`` ``[B, k, 256]`` (L2-normalised) and the pooled features
    ``video_feat``, ``audio_feat`` ``[B, D]``, ``text_feat`` ``[B, k, D]``.

    Example:
        >>> model = create_model("tiny", depth=1, vocab_size=100).eval()
        >>> batch = {"video": torch.rand(2, 16, 64, 64, 3), "audio": torch.zeros(2, 32000),
        ...          "text": torch.randint(1, 100, (2, 4, 16))}
        >>> out = model(batch)
        >>> out["video_va"].shape, out["text_vt"].shape, out["audio_feat"].shape
        (torch.Size([2, 512]), torch.Size([2, 4, 256]), torch.Size([2, 192]))
    """

    def __init__(self, config: VATTConfig, modality_agnostic: bool = True):
        super().__init__()
        cfg = self.config = config
        self.modality_agnostic = modality_agnostic
        D = cfg.width
        self.video_tokenizer = VideoTokenizer(D, cfg.video_patch, cfg.video_grid)
        self.audio_tokenizer = AudioTokenizer(D, cfg.audio_patch, cfg.num_audio_tokens)
        self.text_tokenizer = TextEmbedder(D, cfg.vocab_size, cfg.text_embed_dim, cfg.max_words)
        self.agg = nn.ModuleDict({m: AggToken(D) for m in MODALITIES})

        def transformer() -> Transformer:
            return Transformer(D, cfg.depth, cfg.heads, cfg.mlp_dim, cfg.dropout,
                               cfg.layer_norm_eps, cfg.grad_checkpointing)

        if modality_agnostic:
            self.backbone = transformer()
        else:
            self.backbones = nn.ModuleDict({m: transformer() for m in MODALITIES})
        self.post_proj = nn.ModuleDict({m: nn.Linear(D, D) for m in MODALITIES})
        self.head = FACHead(D, cfg.va_dim, cfg.vt_dim, cfg.head_norm)
        self.apply(_init_weights)
        self.text_tokenizer.embed.weight.requires_grad_(cfg.text_embed_trainable)

    # -- structure -----------------------------------------------------------------------
    def backbone_for(self, modality: str) -> Transformer:
        """The transformer that encodes ``modality`` (the same object for all when shared)."""
        if modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
        return self.backbone if self.modality_agnostic else self.backbones[modality]

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        """Turn gradient checkpointing of the backbone layers on or off."""
        self.config.grad_checkpointing = enabled
        for m in MODALITIES:
            self.backbone_for(m).grad_checkpointing = enabled

    def num_tokens(self, modality: str, training: bool | None = None) -> int:
        """Sequence length the backbone sees for a full-size input (aggregation token included).

        Example:
            >>> m = create_model("tiny", depth=1, vocab_size=10)
            >>> m.num_tokens("video", training=True), m.num_tokens("video", training=False)
            (33, 65)
        """
        training = self.training if training is None else training
        cfg = self.config
        if modality == "text":
            return cfg.max_words + 1
        n = cfg.num_video_tokens if modality == "video" else cfg.num_audio_tokens
        if modality not in ("video", "audio"):
            raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
        return 1 + (cfg.num_kept(n) if training and cfg.droptoken_rate > 0 else n)

    # -- encoding ------------------------------------------------------------------------
    def _pool(self, modality: str, tokens: torch.Tensor,
              mask: torch.Tensor | None = None) -> torch.Tensor:
        if modality != "text" and self.training and self.config.droptoken_rate > 0:
            tokens = drop_tokens(tokens, self.config.num_kept(tokens.shape[1]))
        x = self.agg[modality](tokens)
        if mask is not None:
            mask = torch.cat([mask.new_ones(mask.shape[0], 1), mask], dim=1)
        x = self.backbone_for(modality)(x, mask)
        return F.gelu(self.post_proj[modality](x[:, 0]))

    def encode_video(self, video: torch.Tensor) -> dict[str, torch.Tensor]:
        """``video`` -> ``video_feat`` [B, D], ``video_va`` [B, va], ``video_vt`` [B, vt]."""
        return self._video(validation.video_channels_last(video, self.config))

    def encode_audio(self, audio: torch.Tensor) -> dict[str, torch.Tensor]:
        """``audio`` [B, S] -> ``audio_feat`` [B, D], ``audio_va`` [B, va]."""
        return self._audio(validation.audio_waveform(audio, self.config))

    def encode_text(self, text: torch.Tensor,
                    text_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``text`` [B, k, L] (+ ``text_mask``) -> ``text_feat`` [B, k, D], ``text_vt`` [B, k, vt].

        The k candidates run as ``B * k`` rows (row ``r`` = triplet ``r // k``).
        """
        return self._text(*validation.text_ids(text, text_mask, self.config))

    def _video(self, video: torch.Tensor) -> dict[str, torch.Tensor]:
        feat = self._pool("video", self.video_tokenizer(video))
        va, vt = self.head.video(feat)
        return {"video_feat": feat, "video_va": F.normalize(va, dim=-1),
                "video_vt": F.normalize(vt, dim=-1)}

    def _audio(self, audio: torch.Tensor) -> dict[str, torch.Tensor]:
        feat = self._pool("audio", self.audio_tokenizer(audio))
        return {"audio_feat": feat, "audio_va": F.normalize(self.head.audio(feat), dim=-1)}

    def _text(self, text: torch.Tensor, text_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        B, k, L = text.shape
        tokens = self.text_tokenizer(text.reshape(B * k, L))
        feat = self._pool("text", tokens, text_mask.reshape(B * k, L))
        vt = F.normalize(self.head.text(feat), dim=-1)
        return {"text_feat": feat.reshape(B, k, -1), "text_vt": vt.reshape(B, k, -1)}

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        """Encode every modality present in ``batch`` (see the class docstring)."""
        if not isinstance(batch, dict):
            raise TypeError(f"VATT.forward takes the batch dict, got {type(batch)}")
        present = [m for m in MODALITIES if batch.get(m) is not None]
        if not present:
            raise ValueError("batch holds none of the keys 'video', 'audio', 'text'")
        cfg = self.config
        inputs = {}
        if "video" in present:
            inputs["video"] = (validation.video_channels_last(batch["video"], cfg),)
        if "audio" in present:
            inputs["audio"] = (validation.audio_waveform(batch["audio"], cfg),)
        if "text" in present:
            inputs["text"] = validation.text_ids(batch["text"], batch.get("text_mask"), cfg)
        validation.same_batch({m: args[0].shape[0] for m, args in inputs.items()})
        encoders = {"video": self._video, "audio": self._audio, "text": self._text}
        out: dict[str, torch.Tensor] = {}
        for m, args in inputs.items():
            out.update(encoders[m](*args))
        return out


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)


def create_model(preset: str | VATTConfig = "tiny", modality_agnostic: bool = True,
                 **overrides) -> VATT:
    """Build VATT from a preset name (``tiny``, ``small``, ``base``, ``medium``) or a config.

    ``overrides`` replace fields of the preset's :class:`VATTConfig` (e.g. ``vocab_size``).
    Build large presets on the meta device to inspect them without memory:
    ``with torch.device("meta"): create_model("medium")``.

    Example:
        >>> m = create_model("tiny", modality_agnostic=False, depth=1, vocab_size=10)
        >>> m.backbone_for("video") is m.backbone_for("text")
        False
    """
    if isinstance(preset, VATTConfig):
        cfg = preset.replace(**overrides)
    elif isinstance(preset, str):
        cfg = get_config(preset, **overrides)
    else:
        raise TypeError(f"preset must be a preset name or a VATTConfig, got {type(preset)}")
    return VATT(cfg, modality_agnostic=modality_agnostic)


def convert_sync_batchnorm(model: nn.Module, process_group=None) -> nn.Module:
    """Replace the heads' BatchNorm by SyncBatchNorm (statistics over all ranks under DDP).

    Use it for DDP training with ``head_norm="batchnorm"`` (VATT's cross-replica BatchNorm);
    the Harmonizer supports SyncBatchNorm.

    Example:
        >>> m = convert_sync_batchnorm(create_model("tiny", depth=1, vocab_size=10))
        >>> type(m.head.hid_norm).__name__
        'SyncBatchNorm'
    """
    return nn.SyncBatchNorm.convert_sync_batchnorm(model, process_group)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of (distinct) parameters of ``model``.

    Example:
        >>> count_parameters(nn.Linear(3, 2))
        8
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
