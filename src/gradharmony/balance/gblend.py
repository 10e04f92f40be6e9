"""Gradient-Blending (Wang, Tran & Feiszli, CVPR 2020), online version.

Each branch k (one uni-modal head per modality, plus the fused head) has a training loss
``L^T_k`` and a loss on a held-out part of the training set ``L^V_k``. Between two checkpoints
N and N + n (one *super-epoch*)::

    O_N      = L^V_N - L^T_N                     (overfitting: generalization gap)
    dG_k     = L^V_{k,N} - L^V_{k,N+n}           (generalization gained)
    dO_k     = O_{k,N+n} - O_{k,N}               (overfitting gained)
    OGR_k    = |dO_k / dG_k|

and the blending weights that minimise the expected squared OGR of the blended update are
(the paper's Eq. for ``w*_k = <grad L*, v_k> / (Z sigma_k^2)`` with its first-order estimates)::

    w_k = (1 / Z) * dG_k / dO_k^2,    Z = sum_k dG_k / dO_k^2

A branch that did not generalize (``dG_k <= 0``) gets weight 0; ``|dO_k|`` is floored at
``eps`` so a branch that did not overfit gets a large, finite weight. If no branch has
``dG_k > 0`` the weights are uniform. The loss is ``L = sum_k w_k L_k``.

*Online*: the weights are re-estimated at the end of every super-epoch from the losses
measured at its start and end while training with the current weights (uniform in the first
super-epoch), so no separate uni-modal runs are needed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping


def gblend_weights(
    train_before: Mapping[str, float],
    val_before: Mapping[str, float],
    train_after: Mapping[str, float],
    val_after: Mapping[str, float],
    eps: float = 1e-6,
) -> dict[str, float]:
    """Blending weights ``w_k proportional to dG_k / dO_k^2``, normalised to sum to 1.

    All four mappings hold one loss per branch (same keys): training and held-out losses at
    the start (``before``) and end (``after``) of the super-epoch.

    Example:
        >>> # a: dG = 1.2 - 1.0 = 0.2, dO = (1.0 - 0.6) - (1.2 - 1.0) = 0.2 -> 0.2 / 0.04 = 5
        >>> # v: dG = 0.1, dO = (1.5 - 1.3) - (1.6 - 1.5) = 0.1 -> 0.1 / 0.01 = 10
        >>> w = gblend_weights({"a": 1.0, "v": 1.5}, {"a": 1.2, "v": 1.6},
        ...                    {"a": 0.6, "v": 1.3}, {"a": 1.0, "v": 1.5})
        >>> {k: round(x, 4) for k, x in w.items()}
        {'a': 0.3333, 'v': 0.6667}
    """
    keys = list(train_before)
    for name, d in (("val_before", val_before), ("train_after", train_after),
                    ("val_after", val_after)):
        if sorted(d) != sorted(keys):
            raise ValueError(f"{name} must have the branches {sorted(keys)}, got {sorted(d)}")
    if not keys:
        raise ValueError("gblend_weights needs at least one branch")
    if eps <= 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    raw = {}
    for k in keys:
        vals = (train_before[k], val_before[k], train_after[k], val_after[k])
        if not all(math.isfinite(float(v)) for v in vals):
            raise ValueError(f"losses of branch {k!r} must be finite, got {vals}")
        d_g = float(val_before[k]) - float(val_after[k])
        d_o = (float(val_after[k]) - float(train_after[k])) - (
            float(val_before[k]) - float(train_before[k])
        )
        raw[k] = d_g / max(abs(d_o), eps) ** 2 if d_g > 0 else 0.0
    z = sum(raw.values())
    if z <= 0:
        return {k: 1.0 / len(keys) for k in keys}
    return {k: v / z for k, v in raw.items()}


def overfit_to_generalization_ratio(
    train_before: float, val_before: float, train_after: float, val_after: float
) -> float:
    """``OGR = |dO / dG|`` of one branch (inf when it did not generalize at all).

    Example:
        >>> round(overfit_to_generalization_ratio(1.0, 1.2, 0.5, 1.0), 6)
        1.5
    """
    d_g = val_before - val_after
    d_o = (val_after - train_after) - (val_before - train_before)
    return math.inf if d_g == 0 else abs(d_o / d_g)
