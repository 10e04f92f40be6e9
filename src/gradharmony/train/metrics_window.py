"""The running averages behind one row of ``metrics.jsonl``: the steps since the last row."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import numpy as np

PERCENTILES = (5, 25, 50, 75, 95)


class MetricsWindow:
    """Sums over the finite steps since the last :meth:`row`.

    Example:
        >>> w = MetricsWindow(clock=iter([0.0, 2.0, 2.0]).__next__)
        >>> w.add(loss=3.0, loss_va=1.0, loss_vt=2.0, cos=np.array([0.5, -0.5]),
        ...       kept=np.array([1, 1]), projected=np.array([1, 0]), clips=8)
        >>> row = w.row(lr=0.1, gamma=0.0, counts={"skipped_nonfinite": 1})
        >>> row["loss"], row["cos_mean"], row["projected_frac"], row["clips_per_s"]
        (3.0, 0.0, 0.5, 4.0)
        >>> row["skipped_nonfinite"], w.clips
        (1, 0)
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self._reset()

    def _reset(self) -> None:
        self.cos: list[np.ndarray] = []
        self.loss: list[float] = []
        self.loss_va: list[float] = []
        self.loss_vt: list[float] = []
        self.kept = 0.0
        self.projected = 0.0
        self.groups = 0
        self.clips = 0
        self.t0 = self._clock()

    def add(self, *, loss: float, loss_va: float, loss_vt: float, cos: np.ndarray,
            kept: np.ndarray, projected: np.ndarray, clips: int) -> None:
        """One finite step: its losses, per-group cosines, kept and projected flags, clips."""
        self.cos.append(cos)
        self.kept += float(kept.sum())
        self.projected += float(projected.sum())
        self.groups += kept.size
        self.clips += clips
        self.loss.append(loss)
        self.loss_va.append(loss_va)
        self.loss_vt.append(loss_vt)

    def row(self, *, lr: float, gamma: float, counts: Mapping[str, int]) -> dict:
        """The metrics of the window (means, cosine percentiles, fractions, throughput, the
        run's ``counts``), then start a new window."""
        elapsed = self._clock() - self.t0
        allc = np.concatenate(self.cos)
        pct = np.percentile(allc, PERCENTILES)
        out = {"loss": float(np.mean(self.loss)),
               "loss_va": float(np.mean(self.loss_va)),
               "loss_vt": float(np.mean(self.loss_vt)),
               "lr": float(lr), "gamma": float(gamma),
               "cos_mean": float(allc.mean()),
               **{f"cos_p{q}": float(v) for q, v in zip(PERCENTILES, pct)},
               "kept_frac": self.kept / max(1, self.groups),
               "projected_frac": self.projected / max(1, self.groups),
               "clips_per_s": self.clips / max(elapsed, 1e-9),
               **{k: int(v) for k, v in counts.items()}}
        self._reset()
        return out
