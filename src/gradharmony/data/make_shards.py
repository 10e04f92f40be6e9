"""Turn a folder of videos plus a caption manifest into tri-modal WebDataset shards.

The manifest (CSV with a header, or JSON lines) has one row per clip with ``path`` (relative
to the video folder, or absolute), ``start`` and ``end`` (seconds) and ``text``; any other
column (``label``, ...) is copied into the clip's JSON. Each clip is cut from its video by
decoding ``[start, end)`` (frames whose timestamp falls in the interval; audio resampled to
mono ``audio_rate``), re-encoded with :func:`gradharmony.data.writer.encode_mp4` (H.264 +
AAC at the source frame rate, or ``fps`` when given; optionally resized to short side
``short_side``), and written as ``KEY.mp4``/``KEY.txt``/``KEY.json``. ``neighbors`` lists the
narrations of the same video's other clips that were written, nearest clip centre first
(ties: the earlier clip), at most ``max_neighbors``. Shards hold the clips video by video.

Bad rows are skipped and counted by reason (:data:`ROW_REASONS`): ``bad_row`` (a missing
column or a time that is not a number, or ``end <= start``), ``empty_text``, ``missing_file``,
``corrupt_video`` (the file does not open, has no video stream or its video does not decode),
``no_frames`` (nothing to decode in the interval, e.g. ``start`` after the end of the video),
``bad_audio`` (an audio track that does not decode; a video without audio track is fine and
gives clips without one).

Example:
    >>> neighbor_order([(0.0, 2.0), (2.0, 4.0), (4.0, 6.0), (10.0, 12.0)], 1)
    [0, 2, 3]
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROW_REASONS = ("bad_row", "empty_text", "missing_file", "corrupt_video", "no_frames",
               "bad_audio")


class AudioError(Exception):
    """The audio track of a clip does not decode."""


@dataclass
class Row:
    """One manifest row."""

    index: int
    path: str
    start: float
    end: float
    text: str
    extra: dict = field(default_factory=dict)


def read_manifest(path: str | os.PathLike) -> tuple[list[Row], dict[str, int]]:
    """Rows of a CSV/JSONL manifest and the counts of rows rejected by reason.

    Example:
        >>> import tempfile
        >>> p = os.path.join(tempfile.mkdtemp(), "m.csv")
        >>> _ = open(p, "w").write("path,start,end,text\\na.mp4,0,2,hi\\na.mp4,3,2,x\\n")
        >>> rows, bad = read_manifest(p)
        >>> [(r.path, r.start, r.end, r.text) for r in rows], bad
        ([('a.mp4', 0.0, 2.0, 'hi')], {'bad_row': 1})
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"make-shards: no manifest at {path}")
    if path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        raw = []
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    try:
                        raw.append(json.loads(line))
                    except ValueError:
                        raw.append(None)
    else:
        with open(path, newline="", encoding="utf-8") as f:
            raw = list(csv.DictReader(f))
        if raw and not {"path", "start", "end", "text"} <= set(raw[0]):
            raise ValueError(f"make-shards: manifest {path} needs the columns path, start, end, "
                             f"text; got {sorted(raw[0])}")
    rows: list[Row] = []
    bad: dict[str, int] = {}
    for i, r in enumerate(raw):
        try:
            start, end = float(r["start"]), float(r["end"])
            text = str(r["text"] if r["text"] is not None else "").strip()
            p = str(r["path"])
        except (KeyError, TypeError, ValueError):
            bad["bad_row"] = bad.get("bad_row", 0) + 1
            continue
        if not (np.isfinite(start) and np.isfinite(end)) or end <= start or start < 0 or not p:
            bad["bad_row"] = bad.get("bad_row", 0) + 1
            continue
        if not text:
            bad["empty_text"] = bad.get("empty_text", 0) + 1
            continue
        extra = {k: v for k, v in r.items() if k not in ("path", "start", "end", "text")}
        rows.append(Row(i, p, start, end, text, extra))
    return rows, bad


def neighbor_order(spans: Sequence[tuple[float, float]], i: int) -> list[int]:
    """Indices of the other spans by distance of their centre to span ``i``'s (ties: earlier)."""
    centre = (spans[i][0] + spans[i][1]) / 2
    others = [j for j in range(len(spans)) if j != i]
    return sorted(others, key=lambda j: (abs((spans[j][0] + spans[j][1]) / 2 - centre),
                                         spans[j][0], j))


def _even(x: int) -> int:
    return max(2, x - x % 2)


