"""Modality-Drop: zero one modality's features for a random subset of the training samples."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def modality_drop_masks(
    batch_size: int,
    modalities: Sequence[str],
    rate: float,
    target: str = "random",
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Bool masks ``{m: [B]}`` of samples whose modality-m features are dropped.

    Each sample is dropped with probability ``rate``; ``target`` is the modality dropped, or
    ``"random"`` to pick one modality uniformly per dropped sample (never more than one
    modality of a sample is dropped).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> masks = modality_drop_masks(1000, ["audio", "visual"], 0.3, "audio", g)
        >>> bool(masks["visual"].any()), 0.25 < masks["audio"].float().mean().item() < 0.35
        (False, True)
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"modality-drop rate must be in [0, 1], got {rate}")
    mods = list(modalities)
    if target != "random" and target not in mods:
        raise ValueError(f"modality-drop target must be 'random' or one of {mods}, got {target!r}")
    dropped = torch.rand(batch_size, generator=generator) < rate
    if target == "random":
        which = torch.randint(len(mods), (batch_size,), generator=generator)
        return {m: dropped & (which == i) for i, m in enumerate(mods)}
    return {m: dropped if m == target else torch.zeros(batch_size, dtype=torch.bool)
            for m in mods}
