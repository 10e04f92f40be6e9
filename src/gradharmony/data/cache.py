"""Decoded-clip cache: decode every clip of a shard set once, then train from memory maps.

Decoding H.264 + AAC for a batch of 64 clips on two cores takes longer than a training step of
the tiny model, so the demo trains from a cache. :func:`build_cache` decodes each usable clip
of a :class:`~gradharmony.data.sources.ShardSet` with the evaluation window (centred in
time) to the pre-crop frames (``uint8 [T, size, size, 3]``) and the audio (int16), and writes
them to two memory-mapped arrays in ``CACHE_DIR/NAME-HASH/``, where the hash covers the shard
paths, sizes and modification times, the :class:`~gradharmony.data.clip.ClipSpec` and the
set's ``text`` flag: a changed shard or spec gives a new directory (remote shards enter with
their URLs only, so delete the directory when a remote set changes). The narration, the JSON
metadata and ``has_audio`` of every row go to ``index.json``.

Training from the cache (``make_loader(..., cache_dir=...)``) applies the same augmentation
(random crop + flip) and the same sharding, mixture and resume logic as live decoding; the
only difference is that the temporal window is the centred one instead of a random one.
Clips skipped while building are counted in ``meta.json`` and added to the loader's
``skipped`` counter once.

Example:
    >>> cache_key(["a.tar"], ClipSpec(), text=True) == cache_key(["a.tar"], ClipSpec(),
    ...                                                           text=False)
    False
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np

from gradharmony.data.clip import ClipSpec
from gradharmony.data.decode import SampleError, decode_clip_raw
from gradharmony.data.sources import RETRY_REASON, VIDEO_EXTS, ShardSet, SkipCounter, TarSource
from gradharmony.data.streams import DEFAULT_BACKOFF, DEFAULT_RETRIES, is_url, iter_tar_groups

CACHE_VERSION = 1


def cache_key(paths: list[str], spec: ClipSpec, text: bool) -> str:
    """Hash of the shard files (path, size, mtime), the spec and the text flag.

    A remote shard (a URL) enters with its URL only: its size and time are unknown.
    """
    files = []
    for p in paths:
        if is_url(p):
            files.append([p, -1, -1])
            continue
        st = os.stat(p) if os.path.exists(p) else None
        files.append([os.path.abspath(p), st.st_size if st else -1,
                      int(st.st_mtime) if st else -1])
    blob = json.dumps({"v": CACHE_VERSION, "files": files, "spec": _decoded_sizes(spec),
                       "text": bool(text)}, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def _decoded_sizes(spec: ClipSpec) -> dict:
    """The part of ``spec`` that the cached arrays depend on, under the key names of cache
    version 1 (narrations are cached as text: ``text_len`` and ``candidates`` do not count)."""
    return {"frames": spec.frames, "fps": spec.fps, "size": spec.size, "crop": spec.crop,
            "audio_rate": spec.audio_rate, "seconds": spec.clip_seconds}


def cache_path(shard_set: ShardSet, spec: ClipSpec, cache_dir: str | os.PathLike) -> Path:
    """Directory of the cache of ``shard_set`` decoded with ``spec``."""
    name = "".join(c if c.isalnum() or c in "-_" else "_" for c in (shard_set.name or "set"))
    return Path(cache_dir) / f"{name}-{cache_key(shard_set.paths(), spec, shard_set.text)}"


def _decode_group(args):
    source, key, files, spec = args
    try:
        meta, text = source.parse(files)
        video = next(files[e] for e in VIDEO_EXTS if e in files)
        frames, audio, has_audio = decode_clip_raw(video, spec, train=False)
    except SampleError as exc:
        return key, exc.reason
    pcm = np.round(np.clip(audio, -1.0, 1.0) * 32767).astype(np.int16)
    return key, (frames, pcm, has_audio, text, meta)


def _groups(source: TarSource, spec: ClipSpec, skipped: SkipCounter, retries: int,
            backoff: float):
    for path in source.paths:
        for group in iter_tar_groups(path, retries=retries, backoff=backoff,
                                     on_retry=lambda _: skipped.add(RETRY_REASON)):
            if isinstance(group, SampleError):
                skipped.add(group.reason)
                break
            key, files = group
            reason = source.check(files)
            if reason:
                skipped.add(reason)
                continue
            yield source, key, files, spec


def build_cache(shard_set: ShardSet, spec: ClipSpec, cache_dir: str | os.PathLike, *,
                num_workers: int = 0, progress: bool = True, retries: int = DEFAULT_RETRIES,
                retry_backoff: float = DEFAULT_BACKOFF) -> Path:
    """Decode every usable clip of ``shard_set`` into the cache (no-op when it exists).

    ``num_workers > 0`` decodes in that many processes. Each shard is read once (a remote
    one re-opened as :func:`~gradharmony.data.streams.iter_tar_groups` says when its stream
    fails). Returns the cache directory. Raises ``RuntimeError`` naming the patterns when no
    clip is usable.

    Example:
        >>> import tempfile
        >>> build_cache(ShardSet("no/such.tar"), ClipSpec(), tempfile.mkdtemp())
        Traceback (most recent call last):
        ...
        ValueError: ShardSet: pattern 'no/such.tar' matches no file
    """
    from tqdm import tqdm

    final = cache_path(shard_set, spec, cache_dir)
    if (final / "meta.json").is_file():
        return final
    source = TarSource(shard_set)
    tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    skipped = SkipCounter()
    rows: list[dict] = []
    groups = _groups(source, spec, skipped, retries, retry_backoff)
    pool = None
    if num_workers > 0:
        import multiprocessing as mp

        # forkserver, not fork: forked children of a threaded (torch) parent can deadlock.
        pool = mp.get_context("forkserver" if os.name == "posix" else "spawn").Pool(num_workers)
        results = pool.imap(_decode_group, groups, chunksize=4)
    else:
        results = map(_decode_group, groups)
    try:
        with open(tmp / "frames.u8", "wb") as fv, open(tmp / "audio.i16", "wb") as fa:
            for key, out in tqdm(results, desc=f"caching {shard_set.label}", unit="clip",
                                 disable=not progress):
                if isinstance(out, str):
                    skipped.add(out)
                    continue
                frames, pcm, has_audio, text, meta = out
                fv.write(frames.tobytes())
                fa.write(pcm.tobytes())
                rows.append({"key": key, "text": text, "meta": meta,
                             "has_audio": bool(has_audio)})
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    if not rows:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RuntimeError(f"shard set {shard_set.label} yielded no usable clip "
                           f"(skipped: {skipped.as_dict() or 'nothing'})")
    with open(tmp / "index.json", "w") as f:
        json.dump(rows, f)
    meta = {"version": CACHE_VERSION, "rows": len(rows), "spec": _decoded_sizes(spec),
            "text": shard_set.text, "patterns": shard_set.patterns,
            "skipped": skipped.as_dict()}
    with open(tmp / "meta.json", "w") as f:
        json.dump(meta, f, indent=1)
    try:
        os.replace(tmp, final)
    except OSError:  # another process finished first: keep its copy
        shutil.rmtree(tmp, ignore_errors=True)
    return final


class CacheSource:
    """Clips of a shard set read from its cache (used by the dataset in place of the tars).

    The memory maps are opened lazily in each process, so the source pickles cheaply.
    """

    def __init__(self, shard_set: ShardSet, spec: ClipSpec, path: str | os.PathLike) -> None:
        self.set, self.spec, self.path = shard_set, spec, Path(path)
        with open(self.path / "meta.json") as f:
            self.info = json.load(f)
        if self.info["spec"] != _decoded_sizes(spec):
            raise ValueError(f"CacheSource: {self.path} holds clips of spec {self.info['spec']}, "
                             f"expected {_decoded_sizes(spec)}")
        self.size = int(self.info["rows"])
        self.skipped = dict(self.info.get("skipped", {}))
        self._index: list[dict] | None = None
        self._frames = self._audio = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_frames"] = state["_audio"] = state["_index"] = None
        return state

    def _open(self) -> None:
        s = self.spec
        self._frames = np.memmap(self.path / "frames.u8", np.uint8, mode="r",
                                 shape=(self.size, s.frames, s.size, s.size, 3))
        self._audio = np.memmap(self.path / "audio.i16", np.int16, mode="r",
                                shape=(self.size, s.audio_samples))
        with open(self.path / "index.json") as f:
            self._index = json.load(f)

    def rows(self, order: list[int], g: int, n: int):
        """``(key, row)`` of the rows of reader ``g`` out of ``n`` in this epoch's order."""
        if self._index is None:
            self._open()
        for row in order[g::n]:
            yield self._index[row]["key"], row

    def load(self, item, spec: ClipSpec, train: bool, rng: np.random.Generator):
        """``(uint8 frames, audio, has_audio, narration, meta)`` of a row."""
        if self._index is None:
            self._open()
        row = int(item.payload)
        entry = self._index[row]
        text = entry["text"]
        if self.set.text and not text:
            raise SampleError("empty_text")
        frames = np.array(self._frames[row])
        audio = self._audio[row].astype(np.float32) / np.float32(32767.0)
        return frames, audio, bool(entry["has_audio"]), text, dict(entry["meta"])


def open_cache(shard_set: ShardSet, spec: ClipSpec, cache_dir: str | os.PathLike, *,
               num_workers: int = 0, progress: bool = True, retries: int = DEFAULT_RETRIES,
               retry_backoff: float = DEFAULT_BACKOFF) -> CacheSource:
    """The cache of ``shard_set`` (built first when missing; under ``torch.distributed``
    rank 0 builds it while the other ranks wait).

    Example:
        >>> import tempfile
        >>> open_cache(ShardSet("no/such.tar"), ClipSpec(), tempfile.mkdtemp())
        Traceback (most recent call last):
        ...
        ValueError: ShardSet: pattern 'no/such.tar' matches no file
    """
    import torch.distributed as dist

    distributed = dist.is_available() and dist.is_initialized()
    if not distributed or dist.get_rank() == 0:
        path = build_cache(shard_set, spec, cache_dir, num_workers=num_workers,
                           progress=progress, retries=retries, retry_backoff=retry_backoff)
    if distributed:
        dist.barrier()
        path = cache_path(shard_set, spec, cache_dir)
    return CacheSource(shard_set, spec, path)
