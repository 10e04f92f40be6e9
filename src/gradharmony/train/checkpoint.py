"""Atomic, resumable checkpoints: model, optimizer, scheduler, harmonizer, RNG, data position.

A checkpoint is written to a temporary file in the same directory and moved into place with
``os.replace``, so a run killed mid-write leaves the previous checkpoint intact.

Example:
    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> save_atomic({"step": 3}, d / "last.pt")
    >>> torch.load(d / "last.pt")["step"], sorted(p.name for p in d.iterdir())
    (3, ['last.pt'])
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch


def save_atomic(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file next to ``path``, fsync, then ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def rng_state() -> dict:
    """The state of every random generator a run draws from (python, numpy, torch, CUDA).

    Example:
        >>> s = rng_state(); a = torch.rand(1); set_rng_state(s); bool(torch.rand(1) == a)
        True
    """
    state = {"python": random.getstate(), "numpy": np.random.get_state(),  # noqa: NPY002
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` captured."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def latest_checkpoint(directory: str | os.PathLike) -> Path | None:
    """``directory/last.pt`` when it exists, else ``None``.

    Example:
        >>> latest_checkpoint("/nonexistent") is None
        True
    """
    path = Path(directory) / "last.pt"
    return path if path.is_file() else None


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint written by the trainer, with a clear error when it is unreadable."""
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:
        raise RuntimeError(f"cannot read checkpoint {str(path)!r}: {err}") from err
