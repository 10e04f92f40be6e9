"""Per-rank batch streams for the trainer, resumable from any step.

The trainer asks for ``stream(start_step)`` and gets this rank's batch dicts
(docs/architecture.md) for steps ``start_step, start_step + 1, ...``. Under DDP the global
batch of a step is split by rank: rank r gets rows ``[r·b, (r+1)·b)`` with b the per-rank
batch, so N processes see exactly the global batch one process would.

``RandomTriplets`` is a batch of random tensors shaped like real data, a pure function of
(seed, step): for throughput measurements and smoke tests without I/O.

Example:
    >>> src = RandomTriplets(batch_size=4, frames=4, size=16, audio_samples=256, text_len=5,
    ...                      candidates=2, vocab_size=50, seed=0)
    >>> b = next(src.stream(start_step=0))
    >>> tuple(b["video"].shape), tuple(b["text"].shape), b["has_text"].all().item()
    ((4, 4, 16, 16, 3), (4, 2, 5), True)
    >>> half = RandomTriplets(batch_size=4, frames=4, size=16, audio_samples=256, text_len=5,
    ...                       candidates=2, vocab_size=50, seed=0, rank=1, world_size=2)
    >>> torch.equal(next(half.stream(0))["audio"], b["audio"][2:])
    True
"""

from __future__ import annotations

from collections.abc import Iterator

import torch


class RandomTriplets:
    """Random video/audio/text batches; the batch of step t depends on (seed, t) only."""

    def __init__(self, batch_size: int, frames: int, size: int, audio_samples: int,
                 text_len: int, candidates: int, vocab_size: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1, text_fraction: float = 1.0):
        if batch_size % world_size:
            raise ValueError(f"batch_size {batch_size} is not divisible by world_size "
                             f"{world_size}")
        self.b, self.frames, self.size = batch_size, frames, size
        self.samples, self.text_len, self.k, self.vocab = audio_samples, text_len, candidates, \
            vocab_size
        self.seed, self.rank, self.world, self.text_fraction = seed, rank, world_size, \
            text_fraction

    def batch(self, step: int) -> dict:
        """This rank's slice of the global batch of ``step``."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        B, k, L = self.b, self.k, self.text_len
        video = torch.rand(B, self.frames, self.size, self.size, 3, generator=g)
        audio = torch.rand(B, self.samples, generator=g) * 2 - 1
        lengths = torch.randint(1, L + 1, (B, k), generator=g)
        text_mask = torch.arange(L).expand(B, k, L) < lengths[..., None]
        text = torch.randint(1, self.vocab, (B, k, L), generator=g) * text_mask
        has_text = torch.rand(B, generator=g) < self.text_fraction
        full = {"video": video, "audio": audio, "text": text, "text_mask": text_mask,
                "candidate_mask": torch.ones(B, k, dtype=torch.bool), "has_text": has_text,
                "has_audio": torch.ones(B, dtype=torch.bool),
                "label": torch.full((B,), -1, dtype=torch.long)}
        per = B // self.world
        rows = slice(self.rank * per, (self.rank + 1) * per)
        out = {key: v[rows] for key, v in full.items()}
        out["key"] = [f"random-{step}-{i}" for i in range(rows.start, rows.stop)]
        out["meta"] = [{} for _ in range(per)]
        return out

    def stream(self, start_step: int) -> Iterator[dict]:
        step = start_step
        while True:
            yield self.batch(step)
            step += 1


def to_device(batch: dict, device: torch.device) -> dict:
    """Move the tensors of a batch dict to ``device`` (lists stay as they are).

    Example:
        >>> to_device({"a": torch.zeros(1), "key": ["x"]}, torch.device("cpu"))["key"]
        ['x']
    """
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v
            for k, v in batch.items()}
