"""Reading evaluation clips from shards: decoding, several temporal windows, narrations.

Evaluation reads shards sequentially in a fixed order (no shuffling, no augmentation), so
every number is reproducible. A clip is decoded over its whole duration (at least one model
clip), then cut into ``windows`` clips of the model's length whose starts are evenly spaced
from the beginning to the end of the video (one window: the centred one). Samples that do
not decode are skipped and counted by reason (``skipped`` in the protocol).
"""

from __future__ import annotations

import glob
import io
import json
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import numpy as np

from gradharmony.data.clip import ClipSpec
from gradharmony.data.decode import SampleError, decode_clip_raw


def shard_files(path: str | os.PathLike) -> list[str]:
    """The ``.tar`` shards of a directory (recursively), a glob, or a single file, sorted.

    Example:
        >>> shard_files("/nonexistent/dir")
        Traceback (most recent call last):
        ...
        ValueError: no .tar shards found at '/nonexistent/dir'
    """
    p = str(path)
    if os.path.isdir(p):
        files = glob.glob(os.path.join(p, "**", "*.tar"), recursive=True)
    elif os.path.isfile(p):
        files = [p]
    else:
        files = glob.glob(p)
    files = sorted(f for f in files if f.endswith(".tar"))
    if not files:
        raise ValueError(f"no .tar shards found at {p!r}")
    return files


def iter_samples(files: list[str]) -> Iterator[dict[str, bytes | str]]:
    """Raw samples ``{"__key__": key, "mp4": bytes, "txt": bytes, "json": bytes, ...}`` of
    the shards in order (members grouped by the key before the first dot of the file name).

    Example:
        >>> import tempfile
        >>> from gradharmony.data.writer import write_shards
        >>> d = tempfile.mkdtemp()
        >>> paths = write_shards([{"__key__": "k0", "txt": "hi"}], d, prefix="s")
        >>> list(iter_samples(paths))
        [{'__key__': 'k0', 'txt': b'hi'}]
    """
    for f in files:
        current: dict = {}
        with tarfile.open(f, "r") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                base = os.path.basename(member.name)
                if "." not in base:
                    continue
                key, ext = base.split(".", 1)
                key = os.path.join(os.path.dirname(member.name), key)
                if current and current["__key__"] != key:
                    yield current
                    current = {}
                current["__key__"] = key
                current[ext] = tar.extractfile(member).read()
        if current:
            yield current


def window_starts(n_total: int, n_window: int, windows: int) -> list[int]:
    """Evenly spaced start indices of ``windows`` windows of ``n_window`` inside ``n_total``.

    Example:
        >>> window_starts(10, 4, 3), window_starts(10, 4, 1), window_starts(4, 4, 2)
        ([0, 3, 6], [3], [0, 0])
    """
    if windows < 1:
        raise ValueError(f"windows must be >= 1, got {windows}")
    slack = max(0, n_total - n_window)
    if windows == 1:
        return [slack // 2]
    return [int(round(slack * w / (windows - 1))) for w in range(windows)]


def _duration(data: bytes) -> float | None:
    import av

    try:
        with av.open(io.BytesIO(data)) as c:
            if not c.streams.video:
                return None
            s = c.streams.video[0]
            if s.duration is not None and s.time_base is not None:
                return float(s.duration * s.time_base)
            return c.duration / 1e6 if c.duration else None
    except Exception:  # noqa: BLE001 - the decoder reports the real reason later
        return None


@dataclass
class ClipSet:
    """Decoded clips of one split: ``video`` uint8 ``[N, W, T, crop, crop, 3]``,
    ``audio`` float32 ``[N, W, S]``, narrations, labels (-1 unknown), keys, metadata."""

    video: np.ndarray
    audio: np.ndarray
    has_audio: np.ndarray
    texts: list[str]
    neighbors: list[list[str]]
    labels: np.ndarray
    keys: list[str]
    meta: list[dict]
    skipped: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.keys)


def _concat(parts: list[ClipSet], skipped: dict[str, int]) -> ClipSet:
    return ClipSet(np.concatenate([p.video for p in parts]),
                   np.concatenate([p.audio for p in parts]),
                   np.concatenate([p.has_audio for p in parts]),
                   [t for p in parts for t in p.texts], [n for p in parts for n in p.neighbors],
                   np.concatenate([p.labels for p in parts]), [k for p in parts for k in p.keys],
                   [m for p in parts for m in p.meta], dict(skipped))


def _decode_sample(sample: dict, spec: ClipSpec, windows: int,
                   skipped: dict[str, int]) -> tuple | None:
    """``(windows video, windows audio, has_audio, text, neighbors, label, key, meta)`` of a
    raw sample, or None (counted in ``skipped``) when it does not decode."""
    if "mp4" not in sample:
        skipped["missing_mp4"] = skipped.get("missing_mp4", 0) + 1
        return None
    meta = json.loads(sample["json"]) if "json" in sample else {}
    dur = _duration(sample["mp4"]) or spec.clip_seconds
    total_s = max(spec.clip_seconds, dur)
    n_frames = max(spec.frames, int(np.floor(total_s * spec.fps + 1e-9)))
    full = replace(spec, frames=n_frames,
                   clip_seconds=max(total_s, (n_frames - 1) / spec.fps))
    try:
        frames, audio, has_audio = decode_clip_raw(sample["mp4"], full, train=False)
    except SampleError as err:
        skipped[err.reason] = skipped.get(err.reason, 0) + 1
        return None
    c = spec.crop
    top, left = (frames.shape[1] - c) // 2, (frames.shape[2] - c) // 2
    frames = frames[:, top:top + c, left:left + c]
    fs = window_starts(frames.shape[0], spec.frames, windows)
    video = np.stack([frames[s:s + spec.frames] for s in fs])
    n_s = spec.audio_samples
    audio = np.pad(audio, (0, max(0, n_s - audio.shape[0])))
    a_starts = [min(int(round(s / spec.fps * spec.audio_rate)), audio.shape[0] - n_s)
                for s in fs]
    audio = np.stack([audio[a:a + n_s] for a in a_starts]).astype(np.float32)
    text = sample["txt"].decode("utf-8").strip() if "txt" in sample else ""
    text = text or str(meta.get("text", meta.get("caption", "")))
    neighbors = [n for n in meta.get("neighbors", []) if isinstance(n, str)]
    lab = meta.get("label", -1)
    return (video, audio, bool(has_audio), text, neighbors,
            int(lab) if lab is not None else -1, str(sample["__key__"]), meta)


