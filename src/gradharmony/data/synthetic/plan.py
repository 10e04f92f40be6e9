"""The metadata of a split, drawn without rendering anything: videos, their events and scenes,
the narrations, and the ground-truth misalignment of every clip.

Planning is cheap (thousands of clips per second), deterministic for a seed, and holds
everything the renderer needs, so the noise statistics of a large split can be checked without
encoding a single frame, and the clips can then be rendered in any order or process.

Misalignment (``NoiseConfig``): of ``n`` clips, exactly ``round(text_noise * n)`` get a
misaligned narration, of which ``round(shift_fraction * that)`` are *shifts* (a fresh
description of another segment of the same video, which always shows a different motion) and
the rest *off-topic*. Each clip records its kind in ``text_noise``: ``aligned``,
``same_object_shift`` (the described segment shows the clip's own object, shape and colour),
``other_object_shift`` (it shows the video's other object) or ``off_topic``.

- ``other_object_share=None`` (the clean/howto/wild presets): a shift describes the previous or
  next segment, whatever it shows; most videos show one object, so most shifts are
  same-object shifts that only a model that knows the motions can notice.
- ``other_object_share=s``: exactly ``round(s * shifts)`` shifts describe the nearest segment
  showing the video's other object, the rest the nearest segment showing the same object in
  another motion; such clips are drawn among the clips that have such a segment (other-object
  shifts exist only in two-object videos, about 40 % of the videos).

Independently, exactly ``round(audio_noise * n)`` clips get their audio replaced,
``round(music_fraction * that)`` by music (``audio_noise = "music"``) and the rest by the
sound of an unrelated event of another shape and motion (``"unrelated_audio"``). Which clips is
a seeded random draw. :func:`noise_config` also takes the rate of each kind (a fraction of all
clips) and converts it to these fields.

MIL-NCE candidates (``neighbors``, written to each clip's ``neighbors``): ``same-video`` (the
other clips' given narrations of the same video, nearest first, as in HowTo100M; for a noisy
clip they often name its own object), ``random`` (:data:`RANDOM_NEIGHBORS` given narrations
of clips of other videos that do not describe the clip's own object, so a bag never leaks the
true object) or ``none`` (no candidates: MIL-NCE reduces to NCE on the clip's own narration).

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

from gradharmony.data.clip import ClipSpec

from .events import COLOURS, MOTIONS, SHAPE_TIMBRE, SHAPES, Event, sample_event
from .narration import MAX_WORDS, describe, off_topic
from .render import sample_scene

__all__ = [
    "AUDIO_KINDS",
    "KIND_RATES",
    "NEIGHBORS",
    "PRESETS",
    "RANDOM_NEIGHBORS",
    "SPLIT_STREAMS",
    "TEXT_KINDS",
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
    """Sizes of the rendered clips: ``frames`` frames of ``size`` x ``size`` at ``fps``; audio
    at ``audio_rate`` for the same ``clip_seconds = frames / fps`` (the quantities carry the
    names of :class:`~gradharmony.data.clip.ClipSpec`; :meth:`read_spec` reads a clip back).

    Example:
        >>> ClipSize(frames=4, fps=8.0, size=16, audio_rate=8000).read_spec().audio_samples
        4000
    """

    frames: int = 16
    fps: float = 8.0
    size: int = 64
    audio_rate: int = 16000

    def __post_init__(self) -> None:
        if self.frames < 1:
            raise ValueError(f"frames: expected >= 1, got {self.frames}")
        if self.fps <= 0:
            raise ValueError(f"fps: expected > 0, got {self.fps}")
        if self.size < 8 or self.size % 2:
            raise ValueError(f"size: expected an even number of pixels >= 8, got {self.size}")
        if self.audio_rate < 1000:
            raise ValueError(f"audio_rate: expected >= 1000 Hz, got {self.audio_rate}")

    @property
    def clip_seconds(self) -> float:
        return self.frames / self.fps

    @property
    def audio_samples(self) -> int:
        return int(round(self.clip_seconds * self.audio_rate))

    def read_spec(self) -> ClipSpec:
        """The :class:`~gradharmony.data.clip.ClipSpec` that decodes these clips whole: every
        frame, uncropped, all of the audio."""
        return ClipSpec(frames=self.frames, fps=self.fps, size=self.size, crop=self.size,
                        audio_rate=self.audio_rate, clip_seconds=self.clip_seconds)


TEXT_KINDS: tuple[str, ...] = ("aligned", "same_object_shift", "other_object_shift", "off_topic")
AUDIO_KINDS: tuple[str, ...] = ("aligned", "unrelated_audio", "music")
NEIGHBORS: tuple[str, ...] = ("same-video", "random", "none")
RANDOM_NEIGHBORS = 7  # candidates per clip under neighbors="random" (k - 1 <= 7 are used)
# per-kind rates (fractions of all clips) accepted by noise_config
KIND_RATES: tuple[str, ...] = ("same_object_shift", "other_object_shift", "off_topic",
                               "unrelated_audio", "music")


@dataclass(frozen=True)
class NoiseConfig:
    """Ground-truth misalignment rates and candidate bags (see the module docstring).

    Args:
        text_noise: fraction of clips whose narration is misaligned.
        audio_noise: fraction of clips whose audio is replaced.
        shift_fraction: of the misaligned narrations, the share shifted to another segment of
            the same video (the rest are off-topic).
        music_fraction: of the replaced audio tracks, the share replaced by music (the rest
            by an unrelated event's sound).
        other_object_share: of the shifts, the share that describes the video's other object
            (the rest: its own object in another motion); ``None``: shift to the adjacent
            segment, whatever it shows.
        neighbors: the MIL-NCE candidates written to ``neighbors``: one of :data:`NEIGHBORS`.

    Example:
        >>> NoiseConfig(0.5, 0.3, 0.5, 1 / 3, 0.6).kind_rates()["other_object_shift"]
        0.15
    """

    text_noise: float = 0.0
    audio_noise: float = 0.0
    shift_fraction: float = 0.6
    music_fraction: float = 0.5
    other_object_share: float | None = None
    neighbors: str = "same-video"

    def __post_init__(self) -> None:
        for name in ("text_noise", "audio_noise", "shift_fraction", "music_fraction",
                     "other_object_share"):
            value = getattr(self, name)
            if value is None and name == "other_object_share":
                continue
            if (isinstance(value, bool) or not isinstance(value, (int, float))
                    or not 0.0 <= float(value) <= 1.0):
                raise ValueError(f"{name}: expected a rate in [0, 1], got {value!r}")
        if self.neighbors not in NEIGHBORS:
            raise ValueError(f"neighbors: expected one of {', '.join(NEIGHBORS)}, "
                             f"got {self.neighbors!r}")

    def kind_rates(self) -> dict[str, float]:
        """The requested rate of every misalignment kind, as a fraction of all clips; with
        ``other_object_share=None`` the shifts are one entry, ``adjacent_shift``.

        Example:
            >>> sorted(NoiseConfig(0.5, 0.1, 0.7, 0.5).kind_rates())
            ['adjacent_shift', 'music', 'off_topic', 'unrelated_audio']
        """
        shifts = self.text_noise * self.shift_fraction
        out = {"off_topic": _r(self.text_noise - shifts)}
        if self.other_object_share is None:
            out["adjacent_shift"] = _r(shifts)
        else:
            out["same_object_shift"] = _r(shifts * (1 - self.other_object_share))
            out["other_object_shift"] = _r(shifts * self.other_object_share)
        out["music"] = _r(self.audio_noise * self.music_fraction)
        out["unrelated_audio"] = _r(self.audio_noise - out["music"])
        return out


def _r(x: float) -> float:
    return round(float(x), 12)


PRESETS: dict[str, NoiseConfig] = {
    "clean": NoiseConfig(0.0, 0.0),
    # HowTo100M: about half the narrations do not match the clip, mostly said before or after
    "howto": NoiseConfig(text_noise=0.5, audio_noise=0.1, shift_fraction=0.7, music_fraction=0.5),
    # YT8M-like: more off-topic talk and many clips with music or unrelated sound
    "wild": NoiseConfig(text_noise=0.7, audio_noise=0.4, shift_fraction=0.4, music_fraction=0.6),
    # noise the model can perceive at a CPU budget: 25 % off-topic, 15 % other-object and 10 %
    # same-object shifts, 20 % unrelated sound, 10 % music; bags that never name the own object
    "study": NoiseConfig(text_noise=0.5, audio_noise=0.3, shift_fraction=0.5,
                         music_fraction=1 / 3, other_object_share=0.6, neighbors="random"),
}


def noise_config(preset: str | None = "clean", **overrides) -> NoiseConfig:
    """A preset's settings with some of them overridden (``None`` values are ignored).

    Overrides are :class:`NoiseConfig` fields or per-kind rates (:data:`KIND_RATES`, fractions
    of all clips). A per-kind rate replaces that kind's rate and keeps the others; giving a
    shift kind on a preset with adjacent shifts (``other_object_share=None``) switches to exact
    shift kinds, the other shift kind 0 unless given. Per-kind text rates cannot be mixed with
    ``text_noise``/``shift_fraction``/``other_object_share``, nor audio ones with
    ``audio_noise``/``music_fraction``.

    Example:
        >>> noise_config("howto", audio_noise=0.3)  # doctest: +NORMALIZE_WHITESPACE
        NoiseConfig(text_noise=0.5, audio_noise=0.3, shift_fraction=0.7, music_fraction=0.5,
                    other_object_share=None, neighbors='same-video')
        >>> c = noise_config("clean", off_topic=0.2, other_object_shift=0.1, music=0.05)
        >>> c.text_noise, round(c.shift_fraction, 4), c.other_object_share, c.audio_noise
        (0.3, 0.3333, 1.0, 0.05)
    """
    if preset is None:
        preset = "clean"
    if preset not in PRESETS:
        raise ValueError(f"preset: expected one of {sorted(PRESETS)}, got {preset!r}")
    fields = set(NoiseConfig.__dataclass_fields__)
    unknown = set(overrides) - fields - set(KIND_RATES)
    if unknown:
        raise ValueError(
            f"noise_config: unknown rate(s) {sorted(unknown)}; known: "
            f"{sorted(fields | set(KIND_RATES))}")
    given = {k: v for k, v in overrides.items() if v is not None}
    for kind in KIND_RATES:
        if kind in given:
            value = given[kind]
            if (isinstance(value, bool) or not isinstance(value, (int, float))
                    or not 0.0 <= float(value) <= 1.0):
                raise ValueError(f"{kind}: expected a rate in [0, 1], got {value!r}")
    for kinds, legacy in ((("same_object_shift", "other_object_shift", "off_topic"),
                           ("text_noise", "shift_fraction", "other_object_share")),
                          (("unrelated_audio", "music"), ("audio_noise", "music_fraction"))):
        mixed = [k for k in kinds if k in given], [k for k in legacy if k in given]
        if mixed[0] and mixed[1]:
            raise ValueError(f"noise_config: per-kind rate(s) {mixed[0]} cannot be combined with "
                             f"{mixed[1]}; give either the kinds or the fractions")
    values = asdict(PRESETS[preset])
    values.update({k: (v if k == "neighbors" or v is None else float(v))
                   for k, v in given.items() if k in fields})
    base = NoiseConfig(**values)
    rates = base.kind_rates()
    if any(k in given for k in ("same_object_shift", "other_object_shift", "off_topic")):
        if "adjacent_shift" in rates and ("same_object_shift" in given
                                           or "other_object_shift" in given):
            rates.pop("adjacent_shift")
            rates["same_object_shift"] = rates["other_object_shift"] = 0.0
        rates.update({k: float(given[k]) for k in ("same_object_shift", "other_object_shift",
                                                  "off_topic") if k in given})
        if "adjacent_shift" in rates:
            shifts, share = rates["adjacent_shift"], None
        else:
            shifts = rates["same_object_shift"] + rates["other_object_shift"]
            share = rates["other_object_shift"] / shifts if shifts > 0 else 0.0
        text = shifts + rates["off_topic"]
        if text > 1.0 + 1e-9:
            raise ValueError(f"noise_config: the text kinds add up to {text:g} > 1 "
                             f"(with the preset's: {rates})")
        values.update(text_noise=_r(min(text, 1.0)),
                      shift_fraction=_r(shifts / text) if text > 0 else base.shift_fraction,
                      other_object_share=None if share is None else _r(share))
    if any(k in given for k in ("unrelated_audio", "music")):
        rates.update({k: float(given[k]) for k in ("unrelated_audio", "music") if k in given})
        audio = rates["unrelated_audio"] + rates["music"]
        if audio > 1.0 + 1e-9:
            raise ValueError(f"noise_config: the audio kinds add up to {audio:g} > 1 "
                             f"(with the preset's: {rates})")
        values.update(audio_noise=_r(min(audio, 1.0)),
                      music_fraction=_r(rates["music"] / audio) if audio > 0
                      else base.music_fraction)
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


def _object(event: Event) -> tuple[str, str]:
    return event.shape, event.colour


def _nearest(events: list[Event], j: int, same_object: bool) -> list[int]:
    """The nearest other segments of the video (both if equally near) showing the same object
    in another motion (``same_object``) or another object."""
    own = events[j]
    ok = [o for o in range(len(events)) if o != j and (
        (_object(events[o]) == _object(own) and events[o].motion != own.motion)
        if same_object else _object(events[o]) != _object(own))]
    if not ok:
        return []
    d = min(abs(o - j) for o in ok)
    return [o for o in ok if abs(o - j) == d]


def _kind_assignment(rng, noise: NoiseConfig, videos) -> np.ndarray:
    """Exact counts of every text kind (``other_object_share`` set), each shift drawn among
    the clips that have a segment to shift to; raises when too few do."""
    events = [ev for v, _ in videos for ev in v]
    n = len(events)
    can_other = np.zeros(n, bool)
    can_same = np.zeros(n, bool)
    i = 0
    for v, _ in videos:
        for j in range(len(v)):
            can_other[i], can_same[i] = bool(_nearest(v, j, False)), bool(_nearest(v, j, True))
            i += 1
    m = int(round(noise.text_noise * n))
    shifts = int(round(noise.shift_fraction * m))
    want = {"other_object_shift": int(round(noise.other_object_share * shifts))}
    want["same_object_shift"] = shifts - want["other_object_shift"]
    out = np.full(n, "aligned", dtype=object)
    perm = rng.permutation(n)
    for kind, can in (("other_object_shift", can_other), ("same_object_shift", can_same)):
        pool = [int(c) for c in perm if can[c] and out[c] == "aligned"]
        if len(pool) < want[kind]:
            where = ("a segment of another object (two-object videos)"
                     if kind == "other_object_shift" else
                     "another segment of the same object in another motion")
            raise ValueError(
                f"{kind}: {want[kind]} of {n} clips requested, but only {len(pool)} free clips "
                f"have {where}; lower the rate (at most {len(pool) / max(n, 1):.3f})")
        out[pool[:want[kind]]] = kind
    free = [int(c) for c in perm if out[c] == "aligned"]
    out[free[:m - shifts]] = "off_topic"
    return out


def _described_object(clips: list[dict], first: int, c: dict) -> tuple[str, str] | None:
    if c["text_noise"] == "off_topic":
        return None
    src = clips[first + c["text_source_clip"]]["event"]
    return src["shape"], src["colour"]


def _random_neighbors(clips: list[dict], described: list, rng) -> None:
    """``RANDOM_NEIGHBORS`` given narrations of clips of other videos that do not describe the
    clip's own object (shape and colour), in draw order."""
    ids = {obj: t for t, obj in enumerate(sorted({o for o in described if o is not None}))}
    desc = np.array([-1 if o is None else ids[o] for o in described])
    video = np.array([c["video_id"] for c in clips])
    for c in clips:
        own = ids.get((c["event"]["shape"], c["event"]["colour"]), -2)
        ok = np.flatnonzero((video != c["video_id"]) & (desc != own))
        pick = [int(ok[t]) for t in rng.permutation(len(ok))[:RANDOM_NEIGHBORS]]
        c["neighbors"] = [clips[o]["txt"] for o in pick]
        c["neighbor_keys"] = [clips[o]["__key__"] for o in pick]


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
    ``neighbors`` (as ``noise.neighbors`` says), ``neighbor_keys`` (their clips' keys), ``label``,
    ``text_aligned``, ``audio_aligned``, ``text_noise`` (a :data:`TEXT_KINDS` kind),
    ``audio_noise`` (an :data:`AUDIO_KINDS` kind), ``text_source_clip`` (the clip index the
    narration describes; ``None`` off-topic), ``event``, ...) plus ``__key__``, ``txt`` (the
    narration given to the model) and ``render`` (scene, sound source and seed for the
    renderer).

    Args:
        split: split name (used in keys and ``video_id``).
        n_clips: number of clips.
        seed: the dataset seed.
        noise: misalignment rates and neighbour mode (eval splits use the default: clean,
            same-video neighbours).
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
    duration = size.clip_seconds
    videos = _plan_videos(rng, n_clips, lo, hi, duration)

    # misalignment, assigned with exact counts
    if noise.other_object_share is None:
        text_kind = _exact_assignment(rng, n_clips, noise.text_noise, noise.shift_fraction,
                                      ("aligned", "shifted", "off_topic"))
    else:
        text_kind = _kind_assignment(rng, noise, videos)
    audio_kind = _exact_assignment(rng, n_clips, noise.audio_noise, noise.music_fraction,
                                   ("aligned", "music", "unrelated_audio"))

    clips: list[dict] = []
    firsts: list[int] = []
    for v, (events, scene) in enumerate(videos):
        first = len(clips)
        for j, event in enumerate(events):
            narration = _narration(rng, events, j, str(text_kind[len(clips)]), max_words)
            akind = str(audio_kind[len(clips)])
            audio_event = None
            if akind == "unrelated_audio":
                audio_event = _unrelated_event(rng, event, duration).to_dict()
            clips.append(_clip_record(rng, split, f"{split}_v{v:05d}", events, j, duration,
                                      narration, akind, audio_event, scene))
            firsts.append(first)
    _add_neighbors(clips, firsts, noise, seed, stream)
    return clips


def _plan_videos(rng, n_clips: int, lo: int, hi: int, duration: float
                 ) -> list[tuple[list[Event], dict]]:
    """Videos of ``lo..hi`` events each, with their scenes, until ``n_clips`` clips exist."""
    videos: list[tuple[list[Event], dict]] = []
    remaining = n_clips
    while remaining > 0:
        n_seg = min(int(rng.integers(lo, hi + 1)), remaining)
        if remaining - n_seg == 1:
            n_seg += 1
        videos.append((_video_events(rng, n_seg, duration), sample_scene(rng)))
        remaining -= n_seg
    return videos


def _narration(rng, events: list[Event], j: int, kind: str, max_words: int
               ) -> tuple[str, str, int | None, str]:
    """``(text, kind, source, true_text)`` of clip ``j``: the narration given for the assigned
    text-noise kind, the kind it turned out to be, the clip it describes (None: off topic)
    and the clip's own description."""
    event, n_seg = events[j], len(events)
    true_text = describe(event, rng, max_words)
    source: int | None = j
    if kind == "shifted" and n_seg < 2:
        kind = "off_topic"  # a one-clip video has no neighbour to shift to
    if kind == "aligned":
        text = true_text
    elif kind == "off_topic":
        source = None
        text = off_topic(rng, max_words)
    else:
        if kind == "shifted":  # the adjacent segment, whatever it shows
            options = [o for o in (j - 1, j + 1) if 0 <= o < n_seg]
        else:
            options = _nearest(events, j, kind == "same_object_shift")
        source = options[int(rng.integers(len(options)))]
        text = describe(events[source], rng, max_words)
        kind = ("same_object_shift" if _object(events[source]) == _object(event)
                else "other_object_shift")
    return text, kind, source, true_text


def _clip_record(rng, split: str, vid: str, events: list[Event], j: int, duration: float,
                 narration: tuple, akind: str, audio_event: dict | None, scene: dict) -> dict:
    """The metadata of clip ``j`` of a video; draws its render seed and levels from ``rng``."""
    text, kind, source, true_text = narration
    event = events[j]
    return {
        "__key__": f"{vid}_c{j:02d}",
        "txt": text,
        "split": split,
        "video_id": vid,
        "clip_index": j,
        "num_clips": len(events),
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
    }


def _add_neighbors(clips: list[dict], firsts: list[int], noise: NoiseConfig, seed: int,
                   stream: int) -> None:
    """The MIL-NCE candidates; drawn after (and apart from) everything else, so the clips,
    their narrations and their noise do not depend on the neighbour mode."""
    if noise.neighbors == "same-video":
        # the other clips' given narrations, nearest in time first (earlier on ties)
        for c, first in zip(clips, firsts):
            j, n_seg = c["clip_index"], c["num_clips"]
            order = sorted((o for o in range(n_seg) if o != j), key=lambda o: (abs(o - j), o))
            c["neighbors"] = [clips[first + o]["txt"] for o in order]
            c["neighbor_clip_indices"] = order
            c["neighbor_keys"] = [clips[first + o]["__key__"] for o in order]
    elif noise.neighbors == "random":
        described = [_described_object(clips, f, c) for c, f in zip(clips, firsts)]
        _random_neighbors(clips, described, np.random.default_rng([int(seed), int(stream), 7]))
    else:
        for c in clips:
            c["neighbors"], c["neighbor_keys"] = [], []
