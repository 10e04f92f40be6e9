"""The run directory: metrics, TensorBoard, per-step conflict cosines (docs/training.md).

Layout of ``runs/NAME/``: ``config.yaml``, ``metrics.jsonl`` (one JSON object per logged
step), ``conflicts/`` (``cos_<first>-<last>.npz`` with one ``step_<t>`` array of per-group
cosines per recorded step and, since keys are logged, ``keys_<t>`` (the clip keys of the
batch), ``loss_va_<t>``, ``loss_vt_<t>`` (per-triplet losses); flushed at each
checkpoint), ``tb/``, ``checkpoints/``, ``vocab.json``.

Example:
    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> log = RunLog(d, tensorboard=False)
    >>> log.metrics(0, {"loss": 1.5}); log.conflicts(0, np.array([0.1, -0.2])); log.flush()
    >>> read_metrics(d)[0]["loss"], load_conflicts(d)[0].tolist()
    (1.5, [0.10000000149011612, -0.20000000298023224])
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np


def _clean(v):
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


class RunLog:
    """Writes ``metrics.jsonl``, TensorBoard scalars and the conflict cosines of a run."""

    def __init__(self, run_dir: str | os.PathLike, tensorboard: bool = True):
        self.dir = Path(run_dir)
        (self.dir / "conflicts").mkdir(parents=True, exist_ok=True)
        self._metrics = open(self.dir / "metrics.jsonl", "a")  # noqa: SIM115
        self._cos: dict[str, np.ndarray] = {}
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.dir / "tb"))

    def metrics(self, step: int, values: dict) -> None:
        """Append one JSON line ``{"step": step, **values}`` and the scalars to TensorBoard."""
        row = {"step": int(step), **{k: _clean(v) for k, v in values.items()}}
        self._metrics.write(json.dumps(row) + "\n")
        self._metrics.flush()
        if self._tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(k, v, step)

    def conflicts(self, step: int, cos: np.ndarray, keys: list[str] | None = None,
                  loss_va: np.ndarray | None = None, loss_vt: np.ndarray | None = None,
                  sets: list[int] | None = None) -> None:
        """Buffer the per-group cosines of one step (written at the next :meth:`flush`), with
        the clip keys of the batch, the per-triplet losses and the mixture set of each clip
        (``data.mixture`` index: keys repeat across sets) when given (one per triplet, in the
        batch's row order; at ``granularity="sample"`` row ``i`` of each is triplet ``i`` of
        ``cos``)."""
        t = int(step)
        self._cos[f"step_{t}"] = np.asarray(cos, dtype=np.float32)
        if keys is not None:
            self._cos[f"keys_{t}"] = np.asarray([str(k) for k in keys], dtype=np.str_)
        if sets is not None:
            self._cos[f"sets_{t}"] = np.asarray(sets, dtype=np.int64)
        for name, v in (("loss_va", loss_va), ("loss_vt", loss_vt)):
            if v is not None:
                self._cos[f"{name}_{t}"] = np.asarray(v, dtype=np.float32)

    def flush(self) -> None:
        """Write the buffered cosines as one ``.npz`` and flush TensorBoard."""
        if self._cos:
            steps = [int(k[5:]) for k in self._cos if k.startswith("step_")]
            name = f"cos_{min(steps):08d}-{max(steps):08d}.npz"
            tmp = self.dir / "conflicts" / f".{name}.tmp.npz"
            np.savez(tmp, **self._cos)
            os.replace(tmp, self.dir / "conflicts" / name)
            self._cos = {}
        if self._tb is not None:
            self._tb.flush()

    def drop_buffer(self) -> None:
        """Forget buffered cosines (a step that will be recomputed after a resume)."""
        self._cos = {}

    def close(self) -> None:
        self.flush()
        self._metrics.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """All rows of ``metrics.jsonl``."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_metrics(run_dir: str | os.PathLike, after_step: int) -> None:
    """Drop metric rows and conflict files of steps >= ``after_step`` (they will be redone)."""
    rows = [r for r in read_metrics(run_dir) if r["step"] < after_step]
    path = Path(run_dir) / "metrics.jsonl"
    if path.is_file():
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
        os.replace(tmp, path)
    for f in (Path(run_dir) / "conflicts").glob("cos_*.npz"):
        first = int(f.stem.split("_")[1].split("-")[0])
        if first >= after_step:
            f.unlink()


def load_conflicts(run_dir: str | os.PathLike) -> dict[int, np.ndarray]:
    """Every recorded step's per-group cosines, as ``{step: array}`` sorted by step."""
    return {t: r["cos"] for t, r in load_conflict_records(run_dir).items()}


def load_conflict_records(run_dir: str | os.PathLike) -> dict[int, dict[str, np.ndarray]]:
    """Every recorded step as ``{step: {"cos": ..., "keys": ..., "sets": ..., "loss_va": ...,
    "loss_vt": ...}}`` sorted by step; files written before keys, sets and losses were
    logged give ``{"cos": ...}`` only. Read with ``allow_pickle=False``: an archive holding pickled
    objects is refused.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> log = RunLog(d, tensorboard=False)
        >>> log.conflicts(3, np.array([0.5, -0.5]), keys=["a", "b"], loss_va=np.ones(2))
        >>> log.close()
        >>> r = load_conflict_records(d)[3]
        >>> sorted(r), r["keys"].tolist()
        (['cos', 'keys', 'loss_va'], ['a', 'b'])
    """
    from gradharmony.train.runfiles import read_npz

    out: dict[int, dict[str, np.ndarray]] = {}
    for f in sorted((Path(run_dir) / "conflicts").glob("cos_*.npz")):
        for k, v in read_npz(f).items():
            name, _, t = k.rpartition("_")
            field = "cos" if name == "step" else name
            out.setdefault(int(t), {})[field] = v
    return dict(sorted(out.items()))
