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

**Resuming.** Each batch records its reader's position (per set: epoch and clips drawn from
the shuffle buffer; number of mixture draws). :meth:`ClipLoader.state_dict` keeps the
latest position of every reader; after :meth:`ClipLoader.load_state_dict`, readers
fast-forward through the tar streams without decoding and the batches continue exactly as
the uninterrupted run would have produced them (infinite mode).

Example:
    >>> c = SkipCounter()
    >>> c.add("too_short"); c.add("too_short"); c.add("missing_json")
    >>> c.as_dict()
    {'missing_json': 1, 'too_short': 2}
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from gradharmony.data.cache import open_cache
from gradharmony.data.collate import collate, video_to_float
from gradharmony.data.decode import ClipSpec, SampleError, augment_frames
from gradharmony.data.sources import (
    RETRY_REASON,
    ShardSet,
    SkipCounter,
    StreamItem,
    TarSource,
    shard_sets,
)
from gradharmony.data.streams import DEFAULT_BACKOFF, DEFAULT_RETRIES, is_url, iter_tar_groups

#: Readers split a set by shards only when it has this many shards per reader or more (the
#: readers' shares then differ by at most 1/8); otherwise they split it clip by clip.
SHARDS_PER_READER = 8


class _Reader:
    """One reader's view of a set: epochs of owned clips through a shuffle buffer."""

    def __init__(self, ds: TriModalDataset, s: int, g: int, n: int, counter: SkipCounter):
        self.ds, self.s, self.g, self.n = ds, s, g, n
        self.counter = counter
        self.source = ds.sources[s]
        self.epoch = ds.epoch
        self.emitted = 0
        self.good_this_epoch = 0
        self.dead: bool | str = False  # a string says why: every shard failed to be read
        self.quiet = False
        self.warned = False
        self.failure: str | None = None  # set when no shard of the epoch could be read
        self._it: Iterator[StreamItem] | None = None

    def _count(self, reason: str) -> None:
        if not self.quiet:
            self.counter.add(reason)

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


