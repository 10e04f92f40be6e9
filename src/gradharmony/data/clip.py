"""The clip geometry, defined once: :class:`ClipSpec`.

Its fields carry the names of a run config's ``data`` section (``frames``, ``fps``, ``size``,
``crop``, ``clip_seconds``, ``audio_rate``, ``text_len``, ``candidates``), and
:meth:`ClipSpec.from_config` is the one translation from such a section. The decoder, the
reader, the decoded-clip cache, evaluation and the model's input sizes
(:func:`gradharmony.evaluate.run.model_sizes`) all take their sizes from a ``ClipSpec``.

Example:
    >>> spec = ClipSpec.from_config({"data": {"frames": 8, "fps": 4.0, "crop": 32}})
    >>> spec.frames, spec.crop, spec.size, spec.audio_samples
    (8, 32, 72, 32000)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields


@dataclass(frozen=True)
class ClipSpec:
    """The sizes of a clip, as decoded and as the model sees it.

    Args:
        frames: number of frames T.
        fps: target frame rate of the sampled frames.
        size: short side after resizing; the central ``size x size`` square is kept.
        crop: side of the final crop (``crop <= size``).
        audio_rate: target audio sample rate (Hz), mono.
        clip_seconds: clip length; the audio has ``round(clip_seconds * audio_rate)`` samples
            and the frames span ``(frames - 1) / fps`` seconds, which must fit inside it.
        text_len: tokens per narration.
        candidates: candidate narrations per clip (the clip's own first).

    Example:
        >>> ClipSpec().frames, ClipSpec().crop, ClipSpec().audio_samples
        (16, 64, 32000)
        >>> ClipSpec(frames=40, fps=8.0, clip_seconds=2.0)
        Traceback (most recent call last):
        ...
        ValueError: ClipSpec: 40 frames at 8.0 fps span 4.875 s, longer than clip_seconds=2.0
    """

    frames: int = 16
    fps: float = 8.0
    size: int = 72
    crop: int = 64
    audio_rate: int = 16000
    clip_seconds: float = 2.0
    text_len: int = 16
    candidates: int = 4

    def __post_init__(self) -> None:
        for name in ("frames", "size", "crop", "audio_rate", "text_len", "candidates"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"ClipSpec: {name} must be >= 1, got {getattr(self, name)}")
        if self.fps <= 0 or self.clip_seconds <= 0:
            raise ValueError(f"ClipSpec: fps and clip_seconds must be > 0, got {self.fps}, "
                             f"{self.clip_seconds}")
        if self.crop > self.size:
            raise ValueError(f"ClipSpec: crop={self.crop} is larger than size={self.size}")
        span = (self.frames - 1) / self.fps
        if span > self.clip_seconds + 1e-9:
            raise ValueError(f"ClipSpec: {self.frames} frames at {self.fps} fps span {span} s, "
                             f"longer than clip_seconds={self.clip_seconds}")

    @property
    def audio_samples(self) -> int:
        """Number of audio samples of a clip."""
        return int(round(self.clip_seconds * self.audio_rate))

    def to_dict(self) -> dict:
        """Plain dict, keyed like a run config's ``data`` section."""
        return asdict(self)

    @classmethod
    def from_config(cls, config: Mapping) -> ClipSpec:
        """The clip geometry of a run config (a plain dict or a loaded training config): its
        ``data`` section's keys of the same names; a missing key keeps the default, a missing
        or empty ``crop`` is ``size``.

        Example:
            >>> ClipSpec.from_config({"data": {"size": 36, "text_len": 12}}).crop
            36
        """
        data = config.get("data", {}) or {}
        values = {f.name: type(f.default)(data[f.name])  # int or float, as the default
                  for f in fields(cls) if data.get(f.name) is not None}
        values.setdefault("crop", values.get("size", cls.size))
        return cls(**values)
