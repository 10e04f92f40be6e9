"""Does it matter that CL/Both drop only a triplet's own-pass gradient?

``Harmonizer(method="cl"|"both")`` drops a triplet (``cos <= gamma``) by leaving its own-pass
gradient out of the update, while the triplet stays an in-batch negative of the others (its
embeddings remain in their denominators) and the batch mean still divides by the full batch.
The alternative removes the dropped triplets from the batch as well: the losses recomputed
with them masked out (``sample_mask``), then the plain gradient (CL) or GR on the kept
triplets (Both). :func:`compare_drop` computes both updates on the same batches and weights
and reports their cosine and norm ratio.
"""

from __future__ import annotations

import numpy as np
import torch


def _flat_grad(model) -> torch.Tensor:
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                      .double() for p in model.parameters() if p.requires_grad])


def drop_updates(model, batch: dict, method: str, gamma: float, temperature: float = 0.07
                 ) -> dict:
    """The two updates of one batch: ``own`` (the Harmonizer's drop of own-pass gradients)
    and ``removed`` (the dropped triplets removed from the batch), their cosine, norm ratio
    and the dropped fraction. The weights are not changed; ``p.grad`` is left empty.

    Example:
        >>> from gradharmony.models import create_model
        >>> from gradharmony.train.batches import RandomTriplets
        >>> model = create_model("tiny", depth=1, width=16, heads=2, mlp_dim=32,
        ...                      droptoken_rate=0.0, video_frames=2, video_size=16,
        ...                      video_patch=(2, 8, 8), audio_rate=3200, audio_seconds=0.01,
        ...                      audio_patch=16, vocab_size=20, max_words=3, num_candidates=2)
        >>> b = RandomTriplets(8, 2, 16, 32, 3, 2, 20).batch(0)
        >>> r = drop_updates(model, b, "cl", gamma=-2.0)   # nothing dropped: the same update
        >>> r["dropped"], round(r["cos"], 6)
        (0.0, 1.0)
    """
    from gradharmony.harmonize import Harmonizer
    from gradharmony.train.loop import per_triplet_losses

    if method not in ("cl", "both"):
        raise ValueError(f"method must be 'cl' or 'both', got {method!r}")
    model.zero_grad(set_to_none=True)
    harm = Harmonizer(model, method=method, granularity="sample", gamma=gamma)
    try:
        losses, _ = per_triplet_losses(model(batch), batch, temperature)
        stats = harm.backward(losses, step=0, batch_size=len(batch["video"]))
    finally:
        harm.remove()
    own = _flat_grad(model)
    kept = stats.kept.detach().to(torch.bool)
    model.zero_grad(set_to_none=True)
    masked = dict(batch)
    masked["has_audio"] = batch["has_audio"].to(torch.bool) & kept
    masked["has_text"] = batch["has_text"].to(torch.bool) & kept
    if kept.any():
        if method == "both":
            harm = Harmonizer(model, method="gr", granularity="sample")
            try:
                losses, _ = per_triplet_losses(model(masked), masked, temperature)
                harm.backward(losses, step=0, batch_size=len(batch["video"]))
            finally:
                harm.remove()
        else:
            losses, _ = per_triplet_losses(model(masked), masked, temperature)
            (losses["va"] + losses["vt"]).backward()
    removed = _flat_grad(model)
    model.zero_grad(set_to_none=True)
    n_own, n_rem = float(own.norm()), float(removed.norm())
    cos = float(own @ removed / (n_own * n_rem)) if n_own > 0 and n_rem > 0 else float("nan")
    return {"cos": cos, "norm_ratio": n_rem / n_own if n_own > 0 else float("nan"),
            "dropped": float(1.0 - kept.float().mean()), "n": int(kept.numel())}


def compare_drop(run_dir, data, method: str = "cl", gamma: float | None = None,
                 batches: int = 8, batch_size: int | None = None, seed: int = 0,
                 limit: int | None = None) -> dict:
    """:func:`drop_updates` over ``batches`` shuffled batches of ``data`` with a run's final
    weights (train mode; ``gamma`` defaults to the run's threshold at its last step).
    Returns the per-batch results and their means."""
    from gradharmony.evaluate.clips import RawClips
    from gradharmony.evaluate.order import batch_order
    from gradharmony.evaluate.run import load_run
    from gradharmony.evaluate.scoring import _batch
    from gradharmony.harmonize import GammaSchedule

    run = load_run(run_dir)
    cfg = run.config
    if gamma is None:
        sched = GammaSchedule(float(cfg.get("gamma0", -0.3)), float(cfg.get("gamma_end", 0.0)),
                              int(cfg.get("steps", 1)))
        gamma = float(sched(run.step))
    bs = batch_size or int(cfg.get("batch_size", 32))
    clips = RawClips(data, limit)
    model = run.model.train()
    results = []
    for idx in batch_order(len(clips), bs, "shuffled", seed)[:batches]:
        part, _ = clips.decode(idx, run.spec)
        if part is None or len(part) < 2:
            continue
        batch = _batch(part, np.arange(len(part)), run.tokenizer, run.candidates,
                       run.text_len, "cpu")
        torch.manual_seed(seed)
        results.append(drop_updates(model, batch, method, gamma,
                                    float(cfg.get("model", {}).get("temperature", 0.07))))
    keys = ("cos", "norm_ratio", "dropped")
    mean = {k: float(np.nanmean([r[k] for r in results])) for k in keys}
    return {"run": str(run_dir), "step": run.step, "method": method, "gamma": gamma,
            "batch_size": bs, "batches": results, "mean": mean,
            "min_cos": float(np.nanmin([r["cos"] for r in results]))}