def cut_clip(container, start: float, end: float, *, fps: float | None,
             short_side: int | None, audio_rate: int):
    """Decode ``[start, end)`` of an open container: ``(uint8 frames, fps, audio or None)``."""
    import av

    vstream = container.streams.video[0]
    src_fps = float(vstream.average_rate or vstream.guessed_rate or 25)
    out_fps = float(fps or src_fps)
    container.seek(int(start / vstream.time_base), stream=vstream, backward=True,
                   any_frame=False)
    v0 = float(vstream.start_time * vstream.time_base) if vstream.start_time else 0.0
    frames: list[np.ndarray] = []
    times: list[float] = []
    for frame in container.decode(vstream):
        t = float(frame.time) - v0 if frame.time is not None else 0.0
        if t >= end:
            break
        if t < start:
            continue
        w, h = frame.width, frame.height
        if short_side:
            scale = short_side / min(w, h)
            w, h = int(round(w * scale)), int(round(h * scale))
        frames.append(frame.reformat(width=_even(w), height=_even(h), format="rgb24",
                                     interpolation="AREA").to_ndarray())
        times.append(t - start)
    if not frames:
        return None, out_fps, None
    if fps:
        n = max(1, int(round((end - start) * out_fps)))
        src = np.asarray(times)
        pick = [int(np.argmin(np.abs(src - j / out_fps))) for j in range(n)]
        frames = [frames[j] for j in pick]
    audio = None
    if container.streams.audio:
        astream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=audio_rate)
        a0 = float(astream.start_time * astream.time_base) if astream.start_time else 0.0
        container.seek(int(start / astream.time_base), stream=astream, backward=True)
        chunks: list[np.ndarray] = []
        first = None
        try:
            for frame in container.decode(astream):
                t = float(frame.time) - a0 if frame.time is not None else 0.0
                if t >= end:
                    break
                if first is None:
                    first = t
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
        except av.error.FFmpegError as exc:
            raise AudioError(str(exc)) from None
        if chunks and first is not None:
            wave = np.concatenate(chunks).astype(np.float32)
            offset = int(round((start - first) * audio_rate))
            n = int(round((end - start) * audio_rate))
            audio = np.zeros(n, np.float32)
            lo, hi = max(offset, 0), min(offset + n, wave.size)
            if hi > lo:
                audio[lo - offset:hi - offset] = wave[lo:hi]
    return np.stack(frames), out_fps, audio


def _key(row: Row) -> str:
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(row.path).stem)[:40] or "clip"
    return f"{stem}-{row.index:07d}"


def make_shards(videos: str | os.PathLike, manifest: str | os.PathLike,
                out: str | os.PathLike, *, clips_per_shard: int = 100, prefix: str = "shard",
                fps: float | None = None, short_side: int | None = None,
                audio_rate: int = 16000, max_neighbors: int = 8,
                progress: bool = True) -> dict:
    """Cut the manifest's clips and write shards; returns a summary dict.

    The summary has ``clips`` (written), ``shards`` (paths), ``skipped`` (bad rows by reason).

    Example:
        >>> import tempfile
        >>> d = tempfile.mkdtemp(); m = os.path.join(d, "m.jsonl")
        >>> _ = open(m, "w").write('{"path": "x.mp4", "start": 0, "end": 1, "text": "hi"}\\n')
        >>> make_shards(d, m, os.path.join(d, "out"), progress=False)["skipped"]
        {'missing_file': 1}
    """
    import av
    from tqdm import tqdm

    from gradharmony.data.writer import ShardWriter, encode_mp4

    if clips_per_shard < 1:
        raise ValueError(f"make-shards: clips_per_shard must be >= 1, got {clips_per_shard}")
    rows, skipped = read_manifest(manifest)
    by_video: dict[str, list[Row]] = {}
    for r in rows:
        by_video.setdefault(r.path, []).append(r)
    videos = Path(videos)

    def bad(reason: str, n: int = 1) -> None:
        skipped[reason] = skipped.get(reason, 0) + n

    written = 0
    bar = tqdm(total=len(rows), desc="make-shards", unit="clip", disable=not progress)
    with ShardWriter(out, prefix=prefix, max_count=clips_per_shard) as writer:
        for vpath, vrows in by_video.items():
            full = Path(vpath) if os.path.isabs(vpath) else videos / vpath
            if not full.is_file():
                bad("missing_file", len(vrows))
                bar.update(len(vrows))
                continue
            try:
                container = av.open(str(full))
                if not container.streams.video:
                    container.close()
                    raise ValueError("no video stream")
            except (av.error.FFmpegError, ValueError, OSError):
                bad("corrupt_video", len(vrows))
                bar.update(len(vrows))
                continue
            cut: list[tuple[Row, bytes]] = []
            with container:
                for r in sorted(vrows, key=lambda r: r.index):
                    bar.update(1)
                    try:
                        frames, out_fps, audio = cut_clip(
                            container, r.start, r.end, fps=fps, short_side=short_side,
                            audio_rate=audio_rate)
                    except AudioError:
                        bad("bad_audio")
                        continue
                    except av.error.FFmpegError:
                        bad("corrupt_video")
                        continue
                    if frames is None:
                        bad("no_frames")
                        continue
                    cut.append((r, encode_mp4(frames, fps=out_fps, audio=audio,
                                              sample_rate=audio_rate)))
            spans = [(r.start, r.end) for r, _ in cut]
            for i, (r, mp4) in enumerate(cut):
                near = [cut[j][0].text for j in neighbor_order(spans, i)][:max_neighbors]
                meta = {"video_id": Path(vpath).stem, "path": vpath, "start": r.start,
                        "end": r.end, "neighbors": near, **r.extra}
                writer.write({"__key__": _key(r), "mp4": mp4, "txt": r.text, "json": meta})
                written += 1
    bar.close()
    return {"clips": written, "shards": list(writer.paths),
            "skipped": {k: v for k, v in sorted(skipped.items()) if v}}
