"""VATT configuration and the named presets."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

HEAD_NORMS = ("batchnorm", "layernorm", "none")


@dataclass
class VATTConfig:
    """Everything that defines a VATT model.

    Inputs: ``video_frames`` frames of ``video_size`` x ``video_size`` pixels cut into
    ``video_patch = (t, h, w)`` patches; ``audio_seconds`` of audio at ``audio_rate`` Hz cut
    into raw-waveform patches of ``audio_patch`` samples; narrations of at most ``max_words``
    tokens over ``vocab_size`` ids (0 = padding), ``num_candidates`` (MIL-NCE k) per clip.
    These sizes fix the positional tables: longer inputs are rejected, shorter ones use the
    first entries.

    Backbone: ``depth`` pre-norm transformer layers of ``width`` with ``heads`` heads and an MLP
    of ``mlp_dim`` (GELU), ``dropout`` on residual branches and attention weights. Text ids are
    embedded in ``text_embed_dim`` then projected to ``width``; VATT keeps pre-trained word2vec
    vectors frozen, we learn them unless ``text_embed_trainable=False`` (e.g. after loading
    pre-trained vectors into ``model.text_tokenizer.embed``). ``droptoken_rate`` is the
    fraction of video/audio tokens dropped during training. ``grad_checkpointing`` recomputes
    each layer in the backward pass.

    Heads ("fac"): video -> ``va_dim`` (video-audio space) -> ``vt_dim`` (video-text space);
    audio -> ``va_dim``; text -> ``vt_dim``; ``head_norm`` is ``"batchnorm"`` (as VATT),
    ``"layernorm"`` or ``"none"``.

    Example:
        >>> cfg = VATTConfig(width=64, heads=2)
        >>> cfg.num_video_tokens, cfg.num_audio_tokens, cfg.head_dim
        (64, 125, 32)
    """

    width: int = 192
    depth: int = 4
    heads: int = 3
    mlp_dim: int = 768
    dropout: float = 0.1
    droptoken_rate: float = 0.5
    grad_checkpointing: bool = False
    # video
    video_frames: int = 16
    video_size: int = 64
    video_patch: tuple[int, int, int] = (4, 16, 16)
    # audio
    audio_seconds: float = 2.0
    audio_rate: int = 16000
    audio_patch: int = 256
    # text
    vocab_size: int = 8192
    text_embed_dim: int = 128
    text_embed_trainable: bool = True
    max_words: int = 16
    num_candidates: int = 4
    # heads
    va_dim: int = 512
    vt_dim: int = 256
    head_norm: str = "batchnorm"
    layer_norm_eps: float = 1e-6
    check_inputs: bool = True

    def __post_init__(self) -> None:
        self.video_patch = tuple(int(p) for p in self.video_patch)
        positive = ("width", "depth", "heads", "mlp_dim", "video_frames", "video_size",
                    "audio_rate", "audio_patch", "vocab_size", "text_embed_dim", "max_words",
                    "num_candidates", "va_dim", "vt_dim")
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise ValueError(f"VATTConfig.{name} must be >= 1, got {getattr(self, name)}")
        if len(self.video_patch) != 3 or min(self.video_patch) < 1:
            raise ValueError(f"VATTConfig.video_patch must be 3 positive ints (t, h, w), "
                             f"got {self.video_patch}")
        if self.width % self.heads:
            raise ValueError(f"VATTConfig.width ({self.width}) must be divisible by heads "
                             f"({self.heads})")
        if not 0.0 <= self.droptoken_rate < 1.0:
            raise ValueError(f"VATTConfig.droptoken_rate must be in [0, 1), "
                             f"got {self.droptoken_rate}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"VATTConfig.dropout must be in [0, 1), got {self.dropout}")
        if self.head_norm not in HEAD_NORMS:
            raise ValueError(f"VATTConfig.head_norm must be one of {HEAD_NORMS}, "
                             f"got {self.head_norm!r}")
        pt, ph, pw = self.video_patch
        if self.video_frames < pt or self.video_size < max(ph, pw):
            raise ValueError(f"VATTConfig: a clip of {self.video_frames} frames of "
                             f"{self.video_size}px is smaller than one patch {self.video_patch}")
        if self.audio_samples < self.audio_patch:
            raise ValueError(f"VATTConfig: {self.audio_samples} audio samples are fewer than "
                             f"one patch ({self.audio_patch})")

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @property
    def audio_samples(self) -> int:
        return int(round(self.audio_seconds * self.audio_rate))

    @property
    def video_grid(self) -> tuple[int, int, int]:
        """Positional table sizes (temporal, vertical, horizontal) of the video tokens."""
        pt, ph, pw = self.video_patch
        return self.video_frames // pt, self.video_size // ph, self.video_size // pw

    @property
    def num_video_tokens(self) -> int:
        t, h, w = self.video_grid
        return t * h * w

    @property
    def num_audio_tokens(self) -> int:
        return self.audio_samples // self.audio_patch

    def num_kept(self, n: int) -> int:
        """Tokens kept by DropToken out of ``n``: ``floor(n * (1 - rate))``, at least 1."""
        return max(1, int(n * (1.0 - self.droptoken_rate)))

    def replace(self, **overrides) -> VATTConfig:
        """A copy with some fields changed (unknown names are an error)."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ValueError(f"unknown VATTConfig field(s) {unknown}; known: {sorted(names)}")
        return dataclasses.replace(self, **overrides)


# VATT's own input sizes (32 frames of 224px at 10 fps, 3.2 s of 48 kHz audio in patches of
# 128 samples, 16 words, 300-d word embeddings over a 2^16 vocabulary).
_VATT_INPUTS = dict(video_frames=32, video_size=224, video_patch=(4, 16, 16), audio_seconds=3.2,
                    audio_rate=48000, audio_patch=128, vocab_size=2**16, text_embed_dim=300,
                    max_words=16)

# tiny/small are the CPU presets (the demo's 16 frames of 64px, 2 s of 16 kHz audio, k = 4);
# they use no dropout: on a few hundred steps it costs time and buys nothing.
PRESETS: dict[str, VATTConfig] = {
    "tiny": VATTConfig(width=192, depth=4, heads=3, mlp_dim=768, dropout=0.0),
    "small": VATTConfig(width=384, depth=6, heads=6, mlp_dim=1536, dropout=0.0),
    "base": VATTConfig(width=768, depth=12, heads=12, mlp_dim=3072, **_VATT_INPUTS),
    "medium": VATTConfig(width=1024, depth=12, heads=16, mlp_dim=4096, **_VATT_INPUTS),
}


def get_config(preset: str, **overrides) -> VATTConfig:
    """The configuration of a named preset (``tiny``, ``small``, ``base``, ``medium``).

    Example:
        >>> get_config("tiny", depth=2).depth
        2
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown VATT preset {preset!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[preset].replace(**overrides)
