"""Where clips come from: shard sets, their tar members, and the counts of skipped samples.

A :class:`ShardSet` names shards (paths, patterns or URLs) with a mixture weight; a
:class:`TarSource` checks and parses the members of one sample (``KEY.mp4``, ``KEY.txt``,
``KEY.json``; docs/data.md, "Shard layout") and decodes its clip; a :class:`SkipCounter`
counts the samples skipped by reason (:data:`SKIP_REASONS`). The loader
(:mod:`gradharmony.data.dataset`) and the decoded-clip cache (:mod:`gradharmony.data.cache`)
both read through these.

Example:
    >>> import tarfile, tempfile
    >>> path = tempfile.mkdtemp() + "/s-0.tar"
    >>> tarfile.open(path, "w").close()
    >>> source = TarSource(ShardSet(path))
    >>> source.check({"mp4": b"", "json": b"{}"}), source.parse({"json": b"{}", "txt": b" hi "})
    ('missing_txt', ({}, 'hi'))
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from gradharmony.data.clip import ClipSpec
from gradharmony.data.decode import SampleError, decode_clip_raw
from gradharmony.data.streams import check_backend, is_url

#: Stable strings under which skipped samples are counted.
SKIP_REASONS = ("missing_video", "missing_txt", "missing_json", "bad_json", "empty_text",
                "corrupt_video", "too_short", "bad_audio", "truncated_tar", "unreadable_shard",
                "decode_error")
#: Counted with the skips but not a skipped clip: a remote shard stream re-opened after a
#: failure (its clips are delivered once). Not part of :attr:`SkipCounter.total`.
RETRY_REASON = "shard_retry"
VIDEO_EXTS = ("mp4", "webm", "mkv", "avi", "mov")


class SkipCounter:
    """Counts of skipped samples by reason (a reason is any string; see :data:`SKIP_REASONS`).

    Example:
        >>> c = SkipCounter({"bad_audio": 2})
        >>> c.update({"bad_audio": 1, "too_short": 1})
        >>> c["bad_audio"], c.total
        (3, 4)
    """

    def __init__(self, counts: Mapping[str, int] | None = None) -> None:
        self._counts: dict[str, int] = {}
        if counts:
            self.update(counts)

    def add(self, reason: str, n: int = 1) -> None:
        """Count ``n`` more samples skipped for ``reason``."""
        self._counts[reason] = self._counts.get(reason, 0) + int(n)

    def update(self, counts: Mapping[str, int]) -> None:
        """Add another counter (or dict) to this one."""
        for reason, n in dict(counts).items():
            self.add(reason, n)

    def __getitem__(self, reason: str) -> int:
        return self._counts.get(reason, 0)

    @property
    def total(self) -> int:
        """Number of skipped samples over all reasons (``shard_retry`` events excluded)."""
        return sum(n for r, n in self._counts.items() if r != RETRY_REASON)

    def as_dict(self) -> dict[str, int]:
        """Counts sorted by reason, zero counts omitted."""
        return {r: n for r, n in sorted(self._counts.items()) if n}

    def __repr__(self) -> str:
        return f"SkipCounter({self.as_dict()})"


@dataclass
class ShardSet:
    """A set of shards sampled with ``weight`` in a mixture.

    Args:
        patterns: shard paths or patterns: brace ranges (``data/train-{000..009}.tar``) and
            globs (``data/*.tar``) are expanded; a pattern matching nothing is an error.
            URLs (``https://...``, ``pipe:COMMAND``, ``s3://...`` and other fsspec schemes;
            :mod:`gradharmony.data.streams`) are brace-expanded but not globbed, and streamed.
        weight: relative sampling weight in a mixture (> 0).
        text: False for a set without narration (AudioSet-like): ``has_text=False``.
        name: used in messages and cache directory names.

    Example:
        >>> ShardSet("no/such/dir/*.tar").paths()
        Traceback (most recent call last):
        ...
        ValueError: ShardSet: pattern 'no/such/dir/*.tar' matches no file
        >>> ShardSet("https://host/train-{00..02}.tar").paths()  # counted from the pattern
        ['https://host/train-00.tar', 'https://host/train-01.tar', 'https://host/train-02.tar']
    """

    patterns: str | Sequence[str]
    weight: float = 1.0
    text: bool = True
    name: str | None = None
    _paths: list[str] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.patterns, (str, os.PathLike)):
            self.patterns = [str(self.patterns)]
        self.patterns = [str(p) for p in self.patterns]
        if not self.patterns:
            raise ValueError("ShardSet: patterns is empty")
        if not self.weight > 0:
            raise ValueError(f"ShardSet {self.label}: weight must be > 0, got {self.weight}")

    @property
    def label(self) -> str:
        """The name, or the patterns when unnamed."""
        return self.name or ",".join(self.patterns)

    def paths(self) -> list[str]:
        """Sorted, de-duplicated shard paths (and URLs, taken as written after brace
        expansion; a URL whose scheme needs a missing package is a ``ValueError``)."""
        if self._paths is None:
            from braceexpand import braceexpand

            found: set[str] = set()
            for pattern in self.patterns:
                hits: list[str] = []
                for p in braceexpand(pattern):
                    if is_url(p):
                        check_backend(p)
                        hits.append(p)
                    elif any(ch in p for ch in "*?["):
                        hits += [h for h in glob.glob(p) if os.path.isfile(h)]
                    elif os.path.isfile(p):
                        hits.append(p)
                if not hits:
                    raise ValueError(f"ShardSet: pattern {pattern!r} matches no file")
                found.update(hits)
            self._paths = sorted(found)
        return list(self._paths)


@dataclass
class StreamItem:
    """A raw clip drawn from a set's stream, not decoded yet."""

    set_index: int
    epoch: int
    index: int  # rank in this reader's stream of the set-epoch
    key: str
    payload: object  # dict of tar members, or a cache row


class TarSource:
    """Clips of a :class:`ShardSet` read from its tar shards."""

    def __init__(self, shard_set: ShardSet) -> None:
        self.set = shard_set
        self.paths = shard_set.paths()
        self.size = len(self.paths)

    def check(self, files: Mapping[str, bytes]) -> str | None:
        """The skip reason of an incomplete sample, or None."""
        if not any(e in files for e in VIDEO_EXTS):
            return "missing_video"
        if "json" not in files:
            return "missing_json"
        if self.set.text and "txt" not in files:
            return "missing_txt"
        return None

    def parse(self, files: Mapping[str, bytes]) -> tuple[dict, str]:
        """``(meta, narration)`` of a sample; ``bad_json`` / ``empty_text`` errors."""
        try:
            meta = json.loads(files["json"].decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise SampleError("bad_json", str(exc)) from None
        if not isinstance(meta, dict):
            raise SampleError("bad_json", f"expected an object, got {type(meta).__name__}")
        text = ""
        if self.set.text:
            try:
                text = files["txt"].decode("utf-8").strip()
            except UnicodeDecodeError as exc:
                raise SampleError("empty_text", f"narration is not utf-8 ({exc})") from None
            if not text:
                raise SampleError("empty_text")
        return meta, text

    def load(self, item: StreamItem, spec: ClipSpec, train: bool, rng: np.random.Generator
             ) -> tuple[np.ndarray, np.ndarray, bool, str, dict]:
        """Decode a clip: ``(uint8 frames, audio, has_audio, narration, meta)``."""
        files = item.payload
        meta, text = self.parse(files)
        video = next(files[e] for e in VIDEO_EXTS if e in files)
        frames, audio, has_audio = decode_clip_raw(video, spec, train=train, rng=rng)
        return frames, audio, has_audio, text, meta


def shard_sets(sets) -> list[ShardSet]:
    """One or several sets (a :class:`ShardSet`, a pattern, or a list of either) as a list.

    Example:
        >>> shard_sets("no/such/*.tar")[0].patterns
        ['no/such/*.tar']
    """
    if isinstance(sets, (ShardSet, str, os.PathLike)):
        sets = [sets]
    out = [s if isinstance(s, ShardSet) else ShardSet(str(s)) for s in sets]
    if not out:
        raise ValueError("make_loader: no shard set given")
    return out
