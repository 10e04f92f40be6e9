"""Cross-modality gradient harmonization: per-triplet conflicts, GR, CL, Both and baselines.

Model-agnostic: works on any ``nn.Module`` whose layers keep the triplet index on dim 0
(open_clip, timm and transformers models included); see ``docs/harmonize.md``.

Example:
    >>> import torch
    >>> from gradharmony.harmonize import cosine, realign
    >>> g_va, g_vt = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])
    >>> round(float(cosine(*realign(g_va, g_vt))), 4)
    0.7071
"""

from ._convert import LinearMultiheadAttention, convert_multihead_attention
from ._functional import cosine, gram_cosine, realign
from ._harmonizer import Harmonizer, HarmonizeStats
from ._methods import (
    DROPPING_METHODS,
    METHODS,
    GammaSchedule,
    GradVac,
    both_rule,
    gr_weights,
    pcgrad_weights,
    reweight_weights,
    small_loss_rule,
)
from ._rules import register_rule

__all__ = [
    "DROPPING_METHODS",
    "METHODS",
    "GammaSchedule",
    "GradVac",
    "HarmonizeStats",
    "Harmonizer",
    "LinearMultiheadAttention",
    "both_rule",
    "small_loss_rule",
    "convert_multihead_attention",
    "cosine",
    "gr_weights",
    "gram_cosine",
    "pcgrad_weights",
    "realign",
    "register_rule",
    "reweight_weights",
]
