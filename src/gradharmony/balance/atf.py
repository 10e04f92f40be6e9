"""Adaptive Tracking Factor (ATF): a per-modality factor on each encoder's learning rate.

After Sun, Mai & Hu, "Learning to Balance the Learning Rates Between Various Modalities via
Adaptive Tracking Factor" (IEEE Signal Processing Letters, 2021): every modality m has a
factor ``lambda^m`` and its encoder is trained with learning rate ``lr * lambda^m``
(the fusion head and the uni-modal heads keep ``lr``); the factors are updated during
training from how far each modality has converged, so a modality that is learnt quickly is
slowed down and one that lags is sped up. The paper's exact update rules are not public in
a form we could consult, so the rule below is our own, in that spirit (each choice is a
parameter of :class:`TrackingFactor`):

1. per step, a per-modality loss ``l^m_t`` is measured (``signal``, chosen by the trainer:
   ``"head"`` = the cross-entropy of a linear uni-modal head trained on the *detached*
   encoder features, or ``"slice"`` = the cross-entropy of the modality's OGM slice of the
   fused logits);
2. it is smoothed: ``L^m_t = mu * L^m_{t-1} + (1 - mu) * l^m_t``, ``L^m_1 = l^m_1``
   (``smoothing`` mu in [0, 1));
3. the convergence ratio is ``r^m_t = L^m_t / l^m_1`` (loss relative to the first step:
   small = learnt quickly);
4. the target factor equalises convergence: ``tau^m_t = M * (r^m_t)^beta / sum_j (r^j_t)^beta``
   (mean 1 over the M modalities, so the average encoder learning rate is unchanged;
   ``power`` beta >= 0, beta = 0 is naive joint training);
5. the factor tracks its target:
   ``lambda^m_t = lambda^m_{t-1} + gamma * (tau^m_t - lambda^m_{t-1})``, ``lambda^m_0 = init``
   (``rate`` gamma in (0, 1], ``init`` > 0), then clipped to ``[min_factor, max_factor]``.

Example:
    >>> tf = TrackingFactor(["audio", "visual"], rate=1.0, power=1.0, smoothing=0.0)
    >>> tf.update({"audio": 2.0, "visual": 2.0})     # first step: both ratios are 1
    {'audio': 1.0, 'visual': 1.0}
    >>> tf.update({"audio": 0.5, "visual": 1.5})     # r = 0.25, 0.75 -> 2 * r / 1.0
    {'audio': 0.5, 'visual': 1.5}
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

ATF_SIGNALS = ("head", "slice")


@dataclass(frozen=True)
class ATFConfig:
    """Settings of the tracking factor (see the module docstring for the rule).

    Example:
        >>> ATFConfig(rate=0.0)
        Traceback (most recent call last):
        ...
        ValueError: ATF rate (--atf-rate) must be in (0, 1], got 0.0
    """

    rate: float = 0.05
    power: float = 1.0
    smoothing: float = 0.9
    init: float = 1.0
    min_factor: float = 0.05
    max_factor: float = 10.0
    signal: str = "head"

    def __post_init__(self) -> None:
        def finite(name, v):
            if not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"ATF {name} must be a finite number, got {v!r}")

        for name in ("rate", "power", "smoothing", "init", "min_factor", "max_factor"):
            finite(name, getattr(self, name))
        if not 0.0 < self.rate <= 1.0:
            raise ValueError(f"ATF rate (--atf-rate) must be in (0, 1], got {self.rate}")
        if self.power < 0.0:
            raise ValueError(f"ATF power (--atf-power) must be >= 0, got {self.power}")
        if not 0.0 <= self.smoothing < 1.0:
            raise ValueError(f"ATF smoothing (--atf-smoothing) must be in [0, 1), "
                             f"got {self.smoothing}")
        if self.init <= 0.0:
            raise ValueError(f"ATF initial factor (--atf-init) must be > 0, got {self.init}")
        if not 0.0 < self.min_factor <= self.max_factor:
            raise ValueError(f"ATF factor bounds (--atf-min/--atf-max) must satisfy "
                             f"0 < min <= max, got {self.min_factor}, {self.max_factor}")
        if not self.min_factor <= self.init <= self.max_factor:
            raise ValueError(f"ATF initial factor (--atf-init) {self.init} is outside "
                             f"[{self.min_factor}, {self.max_factor}]")
        if self.signal not in ATF_SIGNALS:
            raise ValueError(f"ATF signal (--atf-signal) must be one of {ATF_SIGNALS}, "
                             f"got {self.signal!r}")


def atf_targets(ratios: Mapping[str, float], power: float) -> dict[str, float]:
    """Target factors ``tau^m = M * r_m^beta / sum_j r_j^beta`` (mean 1).

    Example:
        >>> atf_targets({"a": 0.25, "v": 0.75}, power=1.0)
        {'a': 0.5, 'v': 1.5}
        >>> atf_targets({"a": 0.25, "v": 0.75}, power=0.0)
        {'a': 1.0, 'v': 1.0}
    """
    if len(ratios) < 2:
        raise ValueError(f"ATF needs at least two modalities, got {sorted(ratios)}")
    for m, r in ratios.items():
        if not (math.isfinite(r) and r > 0):
            raise ValueError(f"ATF convergence ratio of {m!r} must be finite and > 0, got {r}")
    powered = {m: float(r) ** power for m, r in ratios.items()}
    total = sum(powered.values())
    return {m: len(ratios) * p / total for m, p in powered.items()}


class TrackingFactor:
    """Per-modality learning-rate factors updated once per step by :meth:`update`.

    Args:
        modalities: the modalities (at least two).
        rate, power, smoothing, init, min_factor, max_factor: see :class:`ATFConfig`
            (the same names; ``signal`` is the trainer's business).

    ``factors`` holds the current ``lambda^m`` (``init`` before the first update).

    Example:
        >>> tf = TrackingFactor(["a", "v"], rate=0.5, power=1.0, smoothing=0.0)
        >>> tf.update({"a": 1.0, "v": 1.0})
        {'a': 1.0, 'v': 1.0}
        >>> {m: round(f, 4) for m, f in tf.update({"a": 0.5, "v": 1.0}).items()}
        {'a': 0.8333, 'v': 1.1667}
    """

    def __init__(self, modalities: Sequence[str], rate: float = 0.05, power: float = 1.0,
                 smoothing: float = 0.9, init: float = 1.0, min_factor: float = 0.05,
                 max_factor: float = 10.0):
        cfg = ATFConfig(rate, power, smoothing, init, min_factor, max_factor)
        self.modalities = tuple(modalities)
        if len(self.modalities) < 2 or len(set(self.modalities)) != len(self.modalities):
            raise ValueError(f"ATF needs at least two distinct modalities, got {modalities}")
        self.cfg = cfg
        self.factors = {m: float(init) for m in self.modalities}
        self.first: dict[str, float] | None = None
        self.smoothed: dict[str, float] | None = None

    def update(self, losses: Mapping[str, float]) -> dict[str, float]:
        """Feed one step's per-modality losses; return the new factors."""
        if sorted(losses) != sorted(self.modalities):
            raise ValueError(f"ATF losses must have the modalities {sorted(self.modalities)}, "
                             f"got {sorted(losses)}")
        vals = {m: float(losses[m]) for m in self.modalities}
        for m, v in vals.items():
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"ATF loss of {m!r} must be finite and > 0, got {v}")
        mu = self.cfg.smoothing
        if self.first is None:
            self.first, self.smoothed = dict(vals), dict(vals)
        else:
            self.smoothed = {m: mu * self.smoothed[m] + (1 - mu) * vals[m] for m in vals}
        ratios = {m: self.smoothed[m] / self.first[m] for m in vals}
        target = atf_targets(ratios, self.cfg.power)
        g, lo, hi = self.cfg.rate, self.cfg.min_factor, self.cfg.max_factor
        self.factors = {m: min(hi, max(lo, f + g * (target[m] - f)))
                        for m, f in self.factors.items()}
        return dict(self.factors)
