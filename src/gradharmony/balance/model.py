"""Late-fusion audio-visual classifier: one encoder per modality, a fusion head, and one
uni-modal linear head per modality (used by Gradient-Blending and as a diagnostic)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from gradharmony.balance.encoders import build_encoder
from gradharmony.balance.fusion import build_fusion


def check_batch(
    batch: Mapping[str, torch.Tensor], modalities, num_classes: int | None = None
) -> None:
    """Raise a clear error when a modality is missing, malformed, or a label out of range.

    Example:
        >>> check_batch({"audio": torch.zeros(2, 3, 4), "label": torch.tensor([0, 5])},
        ...             ["audio"], num_classes=3)
        Traceback (most recent call last):
        ...
        ValueError: batch['label'] has values in [0, 5]; expected integers in [0, 3)
    """
    n = None
    for m in modalities:
        if m not in batch:
            raise ValueError(
                f"batch is missing modality {m!r} (keys: {sorted(batch)}); the model "
                f"expects {list(modalities)}"
            )
        x = batch[m]
        if not torch.is_tensor(x) or x.dim() != 3 or not x.is_floating_point():
            raise ValueError(
                f"batch[{m!r}] must be a float tensor [B, T, D], got "
                f"{getattr(x, 'dtype', type(x))} {tuple(getattr(x, 'shape', ()))}"
            )
        if n is not None and x.shape[0] != n:
            raise ValueError(f"batch[{m!r}] has {x.shape[0]} rows, other modalities {n}")
        n = x.shape[0]
    if "label" in batch and num_classes is not None:
        y = batch["label"]
        if y.dtype not in (torch.int64, torch.int32) or y.dim() != 1 or y.shape[0] != n:
            raise ValueError(f"batch['label'] must be int64 [{n}], got {y.dtype} {tuple(y.shape)}")
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
            raise ValueError(
                f"batch['label'] has values in [{int(y.min())}, {int(y.max())}]; expected "
                f"integers in [0, {num_classes})"
            )


class AVClassifier(nn.Module):
    """``logits = fusion({m: encoder_m(x^m)})`` plus uni-modal heads.

    Args:
        input_dims: modality -> feature size D of its input ``[B, T, D]`` (order matters
            for FiLM: the first modality conditions the second).
        num_classes: C.
        fusion: ``sum``, ``concat``, ``film`` or ``gating`` (ignored for one modality,
            which uses a linear head).
        encoder: registry name (:data:`gradharmony.balance.encoders.ENCODERS`), or a dict
            modality -> ``nn.Module`` with an ``out_dim`` attribute.
        dim: encoder output size when built by name.

    ``forward(batch, drop=None)`` returns ``logits [B, C]``, ``shares`` and ``slices``
    (``{m: [B, C]}``, see :mod:`gradharmony.balance.fusion`), ``features`` (``{m: [B, dim]}``)
    and ``unimodal`` (``{m: [B, C]}``). ``drop`` maps a modality to a bool ``[B]`` mask of
    samples whose features are zeroed before fusion (Modality-Drop).

    Example:
        >>> model = AVClassifier({"audio": 6, "visual": 5}, num_classes=3, fusion="concat")
        >>> out = model({"audio": torch.randn(4, 7, 6), "visual": torch.randn(4, 2, 5)})
        >>> out["logits"].shape, sorted(out["slices"])
        (torch.Size([4, 3]), ['audio', 'visual'])
    """

    def __init__(
        self,
        input_dims: Mapping[str, int],
        num_classes: int,
        fusion: str = "concat",
        encoder: str | Mapping[str, nn.Module] = "conv1d",
        dim: int = 32,
    ):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if not input_dims:
            raise ValueError("input_dims needs at least one modality")
        self.modalities = tuple(input_dims)
        self.num_classes = num_classes
        if isinstance(encoder, str):
            encs = {m: build_encoder(encoder, d, dim) for m, d in input_dims.items()}
        else:
            missing = set(self.modalities) - set(encoder)
            if missing:
                raise ValueError(f"encoder dict lacks modalities {sorted(missing)}")
            encs = {m: encoder[m] for m in self.modalities}
        self.encoders = nn.ModuleDict(encs)
        out_dims = {m: int(e.out_dim) for m, e in encs.items()}
        self.fusion_name = fusion if len(self.modalities) > 1 else "concat"
        self.fusion = build_fusion(self.fusion_name, out_dims, num_classes)
        self.unimodal = nn.ModuleDict({m: nn.Linear(d, num_classes) for m, d in out_dims.items()})

    def encode(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Encoder features ``{m: [B, dim]}``."""
        check_batch(batch, self.modalities)
        return {m: self.encoders[m](batch[m]) for m in self.modalities}

    def forward(self, batch, drop: Mapping[str, torch.Tensor] | None = None) -> dict:
        feats = self.encode(batch)
        fused_in = dict(feats)
        for m, mask in (drop or {}).items():
            if m not in feats:
                raise ValueError(f"drop names modality {m!r}, model has {self.modalities}")
            fused_in[m] = feats[m] * (~mask).to(feats[m].dtype).unsqueeze(1)
        logits, shares = self.fusion(fused_in)
        return {
            "logits": logits,
            "shares": shares,
            "slices": self.fusion.slices(shares),
            "features": feats,
            "unimodal": {m: self.unimodal[m](feats[m]) for m in self.modalities},
        }
