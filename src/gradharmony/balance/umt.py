"""Uni-Modal Teachers (UMT): distil separately trained uni-modal encoders into the fused model.

After Du et al., "Improving Multi-Modal Learning with Uni-Modal Teachers" (2021): first one
uni-modal network per modality is trained alone (here: the ``audio`` / ``visual`` baseline of
``train-av`` with the same seed, optimizer, encoder and data); then the multimodal model is
trained on the fused task while each of its encoders is pulled towards its teacher's
features::

    L = CE(fused logits, y) + w * sum_m  mean_{i, d} (phi^m_student(x_i)_d - phi^m_teacher(x_i)_d)^2

``phi^m`` is encoder m's output feature vector (before any head), the teacher is frozen, and
the mean runs over the batch and the feature dimension (``torch.nn.MSELoss``, as in public
re-implementations). Choices of ours, each a parameter: the weight ``w`` (``--umt-weight``),
the number of teacher epochs (``--umt-teacher-epochs``, default: the student's), and that
the student starts from its own random initialisation (not from the teachers' weights).

Teachers are cached on disk (:func:`teacher_cache_key`) under a name derived from everything
that determines them, and read back with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence

import torch
from torch import nn


def distillation_targets(teachers: Mapping[str, nn.Module], data: Mapping[str, torch.Tensor],
                         modalities: Sequence[str], batch_size: int = 512) -> dict:
    """Frozen teacher features ``{m: [n, dim]}`` of every sample (the distillation targets).

    ``teachers`` maps each modality to an encoder ``[n, T, D] -> [n, dim]``; one missing
    modality is an error.

    Example:
        >>> class Mean(nn.Module):
        ...     def forward(self, x):
        ...         return x.mean(1)
        >>> t = distillation_targets({"a": Mean()}, {"a": torch.ones(3, 2, 4)}, ["a"])
        >>> t["a"].shape, float(t["a"].sum())
        (torch.Size([3, 4]), 12.0)
    """
    check_teachers(teachers, modalities)
    out = {}
    for m in modalities:
        enc = teachers[m]
        was_training = enc.training
        enc.eval()
        with torch.no_grad():
            x = data[m]
            out[m] = torch.cat([enc(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
        enc.train(was_training)
    return out


def check_teachers(teachers: Mapping[str, nn.Module] | None, modalities: Sequence[str]) -> None:
    """Raise a clear error unless there is one teacher per modality.

    Example:
        >>> check_teachers({"audio": nn.Identity()}, ["audio", "visual"])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: UMT needs one teacher per modality (teachers=...): missing ['visual'] ...
    """
    missing = [m for m in modalities if not teachers or m not in teachers]
    if missing:
        raise ValueError(f"UMT needs one teacher per modality (teachers=...): missing "
                         f"{missing} of {list(modalities)}")


def distillation_loss(student: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor],
                      weight: float) -> torch.Tensor:
    """``weight * sum_m mean((student_m - target_m)^2)`` over the modalities of ``targets``.

    Example:
        >>> s = {"a": torch.tensor([[1.0, 2.0]]), "v": torch.tensor([[0.0, 0.0]])}
        >>> t = {"a": torch.tensor([[0.0, 0.0]]), "v": torch.tensor([[3.0, 1.0]])}
        >>> float(distillation_loss(s, t, 0.5))   # 0.5 * ((1 + 4) / 2 + (9 + 1) / 2)
        3.75
    """
    if not targets:
        raise ValueError("distillation_loss needs at least one modality")
    total = 0.0
    for m, tgt in targets.items():
        if m not in student:
            raise ValueError(f"student features lack modality {m!r} (have {sorted(student)})")
        if student[m].shape != tgt.shape:
            raise ValueError(f"student features of {m!r} have shape {tuple(student[m].shape)}, "
                             f"the teacher's {tuple(tgt.shape)}: encoder sizes must match")
        total = total + torch.mean((student[m] - tgt.detach()) ** 2)
    return weight * total


def data_fingerprint(data: Mapping[str, torch.Tensor], keys: Sequence[str]) -> str:
    """SHA-1 of the named tensors' shapes, dtypes and bytes (keys in the given order).

    Example:
        >>> a = {"audio": torch.zeros(2, 3), "label": torch.tensor([0, 1])}
        >>> data_fingerprint(a, ["audio", "label"]) == data_fingerprint(dict(a), ["audio", "label"])
        True
        >>> b = {"audio": torch.zeros(2, 3), "label": torch.tensor([1, 1])}
        >>> data_fingerprint(a, ["audio", "label"]) == data_fingerprint(b, ["audio", "label"])
        False
    """
    h = hashlib.sha1()
    for k in keys:
        t = data[k].detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def teacher_cache_key(settings: Mapping) -> str:
    """File-name-safe digest of the teacher's settings (any JSON-serialisable mapping).

    Example:
        >>> teacher_cache_key({"seed": 0, "modality": "audio"}) == teacher_cache_key(
        ...     {"modality": "audio", "seed": 0})
        True
    """
    return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def save_teacher(path: str, state: Mapping[str, torch.Tensor], meta: Mapping) -> None:
    """Write a teacher's ``state_dict`` and JSON-able ``meta`` atomically to ``path``."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    torch.save({"state_dict": dict(state), "meta_json": json.dumps(meta, sort_keys=True)}, tmp)
    os.replace(tmp, path)


def load_teacher(path: str) -> tuple[dict, dict]:
    """``(state_dict, meta)`` written by :func:`save_teacher` (never unpickles objects).

    Example:
        >>> import tempfile
        >>> p = os.path.join(tempfile.mkdtemp(), "t.pt")
        >>> save_teacher(p, {"w": torch.ones(2)}, {"seed": 3})
        >>> state, meta = load_teacher(p)
        >>> state["w"].tolist(), meta
        ([1.0, 1.0], {'seed': 3})
    """
    blob = torch.load(path, weights_only=True)
    return blob["state_dict"], json.loads(blob["meta_json"])
