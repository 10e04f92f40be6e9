"""Atomic, resumable checkpoints that load without running code from the file.

A checkpoint holds only what ``torch.load(weights_only=True)`` accepts: tensors, numbers,
strings, booleans, ``None``, lists, tuples and dicts. The model, optimizer, scheduler and
harmonizer state dicts are of that kind already; the RNG states are stored as ints, lists and
tensors (:func:`rng_state`), the data position and the config as plain containers.
:func:`save_checkpoint` checks this before writing, and every read goes through
:func:`load_checkpoint`, which uses ``weights_only=True`` and refuses anything else with a
one-line :class:`~gradharmony.train.runfiles.RunFileError` naming the file and what it would
have called; nothing of such a file runs.

Checkpoints written before this format differ only in their numpy RNG state (a pickled
``numpy.ndarray``); :data:`SAFE_GLOBALS` lets the weights-only loader rebuild such arrays,
which runs no code from the file, so those checkpoints still load.

A checkpoint is written to a temporary file in the same directory and moved into place with
``os.replace``, so a run killed mid-write leaves the previous checkpoint intact. Besides the
rolling ``last.pt``, ``keep_every=N`` keeps ``step_XXXXXXXX.pt`` every N steps
(:func:`kept_path`); :func:`find_checkpoint` picks one of them.

Example:
    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> save_checkpoint({"step": 3}, d, keep=True)
    >>> load_checkpoint(d / "last.pt")["step"], sorted(p.name for p in d.iterdir())
    (3, ['last.pt', 'step_00000003.pt'])
"""

from __future__ import annotations

import os
import pickle
import random
import re
import tempfile
import zipfile
from collections import OrderedDict
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gradharmony.train.runfiles import RunFileError, _one_line

#: the only globals beyond torch's weights-only defaults that a checkpoint may name: numpy
#: array reconstruction (the function under its numpy 2.x and 1.x names, the array, dtype and
#: uint32 dtype classes), which checkpoints written before the plain format need for their
#: numpy RNG state. It rebuilds arrays of numbers only: an object array needs more, refused.
_RECONSTRUCT = np.zeros(0).__reduce__()[0]
SAFE_GLOBALS: list = [
    (_RECONSTRUCT, "numpy._core.multiarray._reconstruct"),
    (_RECONSTRUCT, "numpy.core.multiarray._reconstruct"),
    np.ndarray,
    np.dtype,
    type(np.dtype(np.uint32)),  # the Mersenne Twister keys' dtype (numpy.dtypes.UInt32DType)
]

_SCALARS = (str, bytes, int, float, bool, type(None), torch.Size, torch.dtype, torch.device)
_KEPT = re.compile(r"step_(\d{8,})\.pt")


def _check_plain(obj: Any, where: str = "checkpoint") -> None:
    """Raise ``TypeError`` naming the first entry ``weights_only=True`` could not load."""
    kind = type(obj)
    if kind in (dict, OrderedDict):
        for k, v in obj.items():
            _check_plain(k, f"{where} key")
            _check_plain(v, f"{where}[{k!r}]")
    elif kind in (list, tuple):
        for i, v in enumerate(obj):
            _check_plain(v, f"{where}[{i}]")
    elif kind not in _SCALARS and kind not in (torch.Tensor, torch.nn.Parameter):
        # exact types: a numpy scalar is a float subclass, but loading it needs numpy
        raise TypeError(f"{where} is a {type(obj).__module__}.{type(obj).__qualname__}; a "
                        "checkpoint holds only tensors, numbers, strings, lists and dicts")


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


def kept_path(directory: str | os.PathLike, step: int) -> Path:
    """Where the kept checkpoint of ``step`` lives.

    Example:
        >>> kept_path("runs/x/checkpoints", 40).name
        'step_00000040.pt'
    """
    return Path(directory) / f"step_{int(step):08d}.pt"


def save_checkpoint(state: dict, directory: str | os.PathLike, keep: bool = False) -> None:
    """Write ``state`` (with its ``"step"``) atomically as ``directory/last.pt`` and, when
    ``keep``, also as :func:`kept_path`. Raises ``TypeError`` before writing anything when
    ``state`` holds an object that :func:`load_checkpoint` would refuse."""
    _check_plain(state)
    if keep:
        save_atomic(state, kept_path(directory, state["step"]))
    save_atomic(state, Path(directory) / "last.pt")


