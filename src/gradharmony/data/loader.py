"""The loader of :class:`~gradharmony.data.dataset.TriModalDataset`: batches through a torch
``DataLoader``, the running skip counts, and the position to resume from.

The loader owns where the next iteration starts (the epoch, the readers' positions, the
batches consumed); each iteration hands them to the dataset as an
:class:`~gradharmony.data.dataset.EpochReading` and keeps what the readers report back.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping

import torch

from gradharmony.data.cache import open_cache
from gradharmony.data.clip import ClipSpec
from gradharmony.data.collate import video_to_float
from gradharmony.data.dataset import ReaderOutput, TriModalDataset
from gradharmony.data.sources import SkipCounter, shard_sets
from gradharmony.data.streams import DEFAULT_BACKOFF, DEFAULT_RETRIES


def _no_collate(output: ReaderOutput) -> ReaderOutput:
    """Batches are collated by the dataset: the DataLoader passes them on untouched."""
    return output


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


class ClipLoader:
    """A torch ``DataLoader`` over :class:`TriModalDataset` that tracks position and skips.

    Iterate it for batches. ``skipped`` is the running :class:`SkipCounter`; ``batches`` the
    number of batches consumed (in the current epoch in epoch mode, in total otherwise);
    :meth:`state_dict` / :meth:`load_state_dict` resume exactly (see
    :mod:`gradharmony.data.dataset`).

    Example:
        >>> import tempfile
        >>> import numpy as np
        >>> from gradharmony.data import ClipSpec, TextTokenizer, make_loader, write_shards
        >>> from gradharmony.data.writer import encode_mp4
        >>> d = tempfile.mkdtemp()
        >>> mp4 = encode_mp4(np.zeros((8, 16, 16, 3), np.uint8), fps=8)
        >>> _ = write_shards([{"__key__": f"c{i}", "mp4": mp4, "txt": "a red ball",
        ...                    "json": {"neighbors": ["it bounces"]}} for i in range(3)], d)
        >>> tok = TextTokenizer.from_texts(["a red ball", "it bounces"])
        >>> spec = ClipSpec(frames=2, fps=2.0, size=16, crop=8, audio_rate=8000,
        ...                 clip_seconds=1.0, text_len=4, candidates=3)
        >>> loader = make_loader(f"{d}/*.tar", spec, tok, batch_size=2)
        >>> batch = next(iter(loader))
        >>> tuple(batch["video"].shape), tuple(batch["text"].shape), batch["has_audio"].tolist()
        ((2, 2, 8, 8, 3), (2, 3, 4), [False, False])
        >>> batch["candidate_mask"][0].tolist(), loader.state_dict()["batches"]
        ([True, True, False], 1)
    """

    def __init__(self, dataset: TriModalDataset, num_workers: int = 0,
                 prefetch_factor: int = 2, pin_memory: bool = False,
                 mp_context: str | None = None, epoch: int = 0) -> None:
        self.dataset = dataset
        self._epoch = int(epoch)
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
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its beginning at the next iteration."""
        self._epoch = int(epoch)
        self.batches = 0
        self._positions = {}

    def state_dict(self) -> dict:
        """Position to resume from: epoch, batches consumed, per-reader positions, skips."""
        return {"epoch": self._epoch, "seed": self.dataset.seed,
                "batches": self.batches, "readers": json.loads(json.dumps(self._positions)),
                "skipped": self.skipped.as_dict()}

    def load_state_dict(self, state: Mapping) -> None:
        """Continue from a :meth:`state_dict` (same seed, sets, workers and world size)."""
        if int(state.get("seed", self.dataset.seed)) != self.dataset.seed:
            raise ValueError(f"ClipLoader.load_state_dict: state was saved with seed "
                             f"{state['seed']}, this loader has seed {self.dataset.seed}")
        self._epoch = int(state["epoch"])
        self.batches = int(state["batches"])
        self._positions = {int(k): v for k, v in dict(state.get("readers", {})).items()}
        self.skipped = SkipCounter(state.get("skipped", {}))

    def __iter__(self) -> Iterator[dict]:
        from torch.utils.data import DataLoader

        ds = self.dataset
        workers = max(1, self.num_workers)
        reading = ds.reading(self._epoch, self._positions, rotation=self.batches % workers,
                             video_uint8=self.num_workers > 0)  # 4x less to copy between processes
        kwargs = {}
        if self.num_workers > 0:
            kwargs = {"prefetch_factor": self.prefetch_factor, "worker_init_fn": _worker_init,
                      "multiprocessing_context": self.mp_context}
        loader = DataLoader(reading, batch_size=None, num_workers=self.num_workers,
                            collate_fn=_no_collate, pin_memory=self.pin_memory, **kwargs)
        for output in loader:
            self._positions[int(output.reader)] = output.position
            self.skipped.update(output.skipped)
            if output.batch is None:
                continue
            batch = output.batch
            batch["skipped"] = output.skipped
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
        self.set_epoch(self._epoch + 1)

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
                train: bool = True, seed: int = 0,
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
        spec: clip sizes, including the ``candidates`` narrations per clip and the
            ``text_len`` tokens per narration (:class:`ClipSpec`; default ``ClipSpec()``).
        tokenizer: a :class:`~gradharmony.data.text.TextTokenizer` or the path of a saved one;
            required when a set has narration.
        batch_size: clips per batch on this rank.
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
        sets, spec, tokenizer, batch_size=batch_size, train=train, seed=seed,
        infinite=train if infinite is None else infinite, rank=rank, world_size=world_size,
        shuffle_buffer=shuffle_buffer, drop_last=drop_last, sources=sources, retries=retries,
        retry_backoff=retry_backoff)
    loader = ClipLoader(dataset, num_workers=num_workers, pin_memory=pin_memory,
                        mp_context=mp_context, epoch=epoch)
    loader.skipped = skipped
    return loader
