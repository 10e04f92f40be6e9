"""One pre-training step: forward, CMA losses, harmonized backward, Adam (see
:mod:`gradharmony.train.loop` for the whole run).

:func:`train_step` needs a :class:`~gradharmony.train.state.TrainState` and a batch, nothing
of a run directory; what it did comes back as a :class:`StepOutcome`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist

from gradharmony.harmonize import HarmonizeStats
from gradharmony.train.distributed import DistContext, all_sum
from gradharmony.train.state import TrainState

EMBEDDINGS = ("video_va", "audio_va", "video_vt", "text_vt")


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

    Example:
        >>> import torch.nn.functional as F
        >>> out = {k: F.normalize(torch.randn(3, 4), dim=-1) for k in EMBEDDINGS}
        >>> out["text_vt"] = F.normalize(torch.randn(3, 2, 4), dim=-1)
        >>> batch = {"candidate_mask": torch.ones(3, 2, dtype=torch.bool),
        ...          "has_text": torch.tensor([True, True, False])}
        >>> losses, per = per_triplet_losses(out, batch, temperature=0.07)
        >>> sorted(losses), float(per["vt"][2])
        (['va', 'vt'], 0.0)
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
    :func:`per_triplet_losses`).

    Example:
        >>> import torch.nn.functional as F
        >>> out = {k: F.normalize(torch.randn(2, 4), dim=-1) for k in EMBEDDINGS}
        >>> out["text_vt"] = out["text_vt"].unsqueeze(1)
        >>> batch = {"candidate_mask": torch.ones(2, 1, dtype=torch.bool),
        ...          "has_text": torch.ones(2, dtype=torch.bool)}
        >>> sorted(cma_losses(out, batch, temperature=0.1))
        ['va', 'vt']
    """
    return per_triplet_losses(out, batch, temperature)[0]


@dataclass
class StepOutcome:
    """What one :func:`train_step` did.

    ``finite``: the loss and every gradient were finite on every rank; otherwise the step was
    skipped (no update, counted in ``skipped_nonfinite``). ``loss``: ``L_va + L_vt`` (NaN when
    the forward was not finite). ``losses``: ``{"va": L_va, "vt": L_vt}`` as floats.
    ``per_triplet``: the per-triplet loss terms of the global batch. ``stats``: the
    harmonizer's statistics (finite steps). ``updated``: Adam stepped (finite and not every
    group dropped). ``lr``: the learning rate of the step. ``cos``: the per-group cosines of
    the global batch (finite steps).
    """

    finite: bool
    loss: float
    losses: dict[str, float] = field(default_factory=dict)
    per_triplet: dict[str, np.ndarray] = field(default_factory=dict)
    stats: HarmonizeStats | None = None
    updated: bool = False
    lr: float | None = None
    cos: np.ndarray | None = None


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


def _scores(state: TrainState, per: dict, rows: int) -> torch.Tensor | None:
    """The ``small-loss`` ranking score of this rank's triplets: ``l_va + l_vt``."""
    if state.harmonizer.method != "small-loss":
        return None
    total = (per["va"] + per["vt"]).detach()
    ctx = state.ctx
    if total.shape[0] != rows * ctx.world_size:
        raise RuntimeError(f"small-loss: {total.shape[0]} per-triplet losses for "
                           f"{ctx.world_size} ranks of {rows} triplets (unequal batches)")
    return total[ctx.rank * rows:(ctx.rank + 1) * rows]


def _backward(state: TrainState, batch: dict
              ) -> tuple[bool, torch.Tensor, dict, dict, HarmonizeStats | None]:
    """Forward, losses and harmonized backward; every rank takes the same branch (the losses
    and ``harmonizer.backward`` are collectives)."""
    ctx = state.ctx
    state.optimizer.zero_grad(set_to_none=True)
    with state.autocast():
        out = state.forward(batch)
    finite = _agree(all(bool(torch.isfinite(out[k]).all()) for k in EMBEDDINGS), ctx)
    losses, per = per_triplet_losses(out, batch, state.cfg.model.temperature) if finite \
        else ({}, {})
    del out  # the graph goes with the losses below, before the next forward
    total = (losses["va"].detach() + losses["vt"].detach()) if finite else \
        torch.tensor(float("nan"))
    values = {k: float(v.detach()) for k, v in losses.items()}
    finite = _agree(finite and bool(torch.isfinite(total)), ctx)
    stats = None
    if finite:
        stats = state.harmonizer.backward(losses, step=state.step,
                                          batch_size=len(batch["video"]),
                                          scores=_scores(state, per, len(batch["video"])))
        finite = _agree(_grads_finite(state.params), ctx)
    del losses
    per = {k: v.detach().float().cpu().numpy() for k, v in per.items()}
    return finite, total, values, per, stats


def train_step(state: TrainState, batch: dict) -> StepOutcome:
    """Run step ``state.step`` on ``batch`` (on the device) and advance ``state`` by one step.

    A step whose loss or gradient is not finite on some rank changes no parameter; it
    increments ``state.counts["skipped_nonfinite"]`` and ``state.nonfinite_streak`` (a finite
    step resets the streak). A step where the harmonizer dropped every group leaves Adam's
    moments untouched and counts ``skipped_all_dropped``. The learning-rate schedule advances
    in every case.

    Example:
        >>> from gradharmony.train.config import load_config
        >>> from gradharmony.train.distributed import setup
        >>> from gradharmony.train.state import build_state
        >>> cfg = load_config(overrides=["data.kind=random", "model.kwargs={depth: 1}",
        ...                              "batch_size=2", "steps=3"])
        >>> state = build_state(cfg, setup("cpu"))
        >>> outcome = train_step(state, next(state.batches.stream(0)))
        >>> outcome.finite, outcome.updated, state.step
        (True, True, 1)
    """
    finite, total, values, per, stats = _backward(state, batch)
    state.step += 1
    if not finite:
        state.optimizer.zero_grad(set_to_none=True)
        state.counts["skipped_nonfinite"] += 1
        state.nonfinite_streak += 1
        _advance(state.scheduler)
        return StepOutcome(False, float(total), values, per)
    state.nonfinite_streak = 0
    if stats.all_dropped:
        state.counts["skipped_all_dropped"] += 1
        state.optimizer.zero_grad(set_to_none=True)
    else:
        state.optimizer.step()
    lr = state.scheduler.get_last_lr()[0]
    _advance(state.scheduler)
    cos = _gather_cos(stats.cos, state.ctx, state.cos_is_global)
    return StepOutcome(True, float(total), values, per, stats, not stats.all_dropped, lr, cos)
