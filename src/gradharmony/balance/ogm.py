"""On-the-fly Gradient Modulation with Generalization Enhancement (OGM-GE, Peng et al. 2022).

Per mini-batch, each modality m gets a score from its slice of the fusion head
(see :mod:`gradharmony.balance.fusion` for the slice of each fusion)::

    s^m = sum_i softmax(W^m phi^m(x_i) + b / M)[y_i]

the discrepancy ratio of m to the mean of the other modalities::

    rho^m = s^m / mean_{j != m} s^j

and, for a dominant modality (rho^m > 1), a coefficient k^m < 1 that scales the gradients of
its encoder; every other modality keeps k = 1:

- ``form="paper"`` (default): ``k = 1 - tanh(alpha * relu(rho - 1))`` -- continuous at rho = 1;
- ``form="official"``: ``k = 1 - tanh(alpha * relu(rho))``, as in the authors' released code.

GE then adds ``N(0, std(g)^2)`` noise to each modulated parameter tensor, with ``std(g)`` the
standard deviation of the *unscaled* gradient entries of that tensor (Eq. 16:
``theta <- theta - lr * (k * g + h)``). As in Algorithm 1 and the released code, GE adds the
noise to the selected parameters of *every* modality (the non-dominant ones have k = 1);
``ge_modalities="dominant"`` restricts it to the modulated ones.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

FORMS = ("paper", "official")
PARAM_SETS = ("all", "conv")


def ogm_coefficients(
    scores: Mapping[str, float], alpha: float, form: str = "paper"
) -> dict[str, float]:
    """Modulation coefficient of each modality from its score.

    Args:
        scores: modality -> non-negative score ``s^m`` (at least two modalities).
        alpha: modulation strength, ``>= 0``.
        form: ``"paper"`` -> ``1 - tanh(alpha * relu(rho - 1))``; ``"official"`` ->
            ``1 - tanh(alpha * relu(rho))``. Both apply only where ``rho > 1``.

    Returns:
        modality -> k in (0, 1]; 1 for every modality whose ratio is ``<= 1``.

    Example:
        >>> k = ogm_coefficients({"audio": 30.0, "visual": 10.0}, alpha=0.5)
        >>> round(k["audio"], 4), k["visual"]      # rho_audio = 3 -> 1 - tanh(0.5 * 2)
        (0.2384, 1.0)
        >>> round(ogm_coefficients({"audio": 30.0, "visual": 10.0}, 0.5, "official")["audio"], 4)
        0.0949
    """
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    if not (isinstance(alpha, (int, float)) and math.isfinite(alpha)) or alpha < 0:
        raise ValueError(f"alpha must be a finite number >= 0, got {alpha!r}")
    if len(scores) < 2:
        raise ValueError(f"scores needs at least two modalities, got {list(scores)}")
    values = {m: float(s) for m, s in scores.items()}
    for m, s in values.items():
        if not math.isfinite(s) or s < 0:
            raise ValueError(f"scores[{m!r}] must be finite and >= 0, got {s}")
    ratios = discrepancy_ratios(values)
    out = {}
    for m, rho in ratios.items():
        if rho > 1:
            x = rho - 1 if form == "paper" else rho
            out[m] = 1.0 - math.tanh(alpha * max(x, 0.0))
        else:
            out[m] = 1.0
    return out


def discrepancy_ratios(scores: Mapping[str, float]) -> dict[str, float]:
    """``rho^m = s^m / mean_{j != m} s^j`` (inf when the others all score 0, 1 when all do).

    Example:
        >>> discrepancy_ratios({"a": 6.0, "b": 2.0, "c": 4.0})
        {'a': 2.0, 'b': 0.4, 'c': 1.0}
    """
    out = {}
    for m, s in scores.items():
        others = [float(v) for j, v in scores.items() if j != m]
        mean = sum(others) / len(others)
        if mean > 0:
            out[m] = float(s) / mean
        else:
            out[m] = 1.0 if s == 0 else math.inf
    return out


@torch.no_grad()
def modality_scores(
    slices: Mapping[str, torch.Tensor], label: torch.Tensor
) -> dict[str, float]:
    """``s^m = sum_i softmax(slice^m_i)[y_i]`` for each modality's logit slice ``[B, C]``.

    Example:
        >>> s = modality_scores({"a": torch.zeros(4, 2), "v": torch.zeros(4, 2)},
        ...                     torch.tensor([0, 1, 0, 1]))
        >>> s
        {'a': 2.0, 'v': 2.0}
    """
    out = {}
    for m, z in slices.items():
        if z.dim() != 2 or z.shape[0] != label.shape[0]:
            raise ValueError(
                f"slice {m!r} must be [B, C] with B = {label.shape[0]}, got {tuple(z.shape)}"
            )
        p = torch.softmax(z.float(), dim=1)
        out[m] = float(p.gather(1, label.view(-1, 1)).sum())
    return out


def select_parameters(module: nn.Module, which: str = "all") -> list[nn.Parameter]:
    """Parameters of an encoder that OGM modulates.

    ``"all"``: every parameter with a gradient; ``"conv"``: only the weights of convolution
    layers (``nn.Conv1d/2d/3d``), as in the released code (which modulates 4-D tensors).

    Example:
        >>> enc = nn.Sequential(nn.Conv1d(3, 4, 3), nn.Flatten(), nn.Linear(8, 2))
        >>> len(select_parameters(enc, "all")), len(select_parameters(enc, "conv"))
        (4, 1)
    """
    if which not in PARAM_SETS:
        raise ValueError(f"which must be one of {PARAM_SETS}, got {which!r}")
    if which == "all":
        return [p for p in module.parameters() if p.requires_grad]
    convs = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
    return [m.weight for m in module.modules() if isinstance(m, convs) and m.weight.requires_grad]


@dataclass
class OGMConfig:
    """Settings of OGM / OGM-GE.

    ``window = (start, end)`` is the half-open range of epochs ``start <= epoch < end`` in
    which modulation is active (``end=None``: until the end of training).
    """

    alpha: float = 0.8
    form: str = "paper"
    ge: bool = False
    window: tuple[int, int | None] = (0, None)
    params: str = "all"
    ge_modalities: str = "all"

    def __post_init__(self) -> None:
        if not math.isfinite(self.alpha) or self.alpha < 0:
            raise ValueError(f"OGM alpha must be a finite number >= 0, got {self.alpha}")
        if self.form not in FORMS:
            raise ValueError(f"OGM form must be one of {FORMS}, got {self.form!r}")
        if self.params not in PARAM_SETS:
            raise ValueError(f"OGM params must be one of {PARAM_SETS}, got {self.params!r}")
        if self.ge_modalities not in ("all", "dominant"):
            raise ValueError(
                f"ge_modalities must be 'all' or 'dominant', got {self.ge_modalities!r}"
            )
        start, end = self.window
        if start < 0 or (end is not None and end <= start):
            raise ValueError(
                f"OGM epoch window [start, end) = {self.window} is empty or negative; "
                "need 0 <= start < end (end=None: until the end)"
            )

    def active(self, epoch: int) -> bool:
        """Whether modulation applies at this (0-based) epoch."""
        start, end = self.window
        return epoch >= start and (end is None or epoch < end)


@torch.no_grad()
def modulate_gradients(
    params: Mapping[str, Iterable[nn.Parameter]],
    coefficients: Mapping[str, float],
    ge: bool = False,
    ge_modalities: str = "all",
    generator: torch.Generator | None = None,
) -> None:
    """Scale each modality's parameter gradients by its coefficient, plus GE noise.

    ``g <- k * g + h`` with ``h ~ N(0, std(g)^2)`` drawn per tensor when ``ge`` (std of the
    unscaled gradient; a single-entry tensor gets std 0). Parameters without a gradient are
    skipped; parameters of modalities absent from ``coefficients`` are left untouched.

    Example:
        >>> w = nn.Parameter(torch.ones(3)); w.grad = torch.full((3,), 2.0)
        >>> modulate_gradients({"audio": [w]}, {"audio": 0.25})
        >>> w.grad
        tensor([0.5000, 0.5000, 0.5000])
    """
    for m, plist in params.items():
        if m not in coefficients:
            continue
        k = float(coefficients[m])
        noisy = ge and (ge_modalities == "all" or k < 1.0)
        for p in plist:
            if p.grad is None:
                continue
            g = p.grad
            std = float(g.std()) if (noisy and g.numel() > 1) else 0.0
            if k != 1.0:
                g.mul_(k)
            if noisy and std > 0:
                noise = torch.randn(g.shape, generator=generator, dtype=g.dtype)
                g.add_(noise.to(g.device) * std)
