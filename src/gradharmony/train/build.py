"""What a training config builds: the model (with its data-derived input sizes) and the batches.
"""

from __future__ import annotations

import copy
import importlib
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from gradharmony.train.batches import RandomTriplets
from gradharmony.train.distributed import DistContext


def model_overrides(cfg: DictConfig, vocab_size: int) -> dict:
    """Fields of the VATT config that follow from the data: input sizes and the vocabulary.

    Example:
        >>> from gradharmony.train.config import load_config
        >>> o = model_overrides(load_config(overrides=["data.kind=random"]), vocab_size=50)
        >>> o["video_size"], o["audio_rate"], o["vocab_size"]
        (64, 16000, 50)
    """
    d = cfg.data
    return {"video_frames": d.frames, "video_size": d.crop, "audio_seconds": d.clip_seconds,
            "audio_rate": d.audio_rate, "max_words": d.text_len,
            "num_candidates": d.candidates, "vocab_size": vocab_size,
            "grad_checkpointing": cfg.grad_checkpointing}


def build_model(cfg: DictConfig, vocab_size: int | None = None) -> torch.nn.Module:
    """The model named by ``cfg.model.preset``.

    A preset name goes to ``gradharmony.models.create_model`` with the input sizes of
    ``cfg.data`` (:func:`model_overrides`); ``"package.module:function"`` calls that function
    instead (your own model, following the model output contract of docs/architecture.md).
    ``cfg.model.kwargs`` are passed in both cases and win over the data-derived sizes.

    Example:
        >>> from gradharmony.train.config import load_config
        >>> cfg = load_config(overrides=["data.kind=random", "model.preset=torch.nn:Identity"])
        >>> type(build_model(cfg)).__name__
        'Identity'
    """
    kwargs = dict(OmegaConf.to_container(cfg.model.kwargs, resolve=True))
    preset = cfg.model.preset
    if ":" in preset:
        module, func = preset.split(":", 1)
        factory = getattr(importlib.import_module(module), func)
        return factory(modality_agnostic=cfg.model.modality_agnostic, **kwargs)
    from gradharmony.models import create_model

    sizes = model_overrides(cfg, vocab_size or cfg.data.vocab_size)
    return create_model(preset, modality_agnostic=cfg.model.modality_agnostic,
                        **{**sizes, **kwargs})


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
        out.model.kwargs = {**model_overrides(cfg, vocab_size or cfg.data.vocab_size),
                            **kwargs}
    return out
