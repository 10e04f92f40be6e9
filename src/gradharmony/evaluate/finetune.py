"""Fine-tuning: a copy of the backbone plus a linear classifier head, a short schedule.

Protocol: the model is deep-copied (the run's weights are untouched), a ``Linear`` head is put
on the pooled feature of one modality (``video_feat`` or ``audio_feat``), and both are trained
with AdamW (backbone ``lr``, head ``10 * lr``, cosine decay to 0) and cross-entropy for
``epochs`` passes over the training clips in a seeded order, one randomly chosen window per
clip per pass. The test score averages the logits of all windows of a clip.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
from tqdm.auto import tqdm

from gradharmony.evaluate.clips import ClipSet
from gradharmony.evaluate.probe import topk_accuracy

_ENCODERS = {"video": ("encode_video", "video_feat"), "audio": ("encode_audio", "audio_feat")}


def _inputs(clips: ClipSet, modality: str, idx: np.ndarray, window: np.ndarray | None, device):
    data = clips.video if modality == "video" else clips.audio
    x = data[idx] if window is None else data[idx, window]
    x = torch.from_numpy(np.ascontiguousarray(x)).to(device)
    if window is None:
        x = x.flatten(0, 1)
    return x.float().div_(255.0) if modality == "video" else x.float()


def _check_labels(name: str, clips: ClipSet) -> np.ndarray:
    y = clips.labels
    if (y < 0).any():
        raise ValueError(f"the {name} split has clips without a label (label -1 in their meta)")
    if np.unique(y).size < 2:
        raise ValueError(f"the {name} split has a single class ({np.unique(y).tolist()}): "
                         "classification needs at least two")
    return y


def finetune(model: torch.nn.Module, train: ClipSet, test: ClipSet, modality: str = "video",
             epochs: int = 10, batch_size: int = 16, lr: float = 3e-4, weight_decay: float = 0.05,
             seed: int = 0, device="cpu", progress: bool = True) -> dict:
    """Fine-tune ``model``'s encoder of ``modality`` with a linear head; top-1/top-5 on test.

    Returns ``{"top1", "top5", "protocol": {...}}``.

    Example:
        >>> from gradharmony.models import create_model
        >>> model = create_model("tiny", depth=1, width=32, heads=2, mlp_dim=64, video_frames=4,
        ...                      video_size=32, audio_seconds=0.5, vocab_size=10).eval()
        >>> clips = ClipSet(np.zeros((4, 1, 4, 32, 32, 3), np.uint8),
        ...                 np.zeros((4, 1, 8000), np.float32), np.ones(4, bool),
        ...                 ["a"] * 4, [[]] * 4, np.array([0, 1, 0, 1]), list("abcd"), [{}] * 4)
        >>> r = finetune(model, clips, clips, "audio", epochs=1, batch_size=4, progress=False)
        >>> r["top5"], r["protocol"]["steps"]
        (100.0, 1)
    """
    if modality not in _ENCODERS:
        raise ValueError(f"modality must be one of {sorted(_ENCODERS)}, got {modality!r}")
    ytr = _check_labels("training", train)
    yte = _check_labels("test", test)
    n_classes = int(max(ytr.max(), yte.max()) + 1)
    enc_name, feat_key = _ENCODERS[modality]
    torch.manual_seed(seed)
    net = copy.deepcopy(model).to(device)
    encode = getattr(net, enc_name)
    with torch.no_grad():
        net.eval()
        dim = encode(_inputs(train, modality, np.arange(1), np.zeros(1, int), device))[
            feat_key].shape[-1]
    head = torch.nn.Linear(dim, n_classes).to(device)
    opt = torch.optim.AdamW([{"params": net.parameters(), "lr": lr},
                             {"params": head.parameters(), "lr": 10 * lr}],
                            weight_decay=weight_decay)
    n, w = len(train), train.video.shape[1]
    steps = epochs * math.ceil(n / batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    rng = np.random.default_rng(seed)
    net.train()
    bar = tqdm(total=steps, desc=f"finetune {modality}", disable=not progress, leave=False)
    last_loss = float("nan")
    for _ in range(epochs):
        order = rng.permutation(n)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            if len(idx) < 2 and n >= 2:  # BatchNorm in training mode needs 2 rows
                idx = order[start - 1:start + 1]
            win = rng.integers(0, w, size=len(idx))
            feat = encode(_inputs(train, modality, idx, win, device))[feat_key]
            loss = torch.nn.functional.cross_entropy(head(feat.float()),
                                                     torch.from_numpy(ytr[idx]).to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            last_loss = float(loss.detach())
            bar.update(1)
            bar.set_postfix(loss=f"{last_loss:.3f}")
    bar.close()
    net.eval()
    logits = []
    with torch.no_grad():
        for start in range(0, len(test), batch_size):
            idx = np.arange(start, min(len(test), start + batch_size))
            feat = encode(_inputs(test, modality, idx, None, device))[feat_key]
            logits.append(head(feat.float()).reshape(len(idx), w, -1).mean(1).cpu())
    res = topk_accuracy(torch.cat(logits).numpy(), yte, (1, 5))
    res["protocol"] = {
        "modality": modality, "feature": feat_key, "epochs": epochs, "steps": steps,
        "batch_size": batch_size, "lr_backbone": lr, "lr_head": 10 * lr,
        "weight_decay": weight_decay, "optimizer": "AdamW, cosine decay", "seed": seed,
        "windows": int(w), "test_windows": "logits averaged over all windows",
        "n_train": int(n), "n_test": len(test), "n_classes": int(np.unique(ytr).size),
        "final_train_loss": last_loss,
    }
    return res