def _clipset(decoded: list[tuple], skipped: dict[str, int]) -> ClipSet:
    cols = list(zip(*decoded))
    return ClipSet(np.stack(cols[0]), np.stack(cols[1]), np.array(cols[2]), list(cols[3]),
                   list(cols[4]), np.array(cols[5], dtype=np.int64), list(cols[6]),
                   list(cols[7]), skipped)


def iter_clipsets(path, spec: ClipSpec, windows: int = 1, chunk: int = 64,
                  limit: int | None = None, progress: bool = True,
                  skipped: dict[str, int] | None = None) -> Iterator[ClipSet]:
    """Decode the shards at ``path`` in chunks of ``chunk`` clips (memory stays bounded).

    Undecodable samples are counted by reason into ``skipped`` (a dict the caller may pass).
    Raises ``ValueError`` when the split yields no clip at all.

    Example:
        >>> next(iter_clipsets("/nonexistent", ClipSpec()))
        Traceback (most recent call last):
        ...
        ValueError: no .tar shards found at '/nonexistent'
    """
    from tqdm.auto import tqdm

    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    skipped = {} if skipped is None else skipped
    files = shard_files(path)
    done: list[tuple] = []
    total = 0
    bar = tqdm(iter_samples(files), desc=f"decode {os.path.basename(str(path).rstrip('/'))}",
               disable=not progress, leave=False)
    for sample in bar:
        if limit is not None and total >= limit:
            break
        d = _decode_sample(sample, spec, windows, skipped)
        if d is None:
            continue
        done.append(d)
        total += 1
        if len(done) == chunk:
            yield _clipset(done, skipped)
            done = []
    if done:
        yield _clipset(done, skipped)
    if total == 0:
        raise ValueError(f"the split at {str(path)!r} is empty: no clip decoded "
                         f"(skipped: {skipped or 'none'})")


class RawClips:
    """The undecoded samples of a data set in shard order, decoded on demand in any order
    (so that batches can be composed across the whole set with bounded memory).

    ``keys``, ``meta`` (parsed ``KEY.json``) and ``shards`` (shard index of each sample) are
    available without decoding. Samples without a video are dropped and counted in
    ``skipped``; samples that fail to decode are counted when :meth:`decode` meets them.

    Example:
        >>> import tempfile
        >>> from gradharmony.data.writer import write_shards
        >>> d = tempfile.mkdtemp()
        >>> _ = write_shards([{"__key__": "k0", "txt": "no video"}], d, prefix="s")
        >>> RawClips(d).skipped
        {'missing_mp4': 1}
    """

    def __init__(self, path, limit: int | None = None):
        files = shard_files(path)
        self.path = str(path)
        self.skipped: dict[str, int] = {}
        self.samples: list[dict] = []
        self.shards: list[int] = []
        for s, f in enumerate(files):
            for sample in iter_samples([f]):
                if limit is not None and len(self.samples) >= limit:
                    break
                if "mp4" not in sample:
                    self.skipped["missing_mp4"] = self.skipped.get("missing_mp4", 0) + 1
                    continue
                self.samples.append(sample)
                self.shards.append(s)
        self.keys = [str(x["__key__"]) for x in self.samples]
        self.meta = [json.loads(x["json"]) if "json" in x else {} for x in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def decode(self, idx, spec: ClipSpec, windows: int = 1) -> tuple[ClipSet | None, list[int]]:
        """``(clips, kept)``: the samples ``idx`` that decode (in that order; ``kept`` are
        their indices) as a :class:`ClipSet`, or ``(None, [])`` when none decodes."""
        done, kept = [], []
        for i in idx:
            d = _decode_sample(self.samples[int(i)], spec, windows, self.skipped)
            if d is not None:
                done.append(d)
                kept.append(int(i))
        return (_clipset(done, self.skipped) if done else None), kept


def load_clips(path, spec: ClipSpec, windows: int = 1, limit: int | None = None,
               progress: bool = True) -> ClipSet:
    """Decode every clip of the shards at ``path`` into ``windows`` model-sized windows
    (all in memory; see :func:`iter_clipsets` for bounded memory).

    Raises ``ValueError`` when the split yields no clip.

    Example:
        >>> import tempfile
        >>> from gradharmony.data.writer import write_shards
        >>> d = tempfile.mkdtemp()
        >>> _ = write_shards([{"__key__": "k0", "txt": "no video"}], d, prefix="s")
        >>> load_clips(d, ClipSpec(), progress=False)
        Traceback (most recent call last):
        ...
        ValueError: the split at '...' is empty: no clip decoded (skipped: {'missing_mp4': 1})
    """
    skipped: dict[str, int] = {}
    parts = list(iter_clipsets(path, spec, windows, 256, limit, progress, skipped))
    return _concat(parts, skipped)
