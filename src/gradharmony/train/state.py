"""Everything a pre-training run carries from one step to the next, built in one place.

:func:`build_state` seeds the run, builds the model, the harmonizer, Adam, the learning-rate
schedule and the batch stream from the config and, when resuming, restores them from a
checkpoint. :func:`save_state` writes the checkpoint that restores them: model, optimizer,
scheduler, harmonizer state (the GradVac EMA), the RNG states of every rank and the data
position (the next step; batch streams are functions of the step).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf

from gradharmony.evaluate.run import build_model
from gradharmony.harmonize import Harmonizer
from gradharmony.train.build import build_batches
from gradharmony.train.checkpoint import rng_state, save_checkpoint, set_rng_state
from gradharmony.train.config import ConfigError, parse_granularity, run_path
from gradharmony.train.distributed import DistContext
from gradharmony.train.schedule import make_scheduler


@dataclass
class TrainState:
    """The model, its optimizer and schedule, the harmonizer, the batches and the counters.

    ``step`` is the next step to run; ``counts`` the skipped-step counters written to the
    metrics; ``nonfinite_streak`` the number of non-finite steps in a row just before ``step``.
    """

    cfg: DictConfig
    ctx: DistContext
    model: torch.nn.Module
    forward: Callable[[dict], dict]
    harmonizer: Harmonizer
    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: Any
    batches: Any = None
    step: int = 0
    counts: Counter = field(default_factory=Counter)
    nonfinite_streak: int = 0

    def autocast(self) -> AbstractContextManager:
        """The forward's precision context (bf16 autocast when ``precision=bf16``)."""
        if self.cfg.precision == "bf16":
            return torch.autocast(self.ctx.device.type, dtype=torch.bfloat16)
        return nullcontext()

    @property
    def cos_is_global(self) -> bool:
        """The group cosines are of the global batch already (``granularity=batch``)."""
        return parse_granularity(self.cfg.granularity) == "batch"


def _model_on_device(cfg: DictConfig, ctx: DistContext) -> torch.nn.Module:
    model = build_model(cfg)
    if ctx.distributed and cfg.model.sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(ctx.device).train()
    if cfg.grad_checkpointing and ":" in cfg.model.preset:
        if not hasattr(model, "set_grad_checkpointing"):
            raise ConfigError("grad_checkpointing: the model has no set_grad_checkpointing()")
        model.set_grad_checkpointing(True)
    return model


def make_harmonizer(cfg: DictConfig, model: torch.nn.Module) -> Harmonizer:
    """The :class:`~gradharmony.harmonize.Harmonizer` of ``model`` the config asks for
    (``method``, ``granularity``, the gamma schedule over ``steps``, ``seed``).

    Example:
        >>> from gradharmony.train.config import load_config
        >>> cfg = load_config(overrides=["data.kind=random", "method=gr", "granularity=sample"])
        >>> harm = make_harmonizer(cfg, torch.nn.Sequential(torch.nn.Linear(2, 2)))
        >>> harm.method, harm.granularity
        ('gr', 'sample')
    """
    return Harmonizer(model, method=cfg.method, granularity=parse_granularity(cfg.granularity),
                      gamma=(cfg.gamma0, cfg.gamma_end), total_steps=cfg.steps, seed=cfg.seed)


def _restore(state: TrainState, ckpt: dict) -> None:
    state.model.load_state_dict(ckpt["model"])
    state.optimizer.load_state_dict(ckpt["optimizer"])
    state.scheduler.load_state_dict(ckpt["scheduler"])
    if ckpt.get("harmonizer") is not None:
        state.harmonizer.load_state_dict(ckpt["harmonizer"])
    state.counts.update(ckpt.get("counts", {}))
    state.step = int(ckpt["step"])
    set_rng_state(ckpt["rng"][state.ctx.rank])


def _seed_rank(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)  # noqa: NPY002
    random.seed(seed)


def build_state(cfg: DictConfig, ctx: DistContext, ckpt: dict | None = None, *,
                vocab=None, batches=None) -> TrainState:
    """The state of a fresh run (``ckpt`` None) or of the run ``ckpt`` was saved from.

    The model is initialised from ``cfg.seed``; the ranks then draw from ``cfg.seed + rank``
    (or from the RNG states of the checkpoint). ``batches`` (any object with
    ``stream(start)``) replaces the stream :func:`~gradharmony.train.build.build_batches`
    makes from ``cfg.data`` (``vocab``: the narration vocabulary of shard data).

    Example:
        >>> from gradharmony.train.config import load_config
        >>> from gradharmony.train.distributed import setup
        >>> cfg = load_config(overrides=["data.kind=random", "model.kwargs={depth: 1}"])
        >>> state = build_state(cfg, setup("cpu"))
        >>> state.step, type(state.model).__name__, type(state.optimizer).__name__
        (0, 'VATT', 'Adam')
    """
    torch.manual_seed(cfg.seed)
    model = _model_on_device(cfg, ctx)
    harmonizer = make_harmonizer(cfg, model)
    params = [p for p in model.parameters() if p.requires_grad]
    o = cfg.optim
    optimizer = torch.optim.Adam(params, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps,
                                 weight_decay=o.weight_decay)
    scheduler = make_scheduler(optimizer, o.lr, o.min_lr, o.warmup_steps, cfg.steps)
    state = TrainState(cfg, ctx, model, torch.compile(model) if cfg.compile else model,
                       harmonizer, params, optimizer, scheduler)
    if ckpt is not None:
        _restore(state, ckpt)
    else:
        _seed_rank(cfg.seed + ctx.rank)
    state.batches = batches if batches is not None else build_batches(cfg, ctx, vocab)
    if ckpt is not None and hasattr(state.batches, "load_state_dict"):
        state.batches.load_state_dict(ckpt["data"]["ranks"][ctx.rank])
    return state


def save_state(state: TrainState, log=None) -> None:
    """Write the checkpoint of ``state`` into its run directory (``checkpoints/last.pt``, and a
    kept ``step_XXXXXXXX.pt`` every ``keep_every`` steps).

    A collective under DDP: every rank calls it; the main rank flushes ``log`` (the run's
    :class:`~gradharmony.train.rundir.RunLog`) and writes the file.
    """
    ctx, cfg, batches = state.ctx, state.cfg, state.batches
    mine = (rng_state(), batches.state_dict() if hasattr(batches, "state_dict") else None)
    per_rank = [mine]
    if ctx.distributed:
        per_rank = [None] * ctx.world_size
        dist.all_gather_object(per_rank, mine)
    if not ctx.is_main:
        return
    if log is not None:
        log.flush()
    ckpt = {"step": state.step, "model": state.model.state_dict(),
            "optimizer": state.optimizer.state_dict(), "scheduler": state.scheduler.state_dict(),
            "harmonizer": state.harmonizer.state_dict(),
            "rng": [r for r, _ in per_rank], "counts": dict(state.counts),
            "data": {"step": state.step, "ranks": [d for _, d in per_rank]},
            "config": OmegaConf.to_container(cfg, resolve=True)}
    keep = bool(cfg.keep_every) and state.step % cfg.keep_every == 0
    save_checkpoint(ckpt, run_path(cfg) / "checkpoints", keep=keep)
