"""Clips per second of training batches: live decoding against the decoded-clip cache.

``python -m gradharmony.data.throughput SHARDS --vocab V --cache DIR`` prints, per number of
loader workers, the rate of live decoding, of building the cache and of reading from it.
"""

from __future__ import annotations

import json
import os

from gradharmony.data.cache import CacheSource, build_cache, cache_path
from gradharmony.data.clip import ClipSpec
from gradharmony.data.loader import make_loader
from gradharmony.data.sources import shard_sets


def throughput(sets, spec: ClipSpec, tokenizer, cache_dir: str | os.PathLike, *,
               clips: int = 256, batch_size: int = 64, num_workers: int = 0) -> dict:
    """Clips per second of training batches: live decoding, building the cache, the cache.

    Measured side by side in one call (the cache is built in ``cache_dir`` if missing).
    """
    import time

    def rate(**kw) -> float:
        loader = make_loader(sets, spec, tokenizer, batch_size=batch_size, train=True,
                             num_workers=num_workers, **kw)
        start, seen = time.perf_counter(), 0
        for batch in loader:
            seen += len(batch["key"])
            if seen >= clips:
                break
        return seen / (time.perf_counter() - start)

    live = rate()
    missing = [s for s in shard_sets(sets)
               if not (cache_path(s, spec, cache_dir) / "meta.json").is_file()]
    start = time.perf_counter()
    for s in missing:
        build_cache(s, spec, cache_dir, progress=False)
    build_s = time.perf_counter() - start
    n_rows = sum(CacheSource(s, spec, cache_path(s, spec, cache_dir)).size
                 for s in shard_sets(sets))
    cached = rate(cache_dir=cache_dir)
    return {"live_clips_per_s": live, "cache_clips_per_s": cached,
            "build_clips_per_s": n_rows / build_s if missing else None,
            "speedup": cached / live, "num_workers": num_workers}


def main(argv: list[str] | None = None) -> int:
    """``python -m gradharmony.data.throughput SHARDS --vocab V --cache DIR``: print throughput."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m gradharmony.data.throughput",
                                description="clips/s: live decoding vs the decoded-clip cache")
    p.add_argument("shards")
    p.add_argument("--vocab", required=True)
    p.add_argument("--cache", required=True)
    p.add_argument("--clips", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--spec", default="16,8,64,64,16000,2",
                   help="frames,fps,size,crop,audio_rate,clip_seconds")
    args = p.parse_args(argv)
    f = args.spec.split(",")
    spec = ClipSpec(int(f[0]), float(f[1]), int(f[2]), int(f[3]), int(f[4]), float(f[5]))
    import torch

    torch.set_num_threads(1)
    for w in args.workers:
        print(json.dumps(throughput(args.shards, spec, args.vocab, args.cache, clips=args.clips,
                                    batch_size=args.batch_size, num_workers=w)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
