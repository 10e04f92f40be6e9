"""The pre-training loop: forward, CMA losses, harmonized backward, Adam, logs, checkpoints.

One step on each rank:

1. ``out = model(batch)`` (bf16 autocast when ``precision=bf16``);
2. ``L_va = nce(video_va, audio_va)``, ``L_vt = mil_nce(video_vt, text_vt)`` with clips
   without an audio track masked out of ``L_va`` and clips without narration out of
   ``L_vt``; both are global-batch losses under DDP;
3. ``stats = harm.backward({"va": L_va, "vt": L_vt}, step)`` leaves the harmonized (and,
   under DDP, all-reduced) update in ``p.grad``;
4. ``optimizer.step()`` unless every group was dropped (then Adam's moments do not move) or
   the loss or a gradient is not finite (then the step is skipped, counted and logged; after
   ``max_nonfinite`` such steps in a row the run stops with :class:`NonFiniteError` and the
   last checkpoint, written before the streak, stays the last good one);
5. the learning-rate schedule advances once per step, skipped or not.

Every ``conflicts_every`` steps the per-group cosines are logged with the clip keys of the
(global) batch and the per-triplet losses ``l_va``, ``l_vt`` (``conflicts/*.npz``), so that
``gradharmony report`` can measure how well ``-cos`` and the loss detect misaligned triplets
over training without any extra pass.

A checkpoint holds everything a resumed run needs to continue bit-for-bit: model, optimizer,
scheduler, harmonizer state (the GradVac EMA), the RNG states of every rank and the data
position (the next step; batch streams are functions of the step).

The pieces: :func:`~gradharmony.train.state.build_state` sets up a
:class:`~gradharmony.train.state.TrainState` (fresh or from a checkpoint),
:func:`~gradharmony.train.step.train_step` runs steps 1-5 on it,
:class:`~gradharmony.train.metrics_window.MetricsWindow` averages the logged metrics and
:func:`~gradharmony.train.state.save_state` writes the checkpoint; :func:`pretrain` joins them
with the run directory.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from gradharmony.evaluate.run import build_model
from gradharmony.train.batches import to_device
from gradharmony.train.build import build_batches, resolve_model_kwargs
from gradharmony.train.checkpoint import latest_checkpoint, load_checkpoint
from gradharmony.train.config import ConfigError, run_path, validate
from gradharmony.train.distributed import DistContext, setup
from gradharmony.train.metrics_window import MetricsWindow
from gradharmony.train.rundir import RunLog, truncate_metrics
from gradharmony.train.state import TrainState, build_state, save_state
from gradharmony.train.step import (
    EMBEDDINGS,
    StepOutcome,
    cma_losses,
    per_triplet_losses,
    train_step,
)

__all__ = ["EMBEDDINGS", "NonFiniteError", "build_batches", "build_model", "cma_losses",
           "per_triplet_losses", "pretrain", "resolve_model_kwargs"]


class NonFiniteError(RuntimeError):
    """Raised when ``max_nonfinite`` steps in a row had a non-finite loss or gradient."""


def _prepare_run_dir(cfg: DictConfig, ctx: DistContext) -> tuple[DictConfig, dict | None, Path]:
    rdir = run_path(cfg)
    ckpt_path = latest_checkpoint(rdir / "checkpoints")
    if ckpt_path is not None and not cfg.resume:
        raise ConfigError(f"resume: {rdir} already holds a run (checkpoints/last.pt); pass "
                          f"resume=true to continue it or choose another name=")
    ckpt = load_checkpoint(ckpt_path) if (ckpt_path is not None and cfg.resume) else None
    vocab = rdir / "vocab.json"
    if ctx.is_main:
        (rdir / "checkpoints").mkdir(parents=True, exist_ok=True)
        if cfg.data.vocab is not None:
            shutil.copyfile(cfg.data.vocab, vocab)
        elif cfg.data.kind == "shards" and not (ckpt is not None and vocab.is_file()):
            from gradharmony.train.shards import build_vocab

            build_vocab(cfg, vocab)
        if ckpt is not None:
            truncate_metrics(rdir, ckpt["step"])
    if ctx.distributed:
        dist.barrier()
    vocab_size = None
    if cfg.data.kind == "shards":
        from gradharmony.data import TextTokenizer

        vocab_size = TextTokenizer.load(vocab).vocab_size
    cfg = resolve_model_kwargs(cfg, vocab_size)
    if ctx.is_main:
        OmegaConf.save(cfg, rdir / "config.yaml", resolve=True)
    return cfg, ckpt, vocab if cfg.data.kind == "shards" else None


def _summary_line(values: dict) -> str:
    return "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in values.items())


def _gather_list(values, ctx: DistContext) -> list:
    """A per-clip list of the global batch (clip keys, mixture sets), in the rows of the
    gathered per-triplet losses."""
    values = list(values)
    if not ctx.distributed:
        return values
    parts: list = [None] * ctx.world_size
    dist.all_gather_object(parts, values)
    return [k for part in parts for k in part]


def _count_skipped_data(state: TrainState) -> None:
    for reason, n in (getattr(state.batches, "pop_skipped", dict)() or {}).items():
        state.counts[f"skipped_data/{reason}"] += n


def _every(step_next: int, every: int, cfg: DictConfig) -> bool:
    """A periodic event (every ``every`` steps, and at the end) is due after this step."""
    return step_next % every == 0 or step_next == cfg.steps


def _record(state: TrainState, outcome: StepOutcome, batch: dict, step: int,
            log: RunLog | None, window: MetricsWindow) -> dict | None:
    """Add a finite step to the window, log its conflicts; return a metrics row when due."""
    cfg, stats = state.cfg, outcome.stats
    window.add(loss=outcome.loss, loss_va=outcome.losses["va"], loss_vt=outcome.losses["vt"],
               cos=outcome.cos, kept=stats.kept.detach().float().cpu().numpy(),
               projected=stats.projected.detach().float().cpu().numpy(),
               clips=int(batch["video"].shape[0]) * state.ctx.world_size)
    if cfg.conflicts_every and step % cfg.conflicts_every == 0:
        keys = _gather_list(map(str, batch["key"]), state.ctx) if "key" in batch else None
        sets = _gather_list(batch["set"], state.ctx) if "set" in batch else None
        if log is not None:
            log.conflicts(step, outcome.cos, keys=keys, loss_va=outcome.per_triplet["va"],
                          loss_vt=outcome.per_triplet["vt"], sets=sets)
    if not _every(step + 1, cfg.log_every, cfg):
        return None
    row = window.row(lr=outcome.lr, gamma=stats.gamma, counts=state.counts)
    if log is not None:
        log.metrics(step, row)
    return row


def _nonfinite(state: TrainState, outcome: StepOutcome, step: int, log: RunLog | None) -> None:
    """Log a skipped non-finite step; stop the run after ``max_nonfinite`` in a row."""
    cfg = state.cfg
    if log is not None:
        log.metrics(step, {"nonfinite": 1, "loss": outcome.loss,
                           "skipped_nonfinite": state.counts["skipped_nonfinite"]})
    if state.nonfinite_streak >= cfg.max_nonfinite:
        raise NonFiniteError(
            f"{state.nonfinite_streak} steps in a row (max_nonfinite={cfg.max_nonfinite}) had "
            f"a non-finite loss or gradient, last at step {step}; stopping. The last good "
            f"checkpoint is {run_path(cfg) / 'checkpoints' / 'last.pt'}.")


def _checkpoint_due(step_next: int, cfg: DictConfig) -> bool:
    return (_every(step_next, cfg.ckpt_every, cfg)
            or bool(cfg.keep_every and step_next % cfg.keep_every == 0))


def pretrain(cfg: DictConfig, batches=None, progress: bool = True) -> dict:
    """Run (or resume) one pre-training run; return the summary written at the end.

    ``batches`` overrides the data of ``cfg.data`` with any object with ``stream(start)``.
    """
    ctx = setup(cfg.device)
    validate(cfg, world_size=ctx.world_size)
    cfg, ckpt, vocab = _prepare_run_dir(cfg, ctx)
    state = build_state(cfg, ctx, ckpt, vocab=vocab, batches=batches)
    start = state.step
    log = RunLog(run_path(cfg), tensorboard=True) if ctx.is_main else None
    window, last, t_start, clips = MetricsWindow(), {}, time.perf_counter(), 0
    bar = tqdm(total=cfg.steps, initial=start, disable=not (progress and ctx.is_main),
               desc=f"pretrain {cfg.name}", dynamic_ncols=True, file=sys.stderr)
    stream = state.batches.stream(start)
    try:
        while state.step < cfg.steps:
            step, batch = state.step, to_device(next(stream), ctx.device)
            _count_skipped_data(state)
            outcome = train_step(state, batch)
            if not outcome.finite:
                _nonfinite(state, outcome, step, log)
                bar.update(1)
                continue
            clips += int(batch["video"].shape[0]) * ctx.world_size
            row = _record(state, outcome, batch, step, log, window)
            if row is not None:
                last = row
                bar.set_postfix(loss=f"{row['loss']:.3f}", cos=f"{row['cos_mean']:+.3f}",
                                kept=f"{row['kept_frac']:.2f}",
                                clips_s=f"{row['clips_per_s']:.0f}")
            bar.update(1)
            if _checkpoint_due(state.step, cfg):
                save_state(state, log)
    except BaseException:
        if log is not None:
            log.drop_buffer()  # steps after the last checkpoint are redone on resume
        raise
    finally:
        bar.close()
        if log is not None:
            log.close()
    return _summary(cfg, start, time.perf_counter() - t_start, clips, last, state, progress)


def _summary(cfg: DictConfig, start: int, wall: float, clips: int, last: dict,
             state: TrainState, progress: bool) -> dict:
    summary = {"run_dir": str(run_path(cfg)), "steps": cfg.steps, "resumed_from": start,
               "wall_s": wall, "clips_per_s": clips / max(wall, 1e-9),
               **{k: v for k, v in last.items() if k in ("loss", "loss_va", "loss_vt",
                                                         "cos_mean", "kept_frac")},
               **{k: int(v) for k, v in state.counts.items()}}
    if state.ctx.is_main and progress:
        print(f"done: {_summary_line(summary)}", file=sys.stderr)
    return summary
