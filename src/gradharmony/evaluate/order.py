"""How scoring composes its batches: which clips are each other's in-batch negatives.

Orders (``gradharmony score --order``):

- ``shard``: consecutive clips in shard order. Shards are written one video after another,
  so a batch holds a few whole videos and many same-video (near-duplicate) negatives.
- ``shuffled``: one seeded permutation of all clips cut into consecutive batches: what
  training from the decoded cache (``data.cache_dir``) does (it permutes the cache rows
  every epoch).
- ``stream``: what training streaming from the tars does (no ``data.cache_dir``): the shard
  list permuted (seeded), then a shuffle buffer of ``shuffle_buffer`` clips
  (``data.shuffle_buffer``, the same buffer algorithm as the training loader).
- ``one-per-video``: no two clips of a batch come from the same video (``video_id`` of the
  metadata): no near-duplicate negatives at all.

The last batch may be smaller than ``batch_size``. :func:`batch_order` returns the batches as
index arrays into the clips in shard order.
"""

from __future__ import annotations

import numpy as np

ORDERS = ("shuffled", "stream", "shard", "one-per-video")


def training_order(config: dict) -> str:
    """The order a run's training used: ``shuffled`` from the cache, ``stream`` from tars.

    Example:
        >>> training_order({"data": {"cache_dir": "data/cache"}}), training_order({})
        ('shuffled', 'stream')
    """
    return "shuffled" if (config.get("data") or {}).get("cache_dir") else "stream"


def _shuffle_buffer(items: np.ndarray, size: int, rng: np.random.Generator) -> list[int]:
    # the training loader's buffer (gradharmony.data.dataset._shuffled)
    buf: list = []
    out = []
    for x in items.tolist():
        if len(buf) < size:
            buf.append(x)
            continue
        j = int(rng.integers(0, size))
        buf[j], x = x, buf[j]
        out.append(x)
    out += [buf[j] for j in rng.permutation(len(buf))]
    return out


def _one_per_video(videos: list[str], batch_size: int, rng: np.random.Generator
                   ) -> list[np.ndarray]:
    queues: dict[str, list[int]] = {}
    for i in rng.permutation(len(videos)):
        queues.setdefault(videos[i], []).append(int(i))
    batches = []
    while queues:
        # the videos with the most clips left go first, so that few videos are left at the end
        names = sorted(queues, key=lambda v: (-len(queues[v]), rng.random()))[:batch_size]
        batches.append(np.array([queues[v].pop() for v in names]))
        for v in names:
            if not queues[v]:
                del queues[v]
    return batches


def batch_order(n: int, batch_size: int, order: str, seed: int = 0,
                shards: list[int] | None = None, videos: list[str] | None = None,
                shuffle_buffer: int = 64) -> list[np.ndarray]:
    """Batches (index arrays into ``n`` clips in shard order) composed as ``order`` says.

    ``shards[i]`` is the shard index of clip ``i`` (for ``stream``), ``videos[i]`` its video
    id (for ``one-per-video``).

    Example:
        >>> [b.tolist() for b in batch_order(5, 2, "shard")]
        [[0, 1], [2, 3], [4]]
        >>> sorted(np.concatenate(batch_order(5, 2, "shuffled", seed=1)).tolist())
        [0, 1, 2, 3, 4]
        >>> b = batch_order(4, 2, "one-per-video", videos=["a", "a", "b", "b"])
        >>> [sorted({"aabb"[i] for i in x}) for x in b]
        [['a', 'b'], ['a', 'b']]
        >>> batch_order(4, 2, "random")
        Traceback (most recent call last):
        ...
        ValueError: --order: unknown 'random'; choose from shuffled, stream, shard, one-per-video
    """
    if order not in ORDERS:
        raise ValueError(f"--order: unknown {order!r}; choose from {', '.join(ORDERS)}")
    if batch_size < 2:
        raise ValueError(f"batch_size must be >= 2 (in-batch negatives), got {batch_size}")
    rng = np.random.default_rng([seed, 7])
    if order == "one-per-video":
        if videos is None or len(videos) != n:
            raise ValueError("--order one-per-video needs the video id (video_id in KEY.json) "
                             "of every clip")
        return _one_per_video(videos, batch_size, rng)
    if order == "shard":
        seq = np.arange(n)
    elif order == "shuffled":
        seq = rng.permutation(n)
    else:
        if shards is None or len(shards) != n:
            raise ValueError("--order stream needs the shard of every clip")
        by_shard: dict[int, list[int]] = {}
        for i, s in enumerate(shards):
            by_shard.setdefault(int(s), []).append(i)
        names = sorted(by_shard)
        seq = np.array([i for s in rng.permutation(len(names)) for i in by_shard[names[s]]])
        if shuffle_buffer > 1:
            seq = np.array(_shuffle_buffer(seq, shuffle_buffer, rng))
    return [seq[s:s + batch_size] for s in range(0, n, batch_size)]


def same_video_pairs(batches: list[list[str]]) -> float:
    """Mean number of same-video (near-duplicate) negative pairs per batch, given the video
    id of every clip of each batch.

    Example:
        >>> same_video_pairs([["a", "a", "b"], ["c", "d"]])
        0.5
    """
    counts = []
    for videos in batches:
        _, c = np.unique(np.asarray(videos, dtype=str), return_counts=True)
        counts.append(float((c * (c - 1) // 2).sum()))
    return float(np.mean(counts)) if counts else 0.0
