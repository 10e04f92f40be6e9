"""Collate decoded samples into the batch dict of ``docs/architecture.md``.

Example:
    >>> import numpy as np
    >>> s = {"video": np.zeros((2, 4, 4, 3), np.float32), "audio": np.zeros(8, np.float32),
    ...      "text": np.zeros((3, 5), np.int64), "text_mask": np.zeros((3, 5), bool),
    ...      "candidate_mask": np.array([True, False, False]), "has_text": True,
    ...      "has_audio": False, "label": -1, "key": "a", "meta": {}}
    >>> batch = collate([s, s])
    >>> tuple(batch["video"].shape), batch["text"].dtype, batch["has_audio"].tolist()
    ((2, 2, 4, 4, 3), torch.int64, [False, False])
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

#: key -> (torch dtype, number of dims per sample) of the stacked entries.
TENSOR_KEYS = {
    "video": (torch.float32, 4),
    "audio": (torch.float32, 1),
    "text": (torch.int64, 2),
    "text_mask": (torch.bool, 2),
    "candidate_mask": (torch.bool, 1),
    "has_text": (torch.bool, 0),
    "has_audio": (torch.bool, 0),
    "label": (torch.int64, 0),
}


def collate(samples: Sequence[dict], *, video_uint8: bool = False) -> dict:
    """Stack per-sample dicts into a batch: tensors for :data:`TENSOR_KEYS`, lists otherwise.

    ``video`` may be float in [0, 1] or uint8 (divided by 255 here, unless ``video_uint8``:
    then the batch keeps uint8 video, 4x smaller to pass between processes; convert it with
    :func:`video_to_float`).

    Raises ``ValueError`` naming the key when a sample misses one or shapes disagree.
    """
    if not samples:
        raise ValueError("collate: got an empty list of samples")
    batch: dict = {}
    for name, (dtype, ndim) in TENSOR_KEYS.items():
        values = []
        for i, s in enumerate(samples):
            if name not in s:
                raise ValueError(f"collate: sample {i} ({s.get('key', '?')}) has no {name!r}")
            v = np.asarray(s[name])
            if v.ndim != ndim:
                raise ValueError(f"collate: {name!r} of sample {i} has {v.ndim} dims, "
                                 f"expected {ndim}")
            values.append(v)
        shapes = {v.shape for v in values}
        if len(shapes) > 1:
            raise ValueError(f"collate: {name!r} shapes differ across the batch: {sorted(shapes)}")
        stacked = torch.from_numpy(np.stack(values))
        if name == "video" and stacked.dtype == torch.uint8:
            batch[name] = stacked if video_uint8 else video_to_float(stacked)
        else:
            batch[name] = stacked.to(dtype)
    batch["key"] = [str(s.get("key", "")) for s in samples]
    if all("set" in s for s in samples):  # the mixture set of each clip (keys repeat across sets)
        batch["set"] = [int(s["set"]) for s in samples]
    batch["meta"] = [dict(s.get("meta") or {}) for s in samples]
    return batch


def video_to_float(video: torch.Tensor) -> torch.Tensor:
    """uint8 video -> float32 in [0, 1] (float input is returned as it is).

    Example:
        >>> video_to_float(torch.tensor([0, 51, 255], dtype=torch.uint8))
        tensor([0.0000, 0.2000, 1.0000])
    """
    if video.dtype != torch.uint8:
        return video
    return video.to(torch.float32).div_(255.0)
