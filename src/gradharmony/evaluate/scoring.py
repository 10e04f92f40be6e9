"""Alignment scoring: how well each triplet of a data set agrees with itself, three ways.

For every clip, in batches of ``batch_size`` triplets grouped as in training (in-batch
negatives are the other clips of the batch, in shard order):

- ``cos``: the conflict score cos(g_va, g_vt) of the triplet's own gradients, from
  :class:`gradharmony.harmonize.Harmonizer` at ``granularity="sample"`` (the paper's signal);
- ``loss_va``, ``loss_vt``, ``loss``: the triplet's own NCE / MIL-NCE terms (the small-loss
  trick: noisy pairs have large losses);
- ``sim_vt``, ``sim_va``: the cosine similarity of the clip's video and narration (audio)
  embeddings.

The model is in eval mode (no DropToken, BatchNorm on running statistics), so the scores are
deterministic; its weights are never changed (gradients are computed and discarded).
Misalignment detection: a low ``cos``/``sim`` or a high ``loss`` flags a triplet, so AUROCs
are computed on ``-cos``, ``loss`` and ``-sim`` against "not aligned" ground truth.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from tqdm.auto import tqdm

from gradharmony.evaluate.auroc import bootstrap_auroc
from gradharmony.evaluate.clips import ClipSet
from gradharmony.evaluate.features import audio_batch, text_batch, video_batch

#: score name -> sign making "larger = more likely misaligned"
DETECTORS = {"cos": -1.0, "loss": 1.0, "loss_vt": 1.0, "loss_va": 1.0, "sim_vt": -1.0,
             "sim_va": -1.0}
#: ground-truth target name -> meta flags that must all be True for an aligned triplet
TARGETS = {"text_misaligned": ("text_aligned",), "audio_misaligned": ("audio_aligned",),
           "any_misaligned": ("text_aligned", "audio_aligned")}


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
                 mil_nce, nce) -> list[dict]:
    batch = _batch(clips, idx, tokenizer, k, text_len, device)
    model.zero_grad(set_to_none=True)
    out = model(batch)
    z = {key: out[key].float() for key in ("video_va", "audio_va", "video_vt", "text_vt")}
    loss_va = nce(z["video_va"], z["audio_va"], temperature=temperature, reduction="none")
    loss_vt = mil_nce(z["video_vt"], z["text_vt"], temperature=temperature,
                      candidate_mask=batch["candidate_mask"], sample_mask=batch["has_text"],
                      reduction="none")
    stats = harm.backward({"va": loss_va.mean(), "vt": loss_vt.mean()}, step=0,
                          batch_size=len(idx))
    model.zero_grad(set_to_none=True)
    cos = stats.cos.detach().float().cpu().numpy()
    if cos.shape[0] != len(idx):
        raise RuntimeError(f"the Harmonizer returned {cos.shape[0]} cosines for a batch of "
                           f"{len(idx)} triplets at granularity='sample'")
    with torch.no_grad():
        sim_vt = (z["video_vt"] * z["text_vt"][:, 0]).sum(-1).cpu().numpy()
        sim_va = (z["video_va"] * z["audio_va"]).sum(-1).cpu().numpy()
    lva, lvt = loss_va.detach().cpu().numpy(), loss_vt.detach().cpu().numpy()
    rows = []
    for j, i in enumerate(idx):
        meta = clips.meta[i]
        row = {"key": clips.keys[i], "cos": float(cos[j]), "loss_va": float(lva[j]),
               "loss_vt": float(lvt[j]), "loss": float(lva[j] + lvt[j]),
               "sim_vt": float(sim_vt[j]), "sim_va": float(sim_va[j]), "batch": n_batch,
               "batch_size": int(len(idx)), "text": clips.texts[i]}
        for flag in ("text_aligned", "audio_aligned"):
            if flag in meta:
                row[flag] = bool(meta[flag])
        rows.append(row)
    return rows


def score_clips(model: torch.nn.Module, clips: ClipSet | Iterable[ClipSet], tokenizer,
                batch_size: int,
                k: int = 4, text_len: int = 16, temperature: float = 0.07, device="cpu",
                progress: bool = True) -> list[dict]:
    """Per-clip scores (one dict per clip, in shard order; see the module docstring).

    ``clips`` is a :class:`ClipSet` or an iterable of them (e.g. :func:`iter_clipsets` with
    ``chunk=batch_size``, which keeps memory bounded); each is cut into batches of
    ``batch_size``. A final batch smaller than ``batch_size`` is scored as it is (fewer
    negatives); every row records the size of its batch as ``batch_size``.

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
        >>> len(rows), sorted(rows[0])[:4]
        (4, ['batch', 'batch_size', 'cos', 'key'])
    """
    from gradharmony.harmonize import Harmonizer
    from gradharmony.losses import mil_nce, nce

    if batch_size < 2:
        raise ValueError(f"batch_size must be >= 2 (in-batch negatives), got {batch_size}")
    model.eval()
    harm = Harmonizer(model, method="baseline", granularity="sample", total_steps=1)
    rows: list[dict] = []
    parts = [clips] if isinstance(clips, ClipSet) else clips
    n_batch = 0
    bar = tqdm(desc="score", unit="clip", disable=not progress, leave=False)
    try:
        for part in parts:
            for start in range(0, len(part), batch_size):
                idx = np.arange(start, min(len(part), start + batch_size))
                rows += _score_batch(model, harm, part, idx, tokenizer, k, text_len,
                                     temperature, device, n_batch, mil_nce, nce)
                n_batch += 1
                bar.update(len(idx))
    finally:
        bar.close()
        harm.remove()
        model.zero_grad(set_to_none=True)
    return rows


def detection_aurocs(rows: list[dict], n_boot: int = 1000, seed: int = 0,
                     level: float = 0.95) -> dict[str, dict[str, dict]]:
    """AUROC (with bootstrap CI) of each score for each ground-truth target that has both
    classes: ``{target: {score: {"auroc", "low", "high", ...}}}``.

    Example:
        >>> rows = [{"cos": c, "loss": -c, "text_aligned": c > 0} for c in (-.5, -.2, .1, .4)]
        >>> detection_aurocs(rows, n_boot=50)["text_misaligned"]["cos"]["auroc"]
        1.0
    """
    out: dict[str, dict[str, dict]] = {}
    for target, flags in TARGETS.items():
        if not rows or not all(f in rows[0] for f in flags):
            continue
        y = np.array([not all(r[f] for f in flags) for r in rows])
        if y.all() or not y.any():
            continue
        out[target] = {}
        for score, sign in DETECTORS.items():
            if score not in rows[0]:
                continue
            s = sign * np.array([r[score] for r in rows], dtype=np.float64)
            out[target][score] = bootstrap_auroc(s, y, n_boot=n_boot, seed=seed, level=level)
    return out