class TriModalDataset(IterableDataset):
    """Iterable dataset of collated batches (use through :func:`make_loader`).

    Yields batch dicts (``docs/architecture.md``) plus ``skipped`` (counts of the clips this
    reader skipped since its previous batch) and the private ``_reader``/``_position``
    entries that :class:`ClipLoader` removes.
    """

    def __init__(self, sets: Sequence[ShardSet], spec: ClipSpec, tokenizer, *,
                 batch_size: int, k: int = 4, text_length: int = 16, train: bool = True,
                 seed: int = 0, epoch: int = 0, infinite: bool = True, rank: int = 0,
                 world_size: int = 1, shuffle_buffer: int = 64, drop_last: bool = False,
                 sources: Sequence | None = None, retries: int = DEFAULT_RETRIES,
                 retry_backoff: float = DEFAULT_BACKOFF) -> None:
        super().__init__()
        if not sets:
            raise ValueError("TriModalDataset: no shard set given")
        if batch_size < 1:
            raise ValueError(f"TriModalDataset: batch_size must be >= 1, got {batch_size}")
        if k < 1 or text_length < 1:
            raise ValueError(f"TriModalDataset: k and text_length must be >= 1, got k={k}, "
                             f"text_length={text_length}")
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
        self.batch_size, self.k, self.text_length = batch_size, k, text_length
        self.train, self.seed, self.epoch, self.infinite = train, seed, epoch, infinite
        self.rank, self.world_size = rank, world_size
        self.shuffle_buffer, self.drop_last = shuffle_buffer, drop_last
        self.retries, self.retry_backoff = int(retries), float(retry_backoff)
        self.resume: dict[int, dict] = {}
        self.rotation = 0
        self.video_uint8 = False  # set by ClipLoader when workers pass batches to it
        weights = np.array([s.weight for s in self.sets], float)
        self.weights = weights / weights.sum()

    def shard_order(self, s: int, epoch: int) -> list[int]:
        """Order of set ``s``'s shards (or cache rows) in ``epoch``: permuted when training."""
        n = self.sources[s].size
        if not self.train:
            return list(range(n))
        return [int(i) for i in np.random.default_rng([self.seed, 4, s, epoch]).permutation(n)]

    def _sample(self, item: StreamItem) -> dict:
        rng = np.random.default_rng([self.seed, 2, item.set_index, item.epoch, item.index,
                                     self._g])
        source = self.sources[item.set_index]
        frames, audio, has_audio, text, meta = source.load(item, self.spec, self.train, rng)
        video = augment_frames(frames, self.spec, train=self.train, rng=rng, as_float=False)
        k, length = self.k, self.text_length
        if self.sets[item.set_index].text:
            neighbors = meta.get("neighbors") or []
            if not isinstance(neighbors, list):
                neighbors = []
            ids, mask, cand = self.tokenizer.encode_candidates(text, neighbors, k, length)
        else:
            ids, mask = np.zeros((k, length), np.int64), np.zeros((k, length), bool)
            cand = np.zeros(k, bool)
        return {"video": video, "audio": audio, "text": ids, "text_mask": mask,
                "candidate_mask": cand, "has_text": bool(self.sets[item.set_index].text),
                "has_audio": has_audio, "label": _label(meta), "key": item.key, "meta": meta}

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        workers = info.num_workers if info is not None else 1
        physical = info.id if info is not None else 0
        logical = (physical + self.rotation) % workers
        g = self.rank * workers + logical
        n = self.world_size * workers
        self._g = g
        self._warned = False
        counter = SkipCounter()
        readers = [_Reader(self, s, g, n, counter) for s in range(len(self.sets))]
        pos = self.resume.get(logical)
        draws = 0
        if pos is not None:
            draws = int(pos["draws"])
            for r, (epoch, emitted, dead) in zip(readers, pos["sets"]):
                r.dead = bool(dead)
                if not r.dead:
                    r.start(int(epoch), int(emitted))
        samples: list[dict] = []
        while True:
            alive = [r for r in readers if not r.dead]
            if not alive:
                break
            if len(alive) == 1:
                reader = alive[0]
            else:
                w = np.array([self.weights[r.s] for r in alive])
                u = np.random.default_rng([self.seed, 1, g, draws]).random()
                draws += 1
                reader = alive[min(int(np.searchsorted(np.cumsum(w / w.sum()), u, "right")),
                                   len(alive) - 1)]
            item = reader.next()
            if item is None:
                continue
            try:
                samples.append(self._sample(item))
            except SampleError as exc:
                counter.add(exc.reason)
                continue
            except Exception as exc:  # noqa: BLE001 - one odd file must not stop training
                counter.add("decode_error")
                if not self._warned:
                    self._warned = True
                    warnings.warn(f"skipping clip {item.key} of {self.sets[item.set_index].label}"
                                  f" ({type(exc).__name__}: {exc}); further such clips are "
                                  f"counted as 'decode_error' without warning", stacklevel=1)
                continue
            reader.good_this_epoch += 1
            if len(samples) == self.batch_size:
                yield self._batch(samples, counter, readers, draws, logical)
                samples, counter = [], _reset(counter)
        if samples and not self.drop_last:
            yield self._batch(samples, counter, readers, draws, logical)
        elif counter.as_dict():  # report the last skips: the loader counts them, yields nothing
            yield {"skipped": counter.as_dict(), "_reader": logical, "_empty": True,
                   "_position": {"draws": draws,
                                 "sets": [[r.epoch, r.emitted, r.dead] for r in readers]}}

    def _batch(self, samples, counter, readers, draws, logical) -> dict:
        batch = collate(samples, video_uint8=self.video_uint8)
        batch["skipped"] = counter.as_dict()
        batch["_reader"] = logical
        batch["_position"] = {"draws": draws,
                              "sets": [[r.epoch, r.emitted, r.dead] for r in readers]}
        return batch


def _reset(counter: SkipCounter) -> SkipCounter:
    """Empty ``counter`` in place (readers hold a reference to it) and return it."""
    counter._counts.clear()
    return counter


def _no_collate(batch: dict) -> dict:
    """Batches are collated by the dataset: the DataLoader passes them on untouched."""
    return batch


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


