"""What a training config builds besides the model: the batches, and the saved config's
model sizes.

The model itself is :func:`gradharmony.evaluate.run.build_model`, the one definition training
and evaluation share.
"""

from __future__ import annotations

import copy
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from gradharmony.evaluate.run import model_sizes
from gradharmony.train.batches import RandomTriplets
from gradharmony.train.distributed import DistContext


def build_batches(cfg: DictConfig, ctx: DistContext, vocab: Path | None = None):
    """This rank's batch stream (an object with ``stream(start_step)``).

    Example:
        >>> from gradharmony.train.config import load_config
        >>> from gradharmony.train.distributed import setup
        >>> cfg = load_config(overrides=["data.kind=random", "batch_size=2"])
        >>> batch = next(build_batches(cfg, setup("cpu")).stream(0))
        >>> tuple(batch["video"].shape)
        (2, 16, 64, 64, 3)
    """
    d = cfg.data
    if d.kind == "random":
        return RandomTriplets(
            batch_size=cfg.batch_size, frames=d.frames, size=d.crop,
            audio_samples=int(round(d.clip_seconds * d.audio_rate)), text_len=d.text_len,
            candidates=d.candidates, vocab_size=d.vocab_size, seed=cfg.seed, rank=ctx.rank,
            world_size=ctx.world_size)
    from gradharmony.train.shards import ShardBatches

    return ShardBatches(cfg, ctx.rank, ctx.world_size, vocab)


def resolve_model_kwargs(cfg: DictConfig, vocab_size: int | None) -> DictConfig:
    """A copy of ``cfg`` whose ``model.kwargs`` spell out the data-derived VATT sizes.

    The run's ``config.yaml`` is then self-describing: ``create_model(preset, **kwargs)``
    rebuilds the trained model without knowing how the trainer derives sizes from the data.

    Example:
        >>> from gradharmony.train.config import load_config
        >>> cfg = resolve_model_kwargs(load_config(overrides=["data.kind=random"]), 50)
        >>> cfg.model.kwargs.vocab_size, cfg.model.kwargs.video_size
        (50, 64)
    """
    out = copy.deepcopy(cfg)
    if ":" not in cfg.model.preset:
        kwargs = OmegaConf.to_container(cfg.model.kwargs, resolve=True)
        out.model.kwargs = {**model_sizes(cfg, vocab_size), **kwargs}
    return out
