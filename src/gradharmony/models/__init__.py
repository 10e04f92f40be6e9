"""VATT (Video-Audio-Text Transformer) in PyTorch, modality-agnostic or modality-specific.

Built only from ``nn.Linear``, ``nn.LayerNorm``, ``nn.Embedding``, ``nn.BatchNorm1d`` and
parameter-free ops, so :class:`gradharmony.harmonize.Harmonizer` can compute per-triplet
gradients layer by layer.

Example:
    >>> import torch
    >>> from gradharmony.models import create_model
    >>> model = create_model("tiny", depth=1, vocab_size=50).eval()
    >>> out = model.encode_audio(torch.zeros(3, 32000))
    >>> out["audio_va"].shape, round(out["audio_va"].norm(dim=1)[0].item(), 4)
    (torch.Size([3, 512]), 1.0)
"""

from .config import PRESETS, VATTConfig, get_config
from .heads import FACHead
from .tokenizers import AudioTokenizer, TextEmbedder, VideoTokenizer, drop_tokens
from .transformer import Attention, Block, Transformer
from .vatt import MODALITIES, VATT, convert_sync_batchnorm, count_parameters, create_model

__all__ = [
    "MODALITIES",
    "PRESETS",
    "VATT",
    "Attention",
    "AudioTokenizer",
    "Block",
    "FACHead",
    "TextEmbedder",
    "Transformer",
    "VATTConfig",
    "VideoTokenizer",
    "convert_sync_batchnorm",
    "count_parameters",
    "create_model",
    "drop_tokens",
    "get_config",
]
