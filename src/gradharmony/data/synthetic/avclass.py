"""The audio-visual classification set, in which audio is much more informative than video (as
in CREMA-D), for the balanced-training methods (OGM-GE, Gradient-Blending, Modality-Drop).

Class ``k`` is the motion ``MOTIONS[k]``. Each modality carries the class independently:

- audio, with probability ``audio_informative`` (default 0.85): the sound of that motion played
  with the class's own timbre (``SHAPES[k % 7]``; random pitch) over background noise;
  otherwise background noise alone.
- video, with probability ``video_informative`` (default 0.6): an object of random shape and
  colour doing the motion, drawn semi-transparent (``video_contrast``) among static
  distractors; otherwise the same kind of object standing still.

So a perfect audio-only classifier reaches about ``pa + (1 - pa) / K``, a video-only one
``pv + (1 - pv) / K``, and a fusion of both ``1 - (1 - pa)(1 - pv)(1 - 1/K)`` (0.875, 0.667 and
0.95 with the defaults and K = 6): the video branch has something to add, but it is the weaker
and slower-to-learn modality, which is the imbalance OGM-GE targets.

Sample ``i`` depends only on ``(seed, i)`` and the settings, never on ``n``, so the first ``m``
samples of a set of ``n`` are the set of ``m``. The ``av`` split written by
``gradharmony make-data synthetic`` holds the encoded samples ``0 .. n-1`` of
``av_classification_arrays(n, info["av"]["seed"])`` (train first, then test): the arrays here are
the same content before mp4/AAC encoding.

Example:
    >>> d = av_classification_arrays(4, seed=0, frames=4, size=32, sample_rate=8000)
    >>> d["video"].shape, d["video"].dtype, d["audio"].shape, d["audio"].dtype
    ((4, 4, 32, 32, 3), dtype('uint8'), (4, 4000), dtype('float32'))
    >>> d["label"].dtype, d["class_names"][:2]
    (dtype('int64'), ['bouncing', 'sliding'])
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from tqdm.auto import tqdm

from .events import MOTIONS, SHAPES, Event, sample_event
from .render import render_clip, sample_scene
from .sound import clip_audio, event_sound

__all__ = ["AVClassConfig", "av_classification_arrays", "av_sample"]

_AV_STREAM = 0x41560000  # seeds of this set: SeedSequence([seed, _AV_STREAM, i])


@dataclass(frozen=True)
class AVClassConfig:
    """Settings of the audio-visual classification set (see the module docstring)."""

    num_classes: int = 6
    frames: int = 16
    fps: float = 8.0
    size: int = 64
    sample_rate: int = 16000
    audio_informative: float = 0.85
    video_informative: float = 0.6
    video_contrast: float = 0.6
    noise_level: float = 0.05

    def __post_init__(self) -> None:
        if not 2 <= self.num_classes <= len(MOTIONS):
            raise ValueError(f"num_classes: expected 2..{len(MOTIONS)}, got {self.num_classes}")
        for name in ("audio_informative", "video_informative", "video_contrast"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}: expected a probability in [0, 1], got {value}")
        if self.frames < 1 or self.size < 8 or self.fps <= 0 or self.sample_rate < 1000:
            raise ValueError(
                f"AVClassConfig sizes: need frames >= 1, size >= 8, fps > 0, sample_rate >= 1000; "
                f"got frames={self.frames}, size={self.size}, fps={self.fps}, "
                f"sample_rate={self.sample_rate}")
        if self.noise_level < 0:
            raise ValueError(f"noise_level: expected >= 0, got {self.noise_level}")

    @property
    def duration(self) -> float:
        return self.frames / self.fps

    @property
    def n_samples(self) -> int:
        return int(round(self.duration * self.sample_rate))

    @property
    def class_names(self) -> list[str]:
        return list(MOTIONS[: self.num_classes])


def av_sample(index: int, seed: int, config: AVClassConfig = AVClassConfig()
              ) -> tuple[np.ndarray, np.ndarray, dict]:
    """Sample ``index`` of the set: ``(frames uint8 [T, H, W, 3], audio float32 [S], meta)``.

    ``meta`` holds ``label``, ``label_name``, ``audio_informative``, ``video_informative`` and
    the events shown/heard.

    Example:
        >>> frames, audio, meta = av_sample(3, seed=0, config=AVClassConfig(frames=2, size=16))
        >>> names = AVClassConfig().class_names
        >>> frames.shape, audio.shape, meta["label_name"] == names[meta["label"]]
        ((2, 16, 16, 3), (4000,), True)
    """
    c = config
    rng = np.random.default_rng([int(seed), _AV_STREAM, int(index)])
    label = int(rng.integers(c.num_classes))
    motion = MOTIONS[label]
    audio_on = bool(rng.uniform() < c.audio_informative)
    video_on = bool(rng.uniform() < c.video_informative)
    scene = sample_scene(rng, n_distractors=(2, 3))
    seen = sample_event(rng, c.duration, motion=motion)
    if not video_on:  # the same kind of object, standing still: no information on the class
        p = dict(seen.params)
        seen = Event(seen.shape, seen.colour, "spinning", c.duration,
                     tuple(sorted({**p, "turns": 0.0}.items())))
    frames = render_clip(seen, scene, c.frames, c.fps, c.size, contrast=c.video_contrast)
    heard = sample_event(rng, c.duration, shape=SHAPES[label % len(SHAPES)], motion=motion)
    source = (event_sound(heard, c.sample_rate, c.n_samples, rng) if audio_on
              else np.zeros(c.n_samples, np.float32))
    level = c.noise_level * float(rng.uniform(0.7, 1.3)) * (1.0 if audio_on else 2.0)
    audio = clip_audio(source, rng, level)
    meta = {
        "label": label,
        "label_name": motion,
        "audio_informative": audio_on,
        "video_informative": video_on,
        "video_event": {**seen.to_dict(), "motion": motion if video_on else "still"},
        "audio_event": heard.to_dict() if audio_on else None,
    }
    return frames, audio, meta


def av_classification_arrays(
    n: int,
    seed: int = 0,
    *,
    num_classes: int = 6,
    frames: int = 16,
    fps: float = 8.0,
    size: int = 64,
    sample_rate: int = 16000,
    audio_informative: float = 0.85,
    video_informative: float = 0.6,
    video_contrast: float = 0.6,
    noise_level: float = 0.05,
    start: int = 0,
    progress: bool | None = None,
) -> dict:
    """Generate samples ``start .. start+n-1`` of the audio-visual classification set in memory.

    The same content generator as the ``av`` split on disk, without mp4/AAC encoding (so there
    are no compression artefacts here). Audio dominates: see the module docstring for what
    each modality carries and the accuracy a perfect classifier of each can reach.

    Args:
        n: number of samples.
        seed: the set's seed; sample ``i`` depends only on ``(seed, i)`` and the settings.
        num_classes: K (2..8); class ``k`` is the motion ``MOTIONS[k]``.
        frames, fps, size, sample_rate: clip sizes (defaults: the demo's 16 x 64 x 64 at 8 fps,
            2 s of 16 kHz audio).
        audio_informative: probability that the audio carries the class.
        video_informative: probability that the video carries the class.
        video_contrast: opacity of the moving object (lower = harder to see).
        noise_level: RMS of the background noise.
        start: index of the first sample (e.g. a test set after ``n_train`` training samples).
        progress: show a progress bar (default: when ``n >= 500``).

    Returns:
        ``{"video": uint8 [n, T, H, W, 3], "audio": float32 [n, S], "label": int64 [n],
        "class_names": [K names], "audio_informative": bool [n], "video_informative": bool [n],
        "fps": float, "sample_rate": int, "seed": int, "config": dict}``.
    """
    if n < 0:
        raise ValueError(f"n: expected a non-negative number of samples, got {n}")
    if start < 0:
        raise ValueError(f"start: expected >= 0, got {start}")
    config = AVClassConfig(num_classes, frames, fps, size, sample_rate, audio_informative,
                           video_informative, video_contrast, noise_level)
    video = np.empty((n, frames, size, size, 3), np.uint8)
    audio = np.empty((n, config.n_samples), np.float32)
    label = np.empty(n, np.int64)
    a_info = np.empty(n, bool)
    v_info = np.empty(n, bool)
    show = n >= 500 if progress is None else progress
    for j in tqdm(range(n), desc="av samples", disable=not show, leave=False):
        video[j], audio[j], meta = av_sample(start + j, seed, config)
        label[j] = meta["label"]
        a_info[j], v_info[j] = meta["audio_informative"], meta["video_informative"]
    return {
        "video": video,
        "audio": audio,
        "label": label,
        "class_names": config.class_names,
        "audio_informative": a_info,
        "video_informative": v_info,
        "fps": float(fps),
        "sample_rate": int(sample_rate),
        "seed": int(seed),
        "config": asdict(config),
    }
