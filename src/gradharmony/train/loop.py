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
"""

from __future__ import annotations

import copy
import importlib
import shutil
import sys
import time
import warnings
from collections import Counter
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from gradharmony.train.batches import RandomTriplets, to_device
from gradharmony.train.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from gradharmony.train.config import ConfigError, parse_granularity, run_path, validate
from gradharmony.train.distributed import DistContext, all_sum, setup
from gradharmony.train.rundir import RunLog, truncate_metrics
from gradharmony.train.schedule import make_scheduler

EMBEDDINGS = ("video_va", "audio_va", "video_vt", "text_vt")


class NonFiniteError(RuntimeError):
    """Raised when ``max_nonfinite`` steps in a row had a non-finite loss or gradient."""


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
    """This rank's batch stream (an object with ``stream(start_step)``)."""
    d = cfg.data
    if d.kind == "random":
        return RandomTriplets(
            batch_size=cfg.batch_size, frames=d.frames, size=d.crop,
            audio_samples=int(round(d.clip_seconds * d.audio_rate)), text_len=d.text_len,
            candidates=d.candidates, vocab_size=d.vocab_size, seed=cfg.seed, rank=ctx.rank,
            world_size=ctx.world_size)
    from gradharmony.train.shards import ShardBatches

    return ShardBatches(cfg, ctx.rank, ctx.world_size, vocab)


