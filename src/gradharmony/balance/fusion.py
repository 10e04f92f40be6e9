"""Late-fusion heads. Each returns the logits *and* every modality's additive share of them.

Every fusion here writes its logits as ``z = sum_m c^m + b`` with ``b`` the head's total
bias, and the OGM-GE slice of modality m is ``c^m + b / M`` (M modalities), the paper's
``W^m phi^m + b / 2`` for two modalities. The shares, for features ``phi^m``:

- ``sum``:    ``z = sum_m (W^m phi^m + b^m)`` (one linear classifier per modality, summed);
  ``c^m = W^m phi^m``, ``b = sum_m b^m``. (The released OGM-GE code uses ``b^m`` itself.)
- ``concat``: ``z = W [phi^1; ...; phi^M] + b``; ``c^m = W[:, cols of m] phi^m``.
- ``film`` (two modalities): the first modality conditions the second,
  ``z = W (gamma(phi^1) * P phi^2 + beta(phi^1)) + b``; the multiplicative term
  ``c^2 = W (gamma * P phi^2)`` is credited to the modulated modality and the shift
  ``c^1 = W beta(phi^1)`` to the conditioning one. The shares still sum to the logits, but
  ``c^2`` depends on ``phi^1`` through ``gamma``: the slice is an attribution, not a
  uni-modal classifier.
- ``gating``: per-dimension softmax gates over modalities from all features,
  ``g = softmax_m(U_m [phi^1; ...; phi^M])``, ``z = W sum_m g_m * P^m phi^m + b``;
  ``c^m = W (g_m * P^m phi^m)`` (gates computed from all modalities, as for FiLM).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

FUSIONS = ("sum", "concat", "film", "gating")


class Fusion(nn.Module):
    """Base class: ``forward(features) -> (logits [B, C], shares {m: [B, C]})``.

    ``bias`` is the head's total bias ``b`` (``[C]``); :meth:`slices` gives the OGM slices.
    """

    modalities: tuple[str, ...]

    @property
    def bias(self) -> torch.Tensor:
        raise NotImplementedError

    def slices(self, shares: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """OGM-GE slices ``c^m + b / M``."""
        b = self.bias / len(self.modalities)
        return {m: c + b for m, c in shares.items()}


class SumFusion(Fusion):
    """``z = sum_m (W^m phi^m + b^m)``.

    Example:
        >>> f = SumFusion({"a": 4, "v": 3}, num_classes=5)
        >>> z, c = f({"a": torch.randn(2, 4), "v": torch.randn(2, 3)})
        >>> torch.allclose(z, c["a"] + c["v"] + f.bias)
        True
    """

    def __init__(self, dims: Mapping[str, int], num_classes: int):
        super().__init__()
        self.modalities = tuple(dims)
        self.fc = nn.ModuleDict({m: nn.Linear(d, num_classes) for m, d in dims.items()})

    @property
    def bias(self) -> torch.Tensor:
        return sum(self.fc[m].bias for m in self.modalities)

    def forward(self, feats):
        shares = {m: feats[m] @ self.fc[m].weight.t() for m in self.modalities}
        return sum(shares.values()) + self.bias, shares


class ConcatFusion(Fusion):
    """``z = W [phi^1; ...; phi^M] + b``.

    Example:
        >>> f = ConcatFusion({"a": 4, "v": 3}, num_classes=5)
        >>> z, c = f({"a": torch.randn(2, 4), "v": torch.randn(2, 3)})
        >>> torch.allclose(z, c["a"] + c["v"] + f.bias, atol=1e-6)
        True
    """

    def __init__(self, dims: Mapping[str, int], num_classes: int):
        super().__init__()
        self.modalities = tuple(dims)
        self.dims = dict(dims)
        self.fc = nn.Linear(sum(dims.values()), num_classes)

    @property
    def bias(self) -> torch.Tensor:
        return self.fc.bias

    def forward(self, feats):
        shares, start = {}, 0
        for m in self.modalities:
            d = self.dims[m]
            shares[m] = feats[m] @ self.fc.weight[:, start:start + d].t()
            start += d
        z = self.fc(torch.cat([feats[m] for m in self.modalities], dim=1))
        return z, shares


class FiLMFusion(Fusion):
    """``z = W (gamma(phi^1) * P phi^2 + beta(phi^1)) + b`` (first modality conditions).

    Example:
        >>> f = FiLMFusion({"a": 4, "v": 3}, num_classes=5)
        >>> z, c = f({"a": torch.randn(2, 4), "v": torch.randn(2, 3)})
        >>> torch.allclose(z, c["a"] + c["v"] + f.bias, atol=1e-6)
        True
    """

    def __init__(self, dims: Mapping[str, int], num_classes: int, hidden: int | None = None):
        super().__init__()
        if len(dims) != 2:
            raise ValueError(f"film fusion needs exactly two modalities, got {list(dims)}")
        self.modalities = tuple(dims)
        cond, mod = self.modalities
        hidden = hidden or max(dims.values())
        self.proj = nn.Linear(dims[mod], hidden)
        self.film = nn.Linear(dims[cond], 2 * hidden)
        self.fc = nn.Linear(hidden, num_classes)

    @property
    def bias(self) -> torch.Tensor:
        return self.fc.bias

    def forward(self, feats):
        cond, mod = self.modalities
        gamma, beta = self.film(feats[cond]).chunk(2, dim=1)
        scaled = gamma * self.proj(feats[mod])
        shares = {cond: beta @ self.fc.weight.t(), mod: scaled @ self.fc.weight.t()}
        return self.fc(scaled + beta), shares


class GatingFusion(Fusion):
    """``z = W sum_m g_m * P^m phi^m + b`` with softmax gates over modalities.

    Example:
        >>> f = GatingFusion({"a": 4, "v": 3}, num_classes=5)
        >>> z, c = f({"a": torch.randn(2, 4), "v": torch.randn(2, 3)})
        >>> torch.allclose(z, c["a"] + c["v"] + f.bias, atol=1e-6)
        True
    """

    def __init__(self, dims: Mapping[str, int], num_classes: int, hidden: int | None = None):
        super().__init__()
        self.modalities = tuple(dims)
        hidden = hidden or max(dims.values())
        self.hidden = hidden
        self.proj = nn.ModuleDict({m: nn.Linear(d, hidden) for m, d in dims.items()})
        self.gate = nn.Linear(sum(dims.values()), hidden * len(dims))
        self.fc = nn.Linear(hidden, num_classes)

    @property
    def bias(self) -> torch.Tensor:
        return self.fc.bias

    def forward(self, feats):
        allf = torch.cat([feats[m] for m in self.modalities], dim=1)
        g = self.gate(allf).view(allf.shape[0], len(self.modalities), self.hidden).softmax(1)
        parts = {m: g[:, i] * self.proj[m](feats[m]) for i, m in enumerate(self.modalities)}
        shares = {m: p @ self.fc.weight.t() for m, p in parts.items()}
        return self.fc(sum(parts.values())), shares


def build_fusion(name: str, dims: Mapping[str, int], num_classes: int) -> Fusion:
    """Fusion head by name (one of :data:`FUSIONS`).

    Example:
        >>> type(build_fusion("film", {"audio": 8, "visual": 8}, 3)).__name__
        'FiLMFusion'
    """
    classes = {"sum": SumFusion, "concat": ConcatFusion, "film": FiLMFusion,
               "gating": GatingFusion}
    if name not in classes:
        raise ValueError(f"fusion must be one of {FUSIONS}, got {name!r}")
    return classes[name](dims, num_classes)
