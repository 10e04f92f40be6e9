"""Training batches from WebDataset shards: the data mixture of the config, per rank.

Wraps :func:`gradharmony.data.make_loader` (mixture sampling, DDP x worker sharding, skip
counting, exact resume) behind the trainer's ``stream(start_step)`` interface, and builds the
narration vocabulary from the training shards when the config names none.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from omegaconf import DictConfig


def shard_pattern(shards: str) -> str:
    """A directory means its ``*.tar`` files; anything else is a glob or brace pattern, or
    a URL (``https://``, ``pipe:``, ``s3://``, ...; brace-expanded, never globbed).

    Example:
        >>> shard_pattern("/tmp"), shard_pattern("a/train-{0..3}.tar")
        ('/tmp/*.tar', 'a/train-{0..3}.tar')
    """
    return os.path.join(shards, "*.tar") if os.path.isdir(shards) else shards


def build_vocab(cfg: DictConfig, out: str | Path) -> Path:
    """Build the vocabulary from the narrations of the text sets of the mixture into ``out``."""
    from gradharmony.data import TextTokenizer
    from gradharmony.data.narrations import narrations

    patterns = [shard_pattern(s.shards) for s in cfg.data.mixture if s.has_text]
    d = cfg.data
    texts = narrations(patterns, retries=d.retries, retry_backoff=d.retry_backoff) \
        if patterns else [""]
    tok = TextTokenizer.from_texts(texts)
    tok.save(out)
    return Path(out)


class ShardBatches:
    """This rank's share of the mixture, one batch dict per step, resumable.

    ``pop_skipped()`` returns the clips skipped (by reason) since the previous call;
    ``state_dict()`` / ``load_state_dict()`` carry the loader position in checkpoints.
    """

    def __init__(self, cfg: DictConfig, rank: int, world_size: int, vocab: str | Path | None):
        from gradharmony.data import ClipSpec, ShardSet, make_loader

        d = cfg.data
        sets = [ShardSet(shard_pattern(s.shards), weight=s.weight, text=s.has_text,
                         name=f"mixture[{i}]")
                for i, s in enumerate(d.mixture)]
        self.loader = make_loader(
            sets, ClipSpec.from_config(cfg), str(vocab) if vocab is not None else None,
            batch_size=cfg.batch_size // world_size, train=True, seed=cfg.seed, rank=rank,
            world_size=world_size, num_workers=d.num_workers, shuffle_buffer=d.shuffle_buffer,
            cache_dir=d.cache_dir, retries=d.retries, retry_backoff=d.retry_backoff)
        self._skipped: Counter = Counter()

    def stream(self, start_step: int) -> Iterator[dict]:
        # the position comes from load_state_dict(); start_step is implied by it
        for batch in self.loader:
            self._skipped.update(batch.pop("skipped", {}) or {})
            yield batch

    def pop_skipped(self) -> dict[str, int]:
        out, self._skipped = dict(self._skipped), Counter()
        return out

    def state_dict(self) -> dict:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.loader.load_state_dict(state)