def _masked_mean(per_triplet: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    # the losses' own reduction="mean": the sum over valid anchors divided by their number
    return per_triplet.sum() / valid.sum().clamp(min=1)


def per_triplet_losses(out: dict, batch: dict, temperature: float
                       ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``({"va": L_va, "vt": L_vt}, {"va": l_va, "vt": l_vt})``: the two cross-modal alignment
    losses and their per-triplet terms (``reduction="none"``; the global batch under DDP).

    Clips without a usable audio track (``has_audio`` False) are masked out of ``L_va``, clips
    without narration (``has_text`` False) out of ``L_vt``: they are neither anchors nor
    negatives of that loss, and their per-triplet term is 0.
    """
    from gradharmony.losses import gather_with_grad, mil_nce, nce

    has_audio = batch.get("has_audio")
    if has_audio is None:
        has_audio = torch.ones(out["video_va"].shape[0], dtype=torch.bool,
                               device=out["video_va"].device)
    has_audio = has_audio.to(torch.bool)
    l_va = nce(out["video_va"].float(), out["audio_va"].float(), temperature=temperature,
               sample_mask=has_audio, reduction="none")
    l_vt = mil_nce(out["video_vt"].float(), out["text_vt"].float(), temperature=temperature,
                   candidate_mask=batch["candidate_mask"], sample_mask=batch["has_text"],
                   reduction="none")
    valid_va = gather_with_grad(has_audio)
    valid_vt = gather_with_grad(batch["has_text"].to(torch.bool)
                                & batch["candidate_mask"].any(dim=1))
    losses = {"va": _masked_mean(l_va, valid_va), "vt": _masked_mean(l_vt, valid_vt)}
    return losses, {"va": l_va, "vt": l_vt}


def cma_losses(out: dict, batch: dict, temperature: float) -> dict[str, torch.Tensor]:
    """The two cross-modal alignment losses of a model output: ``{"va": L_va, "vt": L_vt}``
    (``L_va`` over clips with audio, ``L_vt`` over clips with narration; see
    :func:`per_triplet_losses`)."""
    return per_triplet_losses(out, batch, temperature)[0]


def _advance(scheduler) -> None:
    # the schedule follows steps, not optimizer updates: skipped steps advance it too
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
        scheduler.step()


def _agree(ok: bool, ctx: DistContext) -> bool:
    """True only when ``ok`` holds on every rank."""
    return all_sum(float(not ok), ctx.device) == 0 if ctx.distributed else ok


def _grads_finite(params: list[torch.nn.Parameter]) -> bool:
    sums = [p.grad.detach().float().sum() for p in params if p.grad is not None]
    return not sums or bool(torch.isfinite(torch.stack(sums).sum()))


def _gather_cos(cos: torch.Tensor, ctx: DistContext, per_group_global: bool) -> np.ndarray:
    cos = cos.detach().float().reshape(-1)
    if ctx.distributed and not per_group_global:
        parts = [torch.empty_like(cos) for _ in range(ctx.world_size)]
        dist.all_gather(parts, cos.contiguous())
        cos = torch.cat(parts)
    return cos.cpu().numpy()


def _gather_keys(keys: list[str], ctx: DistContext) -> list[str]:
    """The clip keys of the global batch, in the rows of the gathered per-triplet losses."""
    keys = [str(k) for k in keys]
    if not ctx.distributed:
        return keys
    parts: list = [None] * ctx.world_size
    dist.all_gather_object(parts, keys)
    return [k for part in parts for k in part]


def resolve_model_kwargs(cfg: DictConfig, vocab_size: int | None) -> DictConfig:
    """A copy of ``cfg`` whose ``model.kwargs`` spell out the data-derived VATT sizes.

    The run's ``config.yaml`` is then self-describing: ``create_model(preset, **kwargs)``
    rebuilds the trained model without knowing how the trainer derives sizes from the data.
    """
    out = copy.deepcopy(cfg)
    if ":" not in cfg.model.preset:
        kwargs = OmegaConf.to_container(cfg.model.kwargs, resolve=True)
        out.model.kwargs = {**model_overrides(cfg, vocab_size or cfg.data.vocab_size),
                            **kwargs}
    return out


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


def _make_harmonizer(cfg: DictConfig, model: torch.nn.Module):
    from gradharmony.harmonize import Harmonizer

    return Harmonizer(model, method=cfg.method, granularity=parse_granularity(cfg.granularity),
                      gamma=(cfg.gamma0, cfg.gamma_end), total_steps=cfg.steps, seed=cfg.seed)


def _summary_line(values: dict) -> str:
    return "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in values.items())


def pretrain(cfg: DictConfig, batches=None, progress: bool = True) -> dict:
    """Run (or resume) one pre-training run; return the summary written at the end.

    ``batches`` overrides the data of ``cfg.data`` with any object with ``stream(start)``.
    """
    ctx = setup(cfg.device)
    validate(cfg, world_size=ctx.world_size)
    cfg, ckpt, vocab = _prepare_run_dir(cfg, ctx)
    rdir = run_path(cfg)

    torch.manual_seed(cfg.seed)
    model = build_model(cfg)
    if ctx.distributed and cfg.model.sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(ctx.device).train()
    if cfg.grad_checkpointing and ":" in cfg.model.preset:
        if not hasattr(model, "set_grad_checkpointing"):
            raise ConfigError("grad_checkpointing: the model has no set_grad_checkpointing()")
        model.set_grad_checkpointing(True)
    forward = model
    if cfg.compile:
        forward = torch.compile(model)
    harm = _make_harmonizer(cfg, model)
    params = [p for p in model.parameters() if p.requires_grad]
    o = cfg.optim
    optimizer = torch.optim.Adam(params, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps,
                                 weight_decay=o.weight_decay)
    scheduler = make_scheduler(optimizer, o.lr, o.min_lr, o.warmup_steps, cfg.steps)
    counts: Counter = Counter()

    start = 0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("harmonizer") is not None and hasattr(harm, "load_state_dict"):
            harm.load_state_dict(ckpt["harmonizer"])
        counts.update(ckpt.get("counts", {}))
        start = int(ckpt["step"])
        set_rng_state(ckpt["rng"][ctx.rank])
    else:
        torch.manual_seed(cfg.seed + ctx.rank)
        np.random.seed(cfg.seed + ctx.rank)  # noqa: NPY002
        import random

        random.seed(cfg.seed + ctx.rank)

    if batches is None:
        batches = build_batches(cfg, ctx, vocab)
    if ckpt is not None and hasattr(batches, "load_state_dict"):
        batches.load_state_dict(ckpt["data"]["ranks"][ctx.rank])
    log = RunLog(rdir, tensorboard=True) if ctx.is_main else None
    autocast = (torch.autocast(ctx.device.type, dtype=torch.bfloat16)
                if cfg.precision == "bf16" else nullcontext())
    batch_global = parse_granularity(cfg.granularity) == "batch"

    def save(step_next: int) -> None:
        mine = (rng_state(), batches.state_dict() if hasattr(batches, "state_dict") else None)
        per_rank = [mine]
        if ctx.distributed:
            per_rank = [None] * ctx.world_size
            dist.all_gather_object(per_rank, mine)
        if ctx.is_main:
            log.flush()
            state = {"step": step_next, "model": model.state_dict(),
                     "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                     "harmonizer": harm.state_dict() if hasattr(harm, "state_dict") else None,
                     "rng": [r for r, _ in per_rank], "counts": dict(counts),
                     "data": {"step": step_next, "ranks": [d for _, d in per_rank]},
                     "config": OmegaConf.to_container(cfg, resolve=True)}
            keep = bool(cfg.keep_every) and step_next % cfg.keep_every == 0
            save_checkpoint(state, rdir / "checkpoints", keep=keep)

    window: dict = {"cos": [], "kept": 0.0, "proj": 0.0, "groups": 0, "clips": 0,
                    "t0": time.perf_counter(), "loss": [], "va": [], "vt": []}
    streak = 0
    bar = tqdm(total=cfg.steps, initial=start, disable=not (progress and ctx.is_main),
               desc=f"pretrain {cfg.name}", dynamic_ncols=True, file=sys.stderr)
    stream = batches.stream(start)
    t_start, clips_total = time.perf_counter(), 0
    last: dict = {}
    try:
        for step in range(start, cfg.steps):
            batch = to_device(next(stream), ctx.device)
            for reason, n in (getattr(batches, "pop_skipped", dict)() or {}).items():
                counts[f"skipped_data/{reason}"] += n
            optimizer.zero_grad(set_to_none=True)
            with autocast:
                out = forward(batch)
            # every rank takes the same branch: the losses and harm.backward are collectives
            finite = _agree(all(bool(torch.isfinite(out[k]).all()) for k in EMBEDDINGS), ctx)
            losses, per = per_triplet_losses(out, batch, cfg.model.temperature) if finite \
                else ({}, {})
            del out  # the graph goes with the losses below, before the next forward
            total = (losses["va"].detach() + losses["vt"].detach()) if finite else \
                torch.tensor(float("nan"))
            values = {k: float(v.detach()) for k, v in losses.items()}
            finite = _agree(finite and bool(torch.isfinite(total)), ctx)
            stats = None
            if finite:
                stats = harm.backward(losses, step=step, batch_size=len(batch["video"]))
                finite = _agree(_grads_finite(params), ctx)
            del losses
            per = {k: v.detach().float().cpu().numpy() for k, v in per.items()}
            if not finite:
                optimizer.zero_grad(set_to_none=True)
                counts["skipped_nonfinite"] += 1
                streak += 1
                if log is not None:
                    log.metrics(step, {"nonfinite": 1, "loss": float(total),
                                       "skipped_nonfinite": counts["skipped_nonfinite"]})
                if streak >= cfg.max_nonfinite:
                    raise NonFiniteError(
                        f"{streak} steps in a row (max_nonfinite={cfg.max_nonfinite}) had a "
                        f"non-finite loss or gradient, last at step {step}; stopping. The last "
                        f"good checkpoint is {rdir / 'checkpoints' / 'last.pt'}.")
                _advance(scheduler)
                bar.update(1)
                continue
            streak = 0
            all_dropped = bool(getattr(stats, "all_dropped", False))
            if all_dropped:
                counts["skipped_all_dropped"] += 1
                optimizer.zero_grad(set_to_none=True)
            else:
                optimizer.step()
            lr = scheduler.get_last_lr()[0]
            _advance(scheduler)

            n_clips = int(batch["video"].shape[0]) * ctx.world_size
            clips_total += n_clips
            cos = _gather_cos(stats.cos, ctx, batch_global)
            kept = stats.kept.detach().float()
            proj = stats.projected.detach().float()
            window["cos"].append(cos)
            window["kept"] += float(kept.sum())
            window["proj"] += float(proj.sum())
            window["groups"] += kept.numel()
            window["clips"] += n_clips
            window["loss"].append(float(total))
            window["va"].append(values["va"])
            window["vt"].append(values["vt"])
            if cfg.conflicts_every and step % cfg.conflicts_every == 0:
                keys = _gather_keys(batch["key"], ctx) if "key" in batch else None
                if log is not None:
                    log.conflicts(step, cos, keys=keys, loss_va=per["va"], loss_vt=per["vt"])

            if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
                elapsed = time.perf_counter() - window["t0"]
                allc = np.concatenate(window["cos"])
                pct = np.percentile(allc, [5, 25, 50, 75, 95])
                last = {"loss": float(np.mean(window["loss"])),
                        "loss_va": float(np.mean(window["va"])),
                        "loss_vt": float(np.mean(window["vt"])),
                        "lr": float(lr), "gamma": float(stats.gamma),
                        "cos_mean": float(allc.mean()),
                        **{f"cos_p{q}": float(v) for q, v in zip((5, 25, 50, 75, 95), pct)},
                        "kept_frac": window["kept"] / max(1, window["groups"]),
                        "projected_frac": window["proj"] / max(1, window["groups"]),
                        "clips_per_s": window["clips"] / max(elapsed, 1e-9),
                        **{k: int(v) for k, v in counts.items()}}
                if log is not None:
                    log.metrics(step, last)
                bar.set_postfix(loss=f"{last['loss']:.3f}", cos=f"{last['cos_mean']:+.3f}",
                                kept=f"{last['kept_frac']:.2f}",
                                clips_s=f"{last['clips_per_s']:.0f}")
                window.update(cos=[], kept=0.0, proj=0.0, groups=0, clips=0, loss=[], va=[],
                              vt=[], t0=time.perf_counter())
            bar.update(1)
            if ((step + 1) % cfg.ckpt_every == 0 or step + 1 == cfg.steps
                    or (cfg.keep_every and (step + 1) % cfg.keep_every == 0)):
                save(step + 1)
    except BaseException:
        if log is not None:
            log.drop_buffer()  # steps after the last checkpoint are redone on resume
        raise
    finally:
        bar.close()
        if log is not None:
            log.close()

    wall = time.perf_counter() - t_start
    summary = {"run_dir": str(rdir), "steps": cfg.steps, "resumed_from": start,
               "wall_s": wall, "clips_per_s": clips_total / max(wall, 1e-9),
               **{k: v for k, v in last.items() if k in ("loss", "loss_va", "loss_vt",
                                                         "cos_mean", "kept_frac")},
               **{k: int(v) for k, v in counts.items()}}
    if ctx.is_main and progress:
        print(f"done: {_summary_line(summary)}", file=sys.stderr)
    return summary