class ClipLoader:
    """A torch ``DataLoader`` over :class:`TriModalDataset` that tracks position and skips.

    Iterate it for batches. ``skipped`` is the running :class:`SkipCounter`; ``batches`` the
    number of batches consumed (in the current epoch in epoch mode, in total otherwise);
    :meth:`state_dict` / :meth:`load_state_dict` resume exactly (see the module docstring).

    Example:
        >>> import tempfile
        >>> from gradharmony.data import ClipSpec, TextTokenizer, make_loader, write_shards
        >>> from gradharmony.data.writer import encode_mp4
        >>> d = tempfile.mkdtemp()
        >>> mp4 = encode_mp4(np.zeros((8, 16, 16, 3), np.uint8), fps=8)
        >>> _ = write_shards([{"__key__": f"c{i}", "mp4": mp4, "txt": "a red ball",
        ...                    "json": {"neighbors": ["it bounces"]}} for i in range(3)], d)
        >>> tok = TextTokenizer.from_texts(["a red ball", "it bounces"])
        >>> spec = ClipSpec(frames=2, fps=2.0, size=16, crop=8, audio_rate=8000, seconds=1.0)
        >>> loader = make_loader(f"{d}/*.tar", spec, tok, batch_size=2, k=3, text_length=4)
        >>> batch = next(iter(loader))
        >>> tuple(batch["video"].shape), tuple(batch["text"].shape), batch["has_audio"].tolist()
        ((2, 2, 8, 8, 3), (2, 3, 4), [False, False])
        >>> batch["candidate_mask"][0].tolist(), loader.state_dict()["batches"]
        ([True, True, False], 1)
    """

    def __init__(self, dataset: TriModalDataset, num_workers: int = 0,
                 prefetch_factor: int = 2, pin_memory: bool = False,
                 mp_context: str | None = None) -> None:
        self.dataset = dataset
        self.mp_context = mp_context
        self.num_workers = num_workers
        self.prefetch_factor = prefetch_factor
        self.pin_memory = pin_memory
        self.skipped = SkipCounter()
        self.batches = 0
        self._positions: dict[int, dict] = {}

    @property
    def epoch(self) -> int:
        """The epoch the next iteration reads (epoch mode) or started from (infinite)."""
        return self.dataset.epoch

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its beginning at the next iteration."""
        self.dataset.epoch = int(epoch)
        self.batches = 0
        self._positions = {}

    def state_dict(self) -> dict:
        """Position to resume from: epoch, batches consumed, per-reader positions, skips."""
        return {"epoch": self.dataset.epoch, "seed": self.dataset.seed,
                "batches": self.batches, "readers": json.loads(json.dumps(self._positions)),
                "skipped": self.skipped.as_dict()}

    def load_state_dict(self, state: Mapping) -> None:
        """Continue from a :meth:`state_dict` (same seed, sets, workers and world size)."""
        if int(state.get("seed", self.dataset.seed)) != self.dataset.seed:
            raise ValueError(f"ClipLoader.load_state_dict: state was saved with seed "
                             f"{state['seed']}, this loader has seed {self.dataset.seed}")
        self.dataset.epoch = int(state["epoch"])
        self.batches = int(state["batches"])
        self._positions = {int(k): v for k, v in dict(state.get("readers", {})).items()}
        self.skipped = SkipCounter(state.get("skipped", {}))

    def __iter__(self) -> Iterator[dict]:
        from torch.utils.data import DataLoader

        ds = self.dataset
        ds.resume = dict(self._positions)
        workers = max(1, self.num_workers)
        ds.rotation = self.batches % workers
        ds.video_uint8 = self.num_workers > 0  # 4x less to copy between processes
        kwargs = {}
        if self.num_workers > 0:
            kwargs = {"prefetch_factor": self.prefetch_factor, "worker_init_fn": _worker_init,
                      "multiprocessing_context": self.mp_context}
        loader = DataLoader(ds, batch_size=None, num_workers=self.num_workers,
                            collate_fn=_no_collate, pin_memory=self.pin_memory, **kwargs)
        for batch in loader:
            self._positions[int(batch.pop("_reader"))] = batch.pop("_position")
            self.skipped.update(batch["skipped"])
            if batch.pop("_empty", False):
                continue
            if batch["video"].dtype == torch.uint8:
                batch["video"] = video_to_float(batch["video"])
                if self.pin_memory:
                    batch["video"] = batch["video"].pin_memory()
            self.batches += 1
            self._check_dead_sets(workers, failed_only=not ds.infinite)
            yield batch
        self._check_dead_sets(workers, failed_only=True)
        if ds.infinite or self.batches == 0:
            labels = "; ".join(s.label for s in ds.sets)
            raise RuntimeError(f"shard set(s) {labels} yielded no usable clip "
                               f"(skipped: {self.skipped.as_dict() or 'nothing'})"
                               f"{self._failure(range(len(ds.sets)))}")
        self.set_epoch(ds.epoch + 1)

    def _check_dead_sets(self, workers: int, failed_only: bool) -> None:
        """Raise when every reader of a set is dead (``failed_only``: because none of the
        shards it was given could be read, which epoch mode also reports)."""
        if len(self._positions) < workers:
            return
        for s, shard_set in enumerate(self.dataset.sets):
            dead = [p["sets"][s][2] for p in self._positions.values()]
            if all(isinstance(d, str) if failed_only else d for d in dead):
                raise RuntimeError(f"shard set {shard_set.label} yielded no usable clip on "
                                   f"rank {self.dataset.rank} (skipped so far: "
                                   f"{self.skipped.as_dict() or 'nothing'})"
                                   f"{self._failure([s])}")

    def _failure(self, sets) -> str:
        """``": every shard failed ..."`` when a reader of one of ``sets`` could read none."""
        notes = sorted({p["sets"][s][2] for p in self._positions.values() for s in sets
                        if isinstance(p["sets"][s][2], str)})
        return f": {notes[0]}" if notes else ""

    def __len__(self) -> int:  # pragma: no cover - iterable length is unknown
        raise TypeError("ClipLoader has no length: clips are streamed")


def make_loader(sets, spec: ClipSpec | None = None, tokenizer=None, *, batch_size: int,
                k: int = 4, text_length: int = 16, train: bool = True, seed: int = 0,
                epoch: int = 0, infinite: bool | None = None, rank: int | None = None,
                world_size: int | None = None, num_workers: int = 0,
                shuffle_buffer: int = 64, drop_last: bool = False,
                cache_dir: str | os.PathLike | None = None,
                pin_memory: bool = False, mp_context: str | None = None,
                retries: int = DEFAULT_RETRIES,
                retry_backoff: float = DEFAULT_BACKOFF) -> ClipLoader:
    """A :class:`ClipLoader` over one shard set or a weighted mixture of them.

    Args:
        sets: a :class:`ShardSet`, a pattern string, or a list of them (a mixture).
        spec: clip sizes (:class:`ClipSpec`; default ``ClipSpec()``).
        tokenizer: a :class:`~gradharmony.data.text.TextTokenizer` or the path of a saved one;
            required when a set has narration.
        batch_size: clips per batch on this rank.
        k, text_length: candidate narrations per clip and tokens per narration.
        train: random window, crop and flip, shard permutation and shuffle buffer; else the
            centred window and crop, shards in sorted order.
        seed, epoch: everything random derives from them (and the rank and reader).
        infinite: cycle the sets forever (default: ``train``); else yield one epoch per
            iteration, then move to the next epoch.
        rank, world_size: the DDP position (default: from ``torch.distributed`` when
            initialised, else 0 and 1). Every rank must use the same seed and sets.
        num_workers: ``DataLoader`` worker processes (0 decodes in this process).
        drop_last: in epoch mode, drop each reader's last incomplete batch.
        cache_dir: train from the decoded-clip cache (:mod:`gradharmony.data.cache`), built in
            this directory on first use.
        pin_memory: page-locked batches, for faster copies to a GPU.
        mp_context: start method of the workers (default: the platform's, ``fork`` on
            Linux; ``"forkserver"`` or ``"spawn"`` if a library in the main process does not
            survive a fork).
        retries, retry_backoff: a remote shard (URL) whose stream fails is re-opened up to
            ``retries`` times, after ``retry_backoff * 2**attempt`` seconds (counted as
            ``shard_retry``); then it is skipped (``unreadable_shard`` or ``truncated_tar``).

    Example:
        >>> make_loader("no/such/*.tar", batch_size=2)
        Traceback (most recent call last):
        ...
        ValueError: ShardSet: pattern 'no/such/*.tar' matches no file
    """
    sets = shard_sets(sets)
    spec = spec or ClipSpec()
    if isinstance(tokenizer, (str, os.PathLike)):
        from gradharmony.data.text import TextTokenizer

        tokenizer = TextTokenizer.load(tokenizer)
    if rank is None or world_size is None:
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            rank, world_size = dist.get_rank(), dist.get_world_size()
        else:
            rank, world_size = 0, 1
    sources = None
    if cache_dir is not None:
        sources = [open_cache(s, spec, cache_dir, retries=retries,
                              retry_backoff=retry_backoff) for s in sets]
    else:
        for s in sets:
            s.paths()
    skipped = SkipCounter()
    for source in sources or []:
        skipped.update(source.skipped)
    dataset = TriModalDataset(
        sets, spec, tokenizer, batch_size=batch_size, k=k, text_length=text_length,
        train=train, seed=seed, epoch=epoch, infinite=train if infinite is None else infinite,
        rank=rank, world_size=world_size, shuffle_buffer=shuffle_buffer, drop_last=drop_last,
        sources=sources, retries=retries, retry_backoff=retry_backoff)
    loader = ClipLoader(dataset, num_workers=num_workers, pin_memory=pin_memory,
                        mp_context=mp_context)
    loader.skipped = skipped
    return loader
