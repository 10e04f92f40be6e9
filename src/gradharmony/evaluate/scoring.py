"""Alignment scoring: how well each triplet of a data set agrees with itself, several ways.

**Batches.** Clips are grouped into batches of ``batch_size`` triplets whose in-batch
negatives are the other clips of the batch; how the batches are composed is ``order`` (see
:mod:`gradharmony.evaluate.order`): ``shuffled`` (a seeded permutation: training from the
decoded cache), ``stream`` (shards permuted, then a ``shuffle_buffer``-clip shuffle buffer:
training from the tars), ``shard`` (consecutive clips in shard order: whole videos per batch)
or ``one-per-video``. Every row records its batch index and size; the last batch may be
smaller. Each triplet has ``k`` MIL-NCE candidates (its own narration and the first ``k - 1``
``neighbors`` of its metadata).

**Scores** (one row per triplet):

- ``cos``: cos(g_va, g_vt) of the triplet's own-pass gradients over the parameters of
  ``scope``: ``"all"`` is :class:`gradharmony.harmonize.Harmonizer` at
  ``granularity="sample"`` (the signal training uses); ``"shared"`` (the parameters both losses
  reach) or a module prefix are computed by :func:`gradharmony.evaluate.gradients.scoped_cosines`
  (exact, one extra single-triplet forward per triplet);
- ``cos_emb``: cos(dL_va/dv, dL_vt/dv) at the clip's pooled video feature ``video_feat``;
- ``loss_va``, ``loss_vt``, ``loss``: the triplet's own NCE / MIL-NCE terms (the small-loss
  trick: noisy pairs have large losses); clips without an audio track are masked out of
  ``L_va`` (``has_audio``), as in training;
- ``sim_vt``, ``sim_va``: the cosine similarity of the clip's video and narration (audio)
  embeddings.

The model is in eval mode (no DropToken, BatchNorm on running statistics), so the scores are
deterministic; its weights are never changed (gradients are computed and discarded).
Misalignment detection: a low ``cos``/``sim`` or a high ``loss`` flags a triplet, so AUROCs
are computed on ``-cos``, ``loss`` and ``-sim`` against "not aligned" ground truth, overall
and per misalignment kind (``text_noise`` / ``audio_noise`` of the metadata), with a cluster
bootstrap over videos (or batches).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from tqdm.auto import tqdm

from gradharmony.evaluate.auroc import bootstrap_auroc, cluster_bootstrap_auroc
from gradharmony.evaluate.clips import ClipSet, RawClips
from gradharmony.evaluate.features import audio_batch, text_batch, video_batch
from gradharmony.evaluate.order import batch_order

#: score name -> sign making "larger = more likely misaligned"
DETECTORS = {"cos": -1.0, "cos_emb": -1.0, "loss": 1.0, "loss_vt": 1.0, "loss_va": 1.0,
             "sim_vt": -1.0, "sim_va": -1.0}
#: ground-truth target name -> meta flags that must all be True for an aligned triplet
TARGETS = {"text_misaligned": ("text_aligned",), "audio_misaligned": ("audio_aligned",),
           "any_misaligned": ("text_aligned", "audio_aligned")}
#: per-kind targets: metadata field -> the flag of its aligned triplets
KIND_FIELDS = {"text_noise": "text_aligned", "audio_noise": "audio_aligned"}
CLUSTERS = ("video", "batch", "clip")


def _batch(clips: ClipSet, idx: np.ndarray, tokenizer, k: int, text_len: int, device) -> dict:
    ids, mask, cand = text_batch(tokenizer, [clips.texts[i] for i in idx], text_len, device,
                                 [clips.neighbors[i] for i in idx], k)
    centre = clips.video.shape[1] // 2
    has_text = torch.tensor([bool(clips.texts[i]) for i in idx], device=device)
    return {
        "video": video_batch(clips, idx, device).reshape(len(idx), clips.video.shape[1],
                                                         *clips.video.shape[2:])[:, centre],
        "audio": audio_batch(clips, idx, device).reshape(len(idx), clips.audio.shape[1],
                                                         -1)[:, centre],
        "text": ids, "text_mask": mask, "candidate_mask": cand, "has_text": has_text,
        "has_audio": torch.from_numpy(clips.has_audio[idx]).to(device),
        "key": [clips.keys[i] for i in idx], "meta": [clips.meta[i] for i in idx],
    }


def _score_batch(model, harm, clips, idx, tokenizer, k, text_len, temperature, device, n_batch,
                 scope_names) -> list[dict]:
    from gradharmony.evaluate.gradients import embedding_cosines, scoped_cosines
    from gradharmony.train.loop import per_triplet_losses

    batch = _batch(clips, idx, tokenizer, k, text_len, device)
    model.zero_grad(set_to_none=True)
    out = model(batch)
    losses, per = per_triplet_losses(out, batch, temperature)
    cos_emb = embedding_cosines(out, losses).float().cpu().numpy()
    if harm is not None:
        stats = harm.backward(losses, step=0, batch_size=len(idx))
        cos = stats.cos.detach().float().cpu().numpy()
        if cos.shape[0] != len(idx):
            raise RuntimeError(f"the Harmonizer returned {cos.shape[0]} cosines for a batch of "
                               f"{len(idx)} triplets at granularity='sample'")
    else:
        cos = scoped_cosines(model, batch, out, losses, scope_names).float().cpu().numpy()
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        sim_vt = (out["video_vt"] * out["text_vt"][:, 0]).sum(-1).float().cpu().numpy()
        sim_va = (out["video_va"] * out["audio_va"]).sum(-1).float().cpu().numpy()
    lva, lvt = per["va"].detach().cpu().numpy(), per["vt"].detach().cpu().numpy()
    del out, losses, per
    rows = []
    for j, i in enumerate(idx):
        meta = clips.meta[i]
        row = {"key": clips.keys[i], "video": str(meta.get("video_id", clips.keys[i])),
               "cos": float(cos[j]), "cos_emb": float(cos_emb[j]),
               "loss_va": float(lva[j]), "loss_vt": float(lvt[j]), "loss": float(lva[j] + lvt[j]),
               "sim_vt": float(sim_vt[j]), "sim_va": float(sim_va[j]), "batch": n_batch,
               "batch_size": int(len(idx)), "has_audio": bool(clips.has_audio[i]),
               "text": clips.texts[i]}
        for flag in ("text_aligned", "audio_aligned", *KIND_FIELDS):
            if flag in meta:
                row[flag] = meta[flag] if flag in KIND_FIELDS else bool(meta[flag])
        rows.append(row)
    return rows


def _sub(clips: ClipSet, idx) -> ClipSet:
    idx = np.asarray(idx)
    return ClipSet(clips.video[idx], clips.audio[idx], clips.has_audio[idx],
                   [clips.texts[i] for i in idx], [clips.neighbors[i] for i in idx],
                   clips.labels[idx], [clips.keys[i] for i in idx],
                   [clips.meta[i] for i in idx], clips.skipped)


def _batches(clips, batch_size, order, seed, shuffle_buffer, spec):
    """Yield decoded sub-ClipSets, one per batch, composed as ``order`` says."""
    if isinstance(clips, (ClipSet, RawClips)):
        videos = [str(m.get("video_id", k)) for m, k in zip(clips.meta, clips.keys)] \
            if order == "one-per-video" else None
        if order == "one-per-video" and any("video_id" not in m for m in clips.meta):
            raise ValueError("--order one-per-video needs video_id in every clip's KEY.json")
        shards = getattr(clips, "shards", [0] * len(clips))
        for b in batch_order(len(clips), batch_size, order, seed, shards, videos,
                             shuffle_buffer):
            if isinstance(clips, RawClips):
                if spec is None:
                    raise ValueError("scoring RawClips needs the ClipSpec to decode them")
                part, _ = clips.decode(b, spec)
            else:
                part = _sub(clips, b)
            if part is not None:
                yield part
        return
    if order != "shard":
        raise ValueError(f"--order {order!r} needs the whole data set (a ClipSet or RawClips); "
                         "an iterable of ClipSets is scored in shard order only")
    for part in clips:
        for start in range(0, len(part), batch_size):
            yield _sub(part, np.arange(start, min(len(part), start + batch_size)))


def score_clips(model: torch.nn.Module, clips: ClipSet | RawClips | Iterable[ClipSet],
                tokenizer, batch_size: int, k: int = 4, text_len: int = 16,
                temperature: float = 0.07, device="cpu", progress: bool = True,
                order: str = "shard", scope: str = "all", seed: int = 0,
                shuffle_buffer: int = 64, spec=None) -> list[dict]:
    """Per-clip scores (one dict per clip, in batch order; see the module docstring).

    ``clips`` is a :class:`ClipSet`, a :class:`RawClips` (decoded batch by batch with
    ``spec``) or an iterable of ClipSets (``order="shard"`` only). A batch whose clips decode
    to fewer than two is skipped (no negatives). A final batch smaller than ``batch_size``
    is scored as it is (fewer negatives); every row records the size of its batch.

    Example:
        >>> from gradharmony.models import create_model
        >>> model = create_model("tiny", depth=1, width=32, heads=2, mlp_dim=64, video_frames=4,
        ...                      video_size=32, audio_seconds=0.5, vocab_size=10).eval()
        >>> clips = ClipSet(np.zeros((4, 1, 4, 32, 32, 3), np.uint8),
        ...                 np.zeros((4, 1, 8000), np.float32), np.ones(4, bool),
        ...                 ["a"] * 4, [[]] * 4, np.array([0, 1, 0, 1]), list("abcd"), [{}] * 4)
        >>> from gradharmony.data.text import TextTokenizer
        >>> tok = TextTokenizer.from_texts(["a"])
        >>> rows = score_clips(model, clips, tok, batch_size=2, progress=False)
        >>> len(rows), sorted(rows[0])[:5]
        (4, ['batch', 'batch_size', 'cos', 'cos_emb', 'has_audio'])
    """
    from gradharmony.evaluate.gradients import reached_parameters, scope_parameters
    from gradharmony.harmonize import Harmonizer

    if batch_size < 2:
        raise ValueError(f"batch_size must be >= 2 (in-batch negatives), got {batch_size}")
    if k < 1:
        raise ValueError(f"--k must be >= 1 (MIL-NCE candidates), got {k}")
    model.eval()
    harm = None
    if scope == "all":
        harm = Harmonizer(model, method="baseline", granularity="sample", total_steps=1)
    elif scope != "shared":
        scope_parameters(model, scope)  # a clear error before decoding anything
    names: list[str] | None = None
    rows: list[dict] = []
    n_batch = 0
    bar = tqdm(desc="score", unit="clip", disable=not progress, leave=False)
    try:
        for part in _batches(clips, batch_size, order, seed, shuffle_buffer, spec):
            if len(part) < 2:
                continue
            if harm is None and names is None:
                names = _scope_names(model, part, tokenizer, k, text_len, temperature, device,
                                     scope, reached_parameters, scope_parameters)
            rows += _score_batch(model, harm, part, np.arange(len(part)), tokenizer, k,
                                 text_len, temperature, device, n_batch, names)
            n_batch += 1
            bar.update(len(part))
    finally:
        bar.close()
        if harm is not None:
            harm.remove()
        model.zero_grad(set_to_none=True)
    return rows


def _scope_names(model, part, tokenizer, k, text_len, temperature, device, scope, reached_fn,
                 scope_fn) -> list[str]:
    from gradharmony.train.loop import per_triplet_losses

    reached = None
    if scope == "shared":
        batch = _batch(part, np.arange(len(part)), tokenizer, k, text_len, device)
        losses, _ = per_triplet_losses(model(batch), batch, temperature)
        reached = reached_fn(model, losses)
        del losses
    return scope_fn(model, scope, reached)


def _kind_targets(rows: list[dict], kinds: list[str] | None) -> dict[str, tuple]:
    """``{"text_misaligned:off_topic": (mask, positive), ...}`` for every kind in the rows."""
    out = {}
    present: set[str] = set()
    for field, flag in KIND_FIELDS.items():
        values = [r.get(field) for r in rows]
        if not any(v is not None for v in values) or not all(flag in r for r in rows):
            continue
        aligned = np.array([bool(r[flag]) for r in rows])
        target = "text_misaligned" if field == "text_noise" else "audio_misaligned"
        for kind in sorted({str(v) for v in values if v is not None}):
            present.add(kind)
            kind_mask = np.array([str(v) == kind for v in values])
            if kinds is not None and kind not in kinds:
                continue
            positive = kind_mask & ~aligned
            if not positive.any():
                continue
            out[f"{target}:{kind}"] = (positive | aligned, positive)
    if kinds is not None:
        bad = [k for k in kinds if k not in present]
        if bad:
            raise ValueError(f"--kinds: {bad} not found in the metadata; the data holds "
                             f"{sorted(present) or 'no text_noise/audio_noise kinds'}")
    return out


def detection_aurocs(rows: list[dict], n_boot: int = 1000, seed: int = 0,
                     level: float = 0.95, cluster: str | None = "video",
                     kinds: list[str] | None = None) -> dict[str, dict[str, dict]]:
    """AUROC (with bootstrap CI) of each score for each ground-truth target that has both
    classes: ``{target: {score: {"auroc", "low", "high", ...}}}``.

    Targets: ``text_misaligned``, ``audio_misaligned``, ``any_misaligned`` and, per
    misalignment kind of the metadata (``text_noise``, ``audio_noise``; whatever strings it
    holds), ``text_misaligned:<kind>`` / ``audio_misaligned:<kind>`` (that kind against the
    aligned triplets; other kinds left out). Rows without an audio track are left out of the
    audio targets. ``cluster`` is the row field whose values are resampled whole by the
    bootstrap (``"video"``, ``"batch"``; ``"clip"`` or None: an i.i.d. bootstrap of rows).

    Example:
        >>> rows = [{"cos": c, "loss": -c, "text_aligned": c > 0} for c in (-.5, -.2, .1, .4)]
        >>> detection_aurocs(rows, n_boot=50, cluster=None)["text_misaligned"]["cos"]["auroc"]
        1.0
    """
    if cluster not in (*CLUSTERS, None):
        raise ValueError(f"--cluster: unknown {cluster!r}; choose from {', '.join(CLUSTERS)}")
    out: dict[str, dict[str, dict]] = {}
    if not rows:
        return out
    targets: dict[str, tuple] = {}
    for target, flags in TARGETS.items():
        if not all(all(f in r for f in flags) for r in rows):
            continue
        y = np.array([not all(r[f] for f in flags) for r in rows])
        targets[target] = (np.ones(len(rows), bool), y)
    targets.update(_kind_targets(rows, kinds))
    if kinds is not None and not targets:
        raise ValueError("--kinds: the data holds no ground-truth flags (text_aligned / "
                         "audio_aligned in KEY.json)")
    has_audio = np.array([bool(r.get("has_audio", True)) for r in rows])
    for target, (mask, y) in targets.items():
        if target.startswith(("audio", "any")):
            mask = mask & has_audio
        yt = y[mask]
        if yt.all() or not yt.any():
            continue
        out[target] = {}
        for score, sign in DETECTORS.items():
            if score not in rows[0]:
                continue
            s = sign * np.array([r[score] for r in rows], dtype=np.float64)[mask]
            if cluster in (None, "clip"):
                out[target][score] = bootstrap_auroc(s, yt, n_boot=n_boot, seed=seed,
                                                     level=level)
            else:
                c = np.array([str(r.get(cluster, r.get("key"))) for r in rows])[mask]
                out[target][score] = {**cluster_bootstrap_auroc(s, yt, c, n_boot=n_boot,
                                                                seed=seed, level=level),
                                      "cluster": cluster}
    return out
