"""The metadata of a split, drawn without rendering anything: videos, their events and scenes,
the narrations, and the ground-truth misalignment of every clip.

Planning is cheap (thousands of clips per second), deterministic for a seed, and holds
everything the renderer needs, so the noise statistics of a large split can be checked without
encoding a single frame, and the clips can then be rendered in any order or process.

Misalignment (``NoiseConfig``): of ``n`` clips, exactly ``round(text_noise * n)`` get a
misaligned narration, of which ``round(shift_fraction * that)`` are *shifted* (a fresh
description of the previous or next segment of the same video, which always shows a different
motion) and the rest *off-topic*; independently, exactly ``round(audio_noise * n)`` get their
audio replaced, ``round(music_fraction * that)`` by music and the rest by the sound of an
*unrelated* event (different shape and motion). Which clips is a seeded random draw.

Example:
    >>> clips = plan_split("train", 200, seed=0, noise=noise_config("howto"))
    >>> sum(not c["text_aligned"] for c in clips)
    100
    >>> c = clips[0]
    >>> sorted(k for k in ("video_id", "clip_index", "start", "end", "neighbors") if k in c)
    ['clip_index', 'end', 'neighbors', 'start', 'video_id']
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .events import COLOURS, MOTIONS, SHAPE_TIMBRE, SHAPES, Event, sample_event
from .narration import MAX_WORDS, describe, off_topic
from .render import sample_scene

__all__ = [
    "PRESETS",
    "SPLIT_STREAMS",
    "ClipSize",
    "NoiseConfig",
    "event_phrase",
    "noise_config",
    "plan_split",
]

# seed streams: a split's clips depend on SeedSequence([seed, stream]) only
SPLIT_STREAMS: dict[str, int] = {"train": 1, "retrieval": 2, "probe_train": 3, "probe_test": 4}


@dataclass(frozen=True)
class ClipSize:
    """Clip sizes: ``frames`` frames of ``size`` x ``size`` at ``fps``; audio at ``sample_rate``
    for the same duration ``frames / fps``."""

    frames: int = 16
    fps: float = 8.0
    size: int = 64
    sample_rate: int = 16000

    def __post_init__(self) -> None:
        if self.frames < 1:
            raise ValueError(f"frames: expected >= 1, got {self.frames}")
        if self.fps <= 0:
            raise ValueError(f"fps: expected > 0, got {self.fps}")
        if self.size < 8 or self.size % 2:
            raise ValueError(f"size: expected an even number of pixels >= 8, got {self.size}")
        if self.sample_rate < 1000:
            raise ValueError(f"sample_rate: expected >= 1000 Hz, got {self.sample_rate}")

    @property
    def duration(self) -> float:
        return self.frames / self.fps

    @property
    def n_samples(self) -> int:
        return int(round(self.duration * self.sample_rate))


@dataclass(frozen=True)
class NoiseConfig:
    """Ground-truth misalignment rates (see the module docstring).

    Args:
        text_noise: fraction of clips whose narration is misaligned.
        audio_noise: fraction of clips whose audio is replaced.
        shift_fraction: of the misaligned narrations, the share shifted to a neighbour
            segment (the rest are off-topic).
        music_fraction: of the replaced audio tracks, the share replaced by music (the rest
            by an unrelated event's sound).
    """

    text_noise: float = 0.0
    audio_noise: float = 0.0
    shift_fraction: float = 0.6
    music_fraction: float = 0.5

    def __post_init__(self) -> None:
        for name in ("text_noise", "audio_noise", "shift_fraction", "music_fraction"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"{name}: expected a rate in [0, 1], got {value!r}")


PRESETS: dict[str, NoiseConfig] = {
    "clean": NoiseConfig(0.0, 0.0),
    # HowTo100M: about half the narrations do not match the clip, mostly said before or after
    "howto": NoiseConfig(text_noise=0.5, audio_noise=0.1, shift_fraction=0.7, music_fraction=0.5),
    # YT8M-like: more off-topic talk and many clips with music or unrelated sound
    "wild": NoiseConfig(text_noise=0.7, audio_noise=0.4, shift_fraction=0.4, music_fraction=0.6),
}


def noise_config(preset: str | None = "clean", **overrides: float | None) -> NoiseConfig:
    """A preset's rates with some of them overridden (``None`` values are ignored).

    Example:
        >>> noise_config("howto", audio_noise=0.3)
        NoiseConfig(text_noise=0.5, audio_noise=0.3, shift_fraction=0.7, music_fraction=0.5)
    """
    if preset is None:
        preset = "clean"
    if preset not in PRESETS:
        raise ValueError(f"preset: expected one of {sorted(PRESETS)}, got {preset!r}")
    fields = set(NoiseConfig.__dataclass_fields__)
    unknown = set(overrides) - fields
    if unknown:
        raise ValueError(
            f"noise_config: unknown rate(s) {sorted(unknown)}; known: {sorted(fields)}")
    values = asdict(PRESETS[preset])
    values.update({k: float(v) for k, v in overrides.items() if v is not None})
    return NoiseConfig(**values)


def event_phrase(event: Event) -> str:
    """The canonical description of an event, e.g. ``'red circle bouncing'``.

    Example:
        >>> event_phrase(Event("ring", "blue", "spinning", 2.0))
        'blue ring spinning'
    """
    return f"{event.colour} {event.shape} {event.motion}"


def _video_events(rng, n_seg, duration):
    """Events of one video: one or two objects, the motion changes at every segment."""
    objects = [(SHAPES[int(rng.integers(len(SHAPES)))], COLOURS[int(rng.integers(len(COLOURS)))])
               for _ in range(1 + int(rng.uniform() < 0.4))]
    events, prev = [], None
    for _ in range(n_seg):
        shape, colour = objects[int(rng.integers(len(objects)))]
        motion = MOTIONS[int(rng.integers(len(MOTIONS)))]
        while motion == prev:
            motion = MOTIONS[int(rng.integers(len(MOTIONS)))]
        prev = motion
        events.append(sample_event(rng, duration, shape=shape, colour=colour, motion=motion))
    return events


def _unrelated_event(rng, event, duration):
    """An event differing from ``event`` in shape and motion (so in timbre and rhythm)."""
    shape = event.shape
    while shape == event.shape:
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
    motion = event.motion
    while motion == event.motion:
        motion = MOTIONS[int(rng.integers(len(MOTIONS)))]
    return sample_event(rng, duration, shape=shape, motion=motion)


def _exact_assignment(rng, n, rate, share, kinds):
    """``kinds[0]`` for n - round(rate n) clips; of the others round(share * m) get kinds[1],
    the rest kinds[2]; positions drawn by a random permutation."""
    m = int(round(rate * n))
    k1 = int(round(share * m))
    out = np.full(n, kinds[0], dtype=object)
    perm = rng.permutation(n)
    out[perm[:k1]] = kinds[1]
    out[perm[k1:m]] = kinds[2]
    return out


def plan_split(
    split: str,
    n_clips: int,
    seed: int,
    noise: NoiseConfig = NoiseConfig(),
    size: ClipSize = ClipSize(),
    *,
    segments: tuple[int, int] = (4, 8),
    max_words: int = MAX_WORDS,
    stream: int | None = None,
) -> list[dict]:
    """Plan ``n_clips`` clips of ``split``: a list of JSON-ready metadata dicts, in key order.

    Videos of ``segments`` (min, max) clips are drawn until ``n_clips`` clips exist (the last
    video is cut to fit, keeping at least two clips per video where possible). Each dict has
    the fields written to ``KEY.json`` (``video_id``, ``clip_index``, ``start``, ``end``,
    ``neighbors``, ``label``, ``text_aligned``, ``audio_aligned``, ``text_noise``,
    ``audio_noise``, ``event``, ...) plus ``__key__``, ``txt`` (the narration given to the
    model) and ``render`` (scene, sound source and seed for the renderer).

    Args:
        split: split name (used in keys and ``video_id``).
        n_clips: number of clips.
        seed: the dataset seed.
        noise: misalignment rates (eval splits use the default, clean).
        size: clip sizes (for ``start``/``end`` and the events' duration).
        segments: (min, max) clips per video.
        max_words: narration length limit.
        stream: seed stream of the split (default: ``SPLIT_STREAMS[split]``, else a hash of it).
    """
    if not isinstance(n_clips, (int, np.integer)) or n_clips < 0:
        raise ValueError(f"n_clips: expected a non-negative integer, got {n_clips!r}")
    lo, hi = segments
    if not 2 <= lo <= hi:
        raise ValueError(f"segments: expected 2 <= min <= max, got {segments}")
    if stream is None:
        stream = SPLIT_STREAMS.get(split, sum(ord(ch) * 131**i for i, ch in enumerate(split)))
    rng = np.random.default_rng([int(seed), int(stream)])
    duration = size.duration

    # videos and events
    videos: list[tuple[list[Event], dict]] = []
    remaining = n_clips
    while remaining > 0:
        n_seg = min(int(rng.integers(lo, hi + 1)), remaining)
        if remaining - n_seg == 1:
            n_seg += 1
        videos.append((_video_events(rng, n_seg, duration), sample_scene(rng)))
        remaining -= n_seg

    # misalignment, assigned with exact counts
    text_kind = _exact_assignment(rng, n_clips, noise.text_noise, noise.shift_fraction,
                                  ("aligned", "shifted", "off_topic"))
    audio_kind = _exact_assignment(rng, n_clips, noise.audio_noise, noise.music_fraction,
                                   ("aligned", "music", "unrelated"))

    clips: list[dict] = []
    i = 0
    for v, (events, scene) in enumerate(videos):
        vid = f"{split}_v{v:05d}"
        n_seg = len(events)
        first = len(clips)
        for j, event in enumerate(events):
            true_text = describe(event, rng, max_words)
            kind = str(text_kind[i])
            source = j
            if kind == "shifted" and n_seg < 2:
                kind = "off_topic"  # a one-clip video has no neighbour to shift to
            if kind == "aligned":
                text = true_text
            elif kind == "shifted":
                options = [o for o in (j - 1, j + 1) if 0 <= o < n_seg]
                source = options[int(rng.integers(len(options)))]
                text = describe(events[source], rng, max_words)
            else:
                source = None
                text = off_topic(rng, max_words)
            akind = str(audio_kind[i])
            audio_event = None
            if akind == "unrelated":
                audio_event = _unrelated_event(rng, event, duration).to_dict()
            clips.append({
                "__key__": f"{vid}_c{j:02d}",
                "txt": text,
                "split": split,
                "video_id": vid,
                "clip_index": j,
                "num_clips": n_seg,
                "start": round(j * duration, 6),
                "end": round((j + 1) * duration, 6),
                "label": MOTIONS.index(event.motion),
                "label_name": event.motion,
                "labels": {"action": MOTIONS.index(event.motion),
                           "sound": SHAPES.index(event.shape)},
                "event": event.to_dict(),
                "description": event_phrase(event),
                "timbre": SHAPE_TIMBRE[event.shape],
                "aligned_text": true_text,
                "text_aligned": kind == "aligned",
                "text_noise": kind,
                "text_source_clip": source,
                "audio_aligned": akind == "aligned",
                "audio_noise": akind,
                "audio_event": audio_event,
                "render": {
                    "scene": scene,
                    "seed": int(rng.integers(2**31)),
                    "brightness": float(rng.uniform(0.85, 1.1)),
                    "noise_level": float(rng.uniform(0.02, 0.08)),
                },
            })
            i += 1
        # neighbours: the other clips' given narrations, nearest in time first (earlier on ties)
        for j in range(n_seg):
            order = sorted((o for o in range(n_seg) if o != j), key=lambda o: (abs(o - j), o))
            clips[first + j]["neighbors"] = [clips[first + o]["txt"] for o in order]
            clips[first + j]["neighbor_clip_indices"] = order
    return clips