def rng_state() -> dict:
    """The state of every random generator a run draws from (python, numpy, torch, CUDA), as
    plain ints, lists and tensors.

    Example:
        >>> s = rng_state(); a = torch.rand(1); set_rng_state(s); bool(torch.rand(1) == a)
        True
    """
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002
    state = {"python": {"version": version, "internal": list(internal), "gauss": gauss},
             "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)),
                       "pos": int(pos), "has_gauss": int(has_gauss),
                       "cached_gaussian": float(cached)},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` captured (or the tuples of checkpoints before it)."""
    py = state["python"]
    if isinstance(py, dict):
        py = (py["version"], tuple(py["internal"]), py["gauss"])
    random.setstate(py)
    npy = state["numpy"]
    if isinstance(npy, dict):
        npy = (npy["kind"], np.asarray(npy["keys"], dtype=np.int64).astype(np.uint32),
               npy["pos"], npy["has_gauss"], npy["cached_gaussian"])
    np.random.set_state(npy)  # noqa: NPY002
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


def kept_checkpoints(directory: str | os.PathLike) -> dict[int, Path]:
    """The kept checkpoints of a run's ``checkpoints/`` folder, ``{step: path}`` by step.

    Example:
        >>> kept_checkpoints("/nonexistent")
        {}
    """
    d = Path(directory)
    if not d.is_dir():
        return {}
    found = {int(m.group(1)): p for p in d.iterdir() if (m := _KEPT.fullmatch(p.name))}
    return dict(sorted(found.items()))


def find_checkpoint(directory: str | os.PathLike, which: str | int = "last") -> Path:
    """The checkpoint file ``which`` names in ``directory`` (a run's ``checkpoints/``).

    ``which`` is ``"last"``, a step (``40`` or ``"40"``: the kept ``step_00000040.pt``), or a
    file name in ``directory``. A missing one raises :class:`RunFileError` listing those
    there are.

    Example:
        >>> find_checkpoint("/nonexistent", 40)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        gradharmony.train.runfiles.RunFileError: no checkpoint step 40 in /nonexistent; ...
    """
    d = Path(directory)
    text = str(which).strip()
    if text == "last":
        path, label = d / "last.pt", "last (last.pt)"
    elif text.isdigit():
        path, label = kept_path(d, int(text)), f"step {int(text)}"
    elif Path(text).name == text and text.endswith(".pt"):
        path, label = d / text, text
    else:
        raise RunFileError(f"checkpoint: expected 'last', a step number or a .pt file name "
                           f"in {d}, got {which!r}")
    if path.is_file():
        return path
    have = (["last"] if (d / "last.pt").is_file() else []) + \
        [f"step {s}" for s in kept_checkpoints(d)]
    raise RunFileError(f"no checkpoint {label} in {d}; available: "
                       f"{', '.join(have) if have else 'none'}")


def _unsafe_names(path) -> list[str]:
    """The globals a checkpoint's pickle names beyond the allowed ones (read, not run)."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # torch < 2.5, or a pickle it cannot scan
        return []
    allowed = {g[1] if isinstance(g, tuple) else f"{g.__module__}.{g.__qualname__}"
               for g in SAFE_GLOBALS}
    return sorted(set(names) - allowed)


def _refusal(path, err: pickle.UnpicklingError) -> str:
    text = str(err)
    m = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    names = _unsafe_names(path) or ([m.group(1)] if m else [])
    if names:
        reason = f"loading it would import and call {', '.join(names)}"
    else:
        m = re.search(r"WeightsUnpickler error:(.*?)(Check the documentation|$)", text, re.S)
        reason = _one_line(m.group(1) if m else text)
    return (f"refusing checkpoint {path}: {reason}; checkpoints are read with "
            "torch.load(weights_only=True), which accepts only tensors, numbers, strings, "
            "lists and dicts, so nothing of this file was run")


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint with ``torch.load(weights_only=True)`` (plus :data:`SAFE_GLOBALS`).

    A checkpoint that would need anything else (a pickled object whose loading calls a
    function) is refused with :class:`RunFileError` naming the file and the function; an
    unreadable file raises it too.

    Example:
        >>> load_checkpoint("/nonexistent/last.pt")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        gradharmony.train.runfiles.RunFileError: cannot read checkpoint /nonexistent/last.pt: ...
    """
    try:
        # torch < 2.5 has no safe_globals: checkpoints of the older format are refused there
        allow = getattr(torch.serialization, "safe_globals", None)
        with allow(SAFE_GLOBALS) if allow else nullcontext():
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise RunFileError(_refusal(path, err)) from None
    except (OSError, EOFError, RuntimeError, ValueError, zipfile.BadZipFile) as err:
        raise RunFileError(f"cannot read checkpoint {path}: {_one_line(err)}") from None
    if not isinstance(ckpt, dict):
        raise RunFileError(f"refusing checkpoint {path}: expected a dict of states, got a "
                           f"{type(ckpt).__name__}")
    return ckpt
