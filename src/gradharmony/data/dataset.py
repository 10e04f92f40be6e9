"""Reading tri-modal WebDataset shards: mixtures, per-rank/per-worker sharding, skip counting.

A shard is a tar file in the layout video2dataset writes: ``KEY.mp4`` (video with its audio
track), ``KEY.txt`` (the narration) and ``KEY.json`` (``video_id``, ``start``, ``end``,
``neighbors`` = narrations of the adjacent clips, nearest first, optional ``label``, ...).
Members are grouped by key as WebDataset does (the key is the member path up to the first dot
of its file name).

**Sharding.** Every epoch the shard list of each set is permuted with ``(seed, set, epoch)``
(training) or kept sorted (evaluation). With ``N = world_size * num_workers`` readers and
reader ``g = rank * num_workers + worker``: when the set has at least
``SHARDS_PER_READER * N`` shards, reader ``g`` reads shards ``g, g + N, ...`` of that order;
otherwise every reader streams all the shards (reading tar bytes is cheap next to decoding)
and keeps clips ``g, g + N, ...``. Either way each clip goes to exactly one reader per epoch.
In training a shuffle buffer (deterministic for the seed) mixes clips of different shards.

**Mixtures.** Each reader draws the set of its next clip i.i.d. with the sets' weights
(from ``(seed, reader, draw)``). In infinite mode every set cycles through its own epochs; in
epoch mode a set that is used up leaves the draw and the epoch ends when all are used up,
so every clip is read exactly once. A set declared ``text=False`` (AudioSet-like) yields
``has_text=False`` clips (no candidates) that feed ``L_va`` only; its ``.txt`` is ignored.

**Bad samples** are skipped and counted by reason (:data:`SKIP_REASONS`): ``missing_video``,
``missing_txt`` (text sets only), ``missing_json``, ``bad_json``, ``empty_text`` (a text
set's clip whose own narration is empty: it is *skipped*, never turned into a text-free clip;
declare the set ``text=False`` to train on such clips), ``corrupt_video``, ``too_short``,
``bad_audio``, ``truncated_tar`` (the clips before the damage are kept), ``unreadable_shard``
(the shard does not open: missing file, HTTP error, failing ``pipe:`` command), ``decode_error``
(any other exception while reading a clip; the first one is also shown as a warning). Each
batch carries the counts met while it was built under ``skipped``; :class:`ClipLoader` sums
them. A set that yields no usable clip at all is a ``RuntimeError`` naming its patterns (and
saying so when every shard failed to open or read).

**Remote shards.** Patterns may be URLs (``https://``, ``pipe:CMD``, ``s3://`` via fsspec;
:mod:`gradharmony.data.streams`): brace-expanded, never globbed, streamed. A remote stream that
fails is re-opened (``retries``, ``retry_backoff``; each re-open counted as ``shard_retry``,
which is not a skipped clip) and its clips are delivered once.

**Resuming.** Each batch comes with its reader's position (per set: epoch and clips drawn
from the shuffle buffer; number of mixture draws), a :class:`ReaderOutput`.
:class:`~gradharmony.data.loader.ClipLoader` keeps the latest position of every reader;
an iteration that starts from them fast-forwards through the tar streams without decoding,
and the batches continue exactly as the uninterrupted run would have produced them
(infinite mode).

**Who owns what.** :class:`TriModalDataset` is the fixed description (sets, sizes, seed,
sharding). Each iteration is an :class:`EpochReading` (where it starts: epoch, reader
positions, worker rotation), and each worker process reads it with an :class:`EpochReader`
of its own, which owns the mutable state: its set readers, mixture draws and skip counts.

Example:
    >>> c = SkipCounter()
    >>> c.add("too_short"); c.add("too_short"); c.add("missing_json")
    >>> c.as_dict()
    {'missing_json': 1, 'too_short': 2}
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from gradharmony.data.clip import ClipSpec
from gradharmony.data.collate import collate
from gradharmony.data.decode import SampleError, augment_frames
from gradharmony.data.sources import (
    RETRY_REASON,
    ShardSet,
    SkipCounter,
    StreamItem,
    TarSource,
)
from gradharmony.data.streams import DEFAULT_BACKOFF, DEFAULT_RETRIES, is_url, iter_tar_groups

#: Readers split a set by shards only when it has this many shards per reader or more (the
#: readers' shares then differ by at most 1/8); otherwise they split it clip by clip.
SHARDS_PER_READER = 8


class _SetReader:
    """One reader's view of a set: epochs of owned clips through a shuffle buffer.

    Skipped clips are reported through ``count`` (the :class:`EpochReader`'s counter).
    """

    def __init__(self, ds: TriModalDataset, s: int, g: int, n: int, epoch: int,
                 count: Callable[[str], None]):
        self.ds, self.s, self.g, self.n = ds, s, g, n
        self.report = count
        self.source = ds.sources[s]
        self.epoch = epoch
        self.emitted = 0
        self.good_this_epoch = 0
        self.dead: bool | str = False  # a string says why: every shard failed to be read
        self.quiet = False
        self.warned = False
        self.failure: str | None = None  # set when no shard of the epoch could be read
        self._it: Iterator[StreamItem] | None = None

    def _count(self, reason: str) -> None:
        if not self.quiet:
            self.report(reason)

    def _owned(self, epoch: int) -> Iterator[tuple[str, object]]:
        ds, g, n = self.ds, self.g, self.n
        if isinstance(self.source, TarSource):
            paths = [self.source.paths[i] for i in ds.shard_order(self.s, epoch)]
        else:
            yield from self.source.rows(ds.shard_order(self.s, epoch), g, n)
            return
        per_shard = len(paths) >= SHARDS_PER_READER * n
        mine = paths[g::n] if per_shard else paths
        index, read_any, first_error = 0, False, None
        for pos, path in enumerate(mine):
            owner_of_shard = per_shard or pos % n == g
            for group in iter_tar_groups(path, retries=ds.retries, backoff=ds.retry_backoff,
                                         on_retry=self._retried):
                if isinstance(group, SampleError):
                    first_error = first_error or str(group)
                    if owner_of_shard:
                        self._count(group.reason)
                        self._warn_remote(path, group)
                    break
                read_any = True
                if not per_shard:
                    index += 1
                    if (index - 1) % n != g:
                        continue
                key, files = group
                reason = self.source.check(files)
                if reason:
                    self._count(reason)
                    continue
                yield key, files
        if not read_any and first_error:
            self.failure = f"every shard failed to open or read (e.g. {first_error})"

    def _retried(self, message: str) -> None:
        self._count(RETRY_REASON)

    def _warn_remote(self, path: str, error: SampleError) -> None:
        if is_url(path) and not self.quiet and not self.warned:
            self.warned = True
            warnings.warn(f"shard set {self.ds.sets[self.s].label}: {error} (after "
                          f"{self.ds.retries} retries; the run goes on, further failed shards "
                          f"of this set are counted without warning)", stacklevel=1)

    def _epoch_items(self, epoch: int) -> Iterator[StreamItem]:
        ds = self.ds
        raw = self._owned(epoch)
        if ds.train and ds.shuffle_buffer > 1 and isinstance(self.source, TarSource):
            raw = _shuffled(raw, ds.shuffle_buffer, np.random.default_rng(
                [ds.seed, 3, self.s, epoch, self.g]))
        for i, (key, payload) in enumerate(raw):
            yield StreamItem(self.s, epoch, i, key, payload)

    def start(self, epoch: int, emitted: int) -> None:
        """Position the reader at ``emitted`` clips into ``epoch`` (no decoding, no counting)."""
        self.epoch, self.emitted, self.good_this_epoch = epoch, 0, 0
        self.failure = None
        self._it = self._epoch_items(epoch)
        if emitted:
            self.quiet = True
            for _ in range(emitted):
                if next(self._it, None) is None:
                    break
                self.emitted += 1
            self.quiet = False
            self.good_this_epoch = 1  # clips were decoded before the checkpoint

    def next(self) -> StreamItem | None:
        """The next clip, or None when the set is used up (epoch mode) or dead."""
        if self._it is None:
            self.start(self.epoch, 0)
        while True:
            item = next(self._it, None)
            if item is not None:
                self.emitted += 1
                return item
            if self.good_this_epoch == 0 or not self.ds.infinite:
                self.dead = (self.good_this_epoch == 0 and self.failure) or True
                return None
            self.start(self.epoch + 1, 0)



def _shuffled(items: Iterable, size: int, rng: np.random.Generator) -> Iterator:
    buf: list = []
    for x in items:
        if len(buf) < size:
            buf.append(x)
            continue
        j = int(rng.integers(0, size))
        buf[j], x = x, buf[j]
        yield x
    order = rng.permutation(len(buf))
    for j in order:
        yield buf[j]


def _label(meta: Mapping) -> int:
    value = meta.get("label", -1)
    try:
        return int(value)
    except (TypeError, ValueError):
        return -1


class ReaderOutput(NamedTuple):
    """What a reader hands to the loader: a batch (``None`` at the end of an epoch when only
    skips are left to report), the clips it ``skipped`` since its previous output (counts by
    reason), its logical index ``reader`` and its ``position`` after the batch
    (``{"draws": n, "sets": [[epoch, emitted, dead], ...]}``, JSON-able)."""

    reader: int
    position: dict
    skipped: dict
    batch: dict | None


class TriModalDataset:
    """The fixed description of a shard mixture read as collated batches (use through
    :func:`~gradharmony.data.loader.make_loader`): sets, clip sizes, tokenizer, sharding and
    seed. It holds no iteration state: :meth:`reading` describes one iteration.

    Example:
        >>> import tempfile
        >>> from gradharmony.data import TextTokenizer, write_shards
        >>> from gradharmony.data.writer import encode_mp4
        >>> d = tempfile.mkdtemp()
        >>> mp4 = encode_mp4(np.zeros((8, 16, 16, 3), np.uint8), fps=8)
        >>> _ = write_shards([{"__key__": f"c{i}", "mp4": mp4, "txt": "a ball", "json": {}}
        ...                   for i in range(3)], d)
        >>> spec = ClipSpec(frames=2, fps=2.0, size=16, crop=8, audio_rate=8000,
        ...                 clip_seconds=1.0)
        >>> ds = TriModalDataset([ShardSet(f"{d}/*.tar")], spec, TextTokenizer.from_texts(
        ...     ["a ball"]), batch_size=2, train=False, infinite=False)
        >>> [(out.batch["key"], out.position["sets"]) for out in ds.reading()]
        [(['c0', 'c1'], [[0, 2, False]]), (['c2'], [[0, 3, True]])]
    """

    def __init__(self, sets: Sequence[ShardSet], spec: ClipSpec, tokenizer, *,
                 batch_size: int, train: bool = True, seed: int = 0, infinite: bool = True,
                 rank: int = 0, world_size: int = 1, shuffle_buffer: int = 64,
                 drop_last: bool = False, sources: Sequence | None = None,
                 retries: int = DEFAULT_RETRIES,
                 retry_backoff: float = DEFAULT_BACKOFF) -> None:
        if not sets:
            raise ValueError("TriModalDataset: no shard set given")
        if batch_size < 1:
            raise ValueError(f"TriModalDataset: batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"TriModalDataset: rank {rank} outside world_size {world_size}")
        if retries < 0 or not retry_backoff >= 0:
            raise ValueError(f"TriModalDataset: retries and retry_backoff must be >= 0, got "
                             f"retries={retries}, retry_backoff={retry_backoff}")
        if tokenizer is None and any(s.text for s in sets):
            raise ValueError("TriModalDataset: a tokenizer is needed for sets with narration "
                             f"({[s.label for s in sets if s.text]})")
        self.sets = list(sets)
        self.sources = list(sources) if sources is not None else [TarSource(s) for s in sets]
        self.spec, self.tokenizer = spec, tokenizer
        self.batch_size = batch_size
        self.train, self.seed, self.infinite = train, seed, infinite
        self.rank, self.world_size = rank, world_size
        self.shuffle_buffer, self.drop_last = shuffle_buffer, drop_last
        self.retries, self.retry_backoff = int(retries), float(retry_backoff)
        weights = np.array([s.weight for s in self.sets], float)
        self.weights = weights / weights.sum()

    def shard_order(self, s: int, epoch: int) -> list[int]:
        """Order of set ``s``'s shards (or cache rows) in ``epoch``: permuted when training."""
        n = self.sources[s].size
        if not self.train:
            return list(range(n))
        return [int(i) for i in np.random.default_rng([self.seed, 4, s, epoch]).permutation(n)]

    def reading(self, epoch: int = 0, positions: Mapping[int, dict] | None = None,
                rotation: int = 0, video_uint8: bool = False) -> EpochReading:
        """One iteration over the data, from ``epoch`` or from the readers' ``positions``
        (logical reader -> :attr:`ReaderOutput.position`); ``rotation`` shifts which worker
        process plays which logical reader; ``video_uint8`` keeps the video uint8."""
        return EpochReading(self, int(epoch), dict(positions or {}), int(rotation),
                            bool(video_uint8))


@dataclass(frozen=True, eq=False)
class EpochReading(IterableDataset):
    """One iteration of a :class:`TriModalDataset` (see :meth:`TriModalDataset.reading`):
    each worker process that iterates it reads its share with an :class:`EpochReader`."""

    dataset: TriModalDataset
    epoch: int = 0
    positions: dict = field(default_factory=dict)
    rotation: int = 0
    video_uint8: bool = False

    def __iter__(self) -> Iterator[ReaderOutput]:
        info = get_worker_info()
        workers = info.num_workers if info is not None else 1
        physical = info.id if info is not None else 0
        return EpochReader(self, (physical + self.rotation) % workers, workers).outputs()


class EpochReader:
    """The reading of one logical reader (a worker process of a rank): it owns the set
    readers, the count of mixture draws and the skip counts, and yields
    :class:`ReaderOutput` s."""

    def __init__(self, reading: EpochReading, logical: int, workers: int) -> None:
        ds = self.ds = reading.dataset
        self.video_uint8 = reading.video_uint8
        self.logical = logical
        self.g = ds.rank * workers + logical
        n = ds.world_size * workers
        self.skipped = SkipCounter()
        self.readers = [_SetReader(ds, s, self.g, n, reading.epoch, self._skip)
                        for s in range(len(ds.sets))]
        self.draws = 0
        self.warned = False
        pos = reading.positions.get(logical)
        if pos is not None:
            self.draws = int(pos["draws"])
            for r, (epoch, emitted, dead) in zip(self.readers, pos["sets"]):
                r.dead = bool(dead)
                if not r.dead:
                    r.start(int(epoch), int(emitted))

    def _skip(self, reason: str) -> None:
        self.skipped.add(reason)

    def _pick(self) -> _SetReader | None:
        """The set reader of the next clip (a mixture draw), ``None`` when all are dead."""
        alive = [r for r in self.readers if not r.dead]
        if len(alive) <= 1:
            return alive[0] if alive else None
        w = np.array([self.ds.weights[r.s] for r in alive])
        u = np.random.default_rng([self.ds.seed, 1, self.g, self.draws]).random()
        self.draws += 1
        return alive[min(int(np.searchsorted(np.cumsum(w / w.sum()), u, "right")),
                         len(alive) - 1)]

    def outputs(self) -> Iterator[ReaderOutput]:
        """Batches of decoded clips until every set reader is dead (never, in infinite mode)."""
        samples: list[dict] = []
        while (reader := self._pick()) is not None:
            item = reader.next()
            if item is None:
                continue
            sample = self._decoded(item)
            if sample is None:
                continue
            reader.good_this_epoch += 1
            samples.append(sample)
            if len(samples) == self.ds.batch_size:
                yield self._output(samples)
                samples = []
        if samples and not self.ds.drop_last:
            yield self._output(samples)
        elif self.skipped.as_dict():  # report the last skips: the loader counts them
            yield self._output([])

    def _decoded(self, item: StreamItem) -> dict | None:
        """The sample of ``item``, or ``None`` (counted) when it cannot be used."""
        try:
            return self._sample(item)
        except SampleError as exc:
            self.skipped.add(exc.reason)
        except Exception as exc:  # noqa: BLE001 - one odd file must not stop training
            self.skipped.add("decode_error")
            if not self.warned:
                self.warned = True
                warnings.warn(f"skipping clip {item.key} of {self.ds.sets[item.set_index].label}"
                              f" ({type(exc).__name__}: {exc}); further such clips are "
                              f"counted as 'decode_error' without warning", stacklevel=1)
        return None

    def _sample(self, item: StreamItem) -> dict:
        ds = self.ds
        rng = np.random.default_rng([ds.seed, 2, item.set_index, item.epoch, item.index,
                                     self.g])
        source = ds.sources[item.set_index]
        frames, audio, has_audio, text, meta = source.load(item, ds.spec, ds.train, rng)
        video = augment_frames(frames, ds.spec, train=ds.train, rng=rng, as_float=False)
        k, length = ds.spec.candidates, ds.spec.text_len
        if ds.sets[item.set_index].text:
            neighbors = meta.get("neighbors") or []
            if not isinstance(neighbors, list):
                neighbors = []
            ids, mask, cand = ds.tokenizer.encode_candidates(text, neighbors, k, length)
        else:
            ids, mask = np.zeros((k, length), np.int64), np.zeros((k, length), bool)
            cand = np.zeros(k, bool)
        return {"video": video, "audio": audio, "text": ids, "text_mask": mask,
                "candidate_mask": cand, "has_text": bool(ds.sets[item.set_index].text),
                "has_audio": has_audio, "label": _label(meta), "key": item.key,
                "set": item.set_index, "meta": meta}

    def _output(self, samples: list[dict]) -> ReaderOutput:
        batch = collate(samples, video_uint8=self.video_uint8) if samples else None
        skipped, self.skipped = self.skipped.as_dict(), SkipCounter()
        position = {"draws": self.draws,
                    "sets": [[r.epoch, r.emitted, r.dead] for r in self.readers]}
        return ReaderOutput(self.logical, position, skipped, batch)
