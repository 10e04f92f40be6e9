"""Loading a trained run for evaluation: its config, model weights and vocabulary.

Reads the run directory the trainer writes: ``config.yaml``, ``checkpoints/last.pt``
(``{"model": state_dict, "step": ...}``, or a kept ``checkpoints/step_XXXXXXXX.pt``) and
``vocab.json`` (a tokenizers JSON file), all as data only.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from gradharmony.data.clip import ClipSpec


@dataclass
class LoadedRun:
    """A run ready for evaluation: ``config`` (plain dict), ``model`` (eval mode),
    ``tokenizer`` (``None`` when the run has no ``vocab.json``), the checkpoint ``step``."""

    dir: Path
    config: dict
    model: torch.nn.Module
    tokenizer: object | None
    step: int
    checkpoint: Path

    @property
    def spec(self) -> ClipSpec:
        """The clip geometry the model was trained on (from ``config.data``)."""
        return ClipSpec.from_config(self.config)

    @property
    def text_len(self) -> int:
        return self.spec.text_len

    @property
    def candidates(self) -> int:
        return self.spec.candidates


#: VATT config field <- :class:`ClipSpec` field (the ``data`` key of a run config): the one
#: place where the model's names for the clip sizes meet the data's
VATT_CLIP_FIELDS = {"video_frames": "frames", "video_size": "crop",
                    "audio_seconds": "clip_seconds", "audio_rate": "audio_rate",
                    "max_words": "text_len", "num_candidates": "candidates"}


def _plain(config: Mapping) -> dict:
    from omegaconf import DictConfig, OmegaConf

    return OmegaConf.to_container(config, resolve=True) if isinstance(config, DictConfig) \
        else dict(config)


def model_sizes(config: Mapping, vocab_size: int | None = None) -> dict:
    """The fields of the VATT config that follow from a run config: the input sizes of
    ``data`` and the vocabulary size (``vocab_size`` when given, else ``data.vocab_size``).
    Keys the config lacks are left out.

    Example:
        >>> s = model_sizes({"data": {"frames": 8, "crop": 64, "vocab_size": 1000}}, 50)
        >>> s["video_frames"], s["video_size"], s["vocab_size"]
        (8, 64, 50)
    """
    config = _plain(config)
    data = config.get("data", {})
    out = {field: data[key] for field, key in VATT_CLIP_FIELDS.items() if key in data}
    if "vocab_size" in data:
        out["vocab_size"] = data["vocab_size"]
    if "grad_checkpointing" in config:
        out["grad_checkpointing"] = config["grad_checkpointing"]
    if vocab_size:
        out["vocab_size"] = vocab_size
    return out


def build_model(config: Mapping, vocab_size: int | None = None) -> torch.nn.Module:
    """The model a run config names (``model.preset``), for training and evaluation alike.

    A preset name goes to ``gradharmony.models.create_model`` with the sizes the data imply
    (:func:`model_sizes`) under ``model.kwargs`` (the kwargs win; a trained run's
    ``config.yaml`` spells all sizes out in them). ``"package.module:function"`` calls that
    function with ``model.kwargs`` only (your own model, following the model output contract
    of docs/architecture.md).

    Example:
        >>> type(build_model({"model": {"preset": "tiny", "kwargs": {"depth": 1}}})).__name__
        'VATT'
    """
    config = _plain(config)
    m = config.get("model", {})
    preset = m.get("preset", "tiny")
    kwargs = dict(m.get("kwargs") or {})
    agnostic = bool(m.get("modality_agnostic", True))
    if ":" in preset:
        module, func = preset.split(":", 1)
        return getattr(importlib.import_module(module), func)(modality_agnostic=agnostic,
                                                              **kwargs)
    from gradharmony.models import create_model

    return create_model(preset, modality_agnostic=agnostic,
                        **{**model_sizes(config, vocab_size), **kwargs})


def _text_table_size(model: torch.nn.Module) -> int | None:
    sizes = [m.num_embeddings for name, m in model.named_modules()
             if isinstance(m, torch.nn.Embedding) and "text" in name.lower()
             and "pos" not in name.lower()]
    return max(sizes) if sizes else None


def load_run(run_dir: str | os.PathLike, device: str | torch.device = "cpu",
             checkpoint: str | int = "last", allow_factory: str | None = None) -> LoadedRun:
    """Load ``run_dir`` for evaluation; the model is put in eval mode on ``device``.

    ``checkpoint`` picks ``checkpoints/last.pt`` (``"last"``), a kept step (``40``) or a file
    name in ``checkpoints/`` (:func:`~gradharmony.train.checkpoint.find_checkpoint`). Nothing
    of the run directory is executed: the checkpoint is read with ``weights_only=True`` and
    ``config.yaml`` with a safe loader; a ``model.preset`` naming a function to call
    (``"package.module:function"``) is called only when ``allow_factory`` names the same
    function, since a shared run could otherwise name any installed callable.

    Raises ``ValueError``/``RuntimeError`` with the path when the run has no config, no
    checkpoint, or a vocabulary that does not fit the model's word table, and
    :class:`~gradharmony.train.runfiles.RunFileError` (an ``InputError``) for a refused file.

    Example:
        >>> load_run("/nonexistent/run")
        Traceback (most recent call last):
        ...
        ValueError: run directory '/nonexistent/run' does not exist
    """
    from gradharmony.train.checkpoint import find_checkpoint, load_checkpoint
    from gradharmony.train.runfiles import RunFileError, read_config

    rdir = Path(run_dir)
    if not rdir.is_dir():
        raise ValueError(f"run directory {str(rdir)!r} does not exist")
    cfg_path = rdir / "config.yaml"
    if not cfg_path.is_file():
        raise ValueError(f"run {str(rdir)!r} has no config.yaml: not a gradharmony run directory")
    config = read_config(cfg_path)
    preset = str(config.get("model", {}).get("preset", "tiny"))
    if ":" in preset and preset != allow_factory:
        raise RunFileError(f"refusing {cfg_path}: model.preset names the function {preset!r} "
                           "to build the model; calling a function a run directory names can "
                           f"run any code, so pass --allow-model-factory {preset} if you "
                           "trust this run")
    if checkpoint == "last" and not (rdir / "checkpoints" / "last.pt").is_file():
        raise RuntimeError(f"run {str(rdir)!r} has no checkpoint (checkpoints/last.pt): "
                           "train it first (gradharmony pretrain) or point --run elsewhere")
    ckpt_path = find_checkpoint(rdir / "checkpoints", checkpoint)
    ckpt = load_checkpoint(ckpt_path)
    state = ckpt.get("model", ckpt)
    if not isinstance(state, dict):
        raise RuntimeError(f"checkpoint {str(ckpt_path)!r} holds no model state dict")
    model = build_model(config)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise RuntimeError(f"checkpoint {str(ckpt_path)!r} does not fit the model of "
                           f"config.yaml: {str(err).splitlines()[0]}") from err
    tokenizer = None
    vocab_path = rdir / "vocab.json"
    if vocab_path.is_file():
        from gradharmony.data.text import TextTokenizer

        tokenizer = TextTokenizer.load(vocab_path)
        table = _text_table_size(model) or config.get("data", {}).get("vocab_size")
        if table is not None and tokenizer.vocab_size > int(table):
            raise ValueError(f"vocabulary mismatch: {vocab_path} has {tokenizer.vocab_size} "
                             f"words but the model's text embedding has {table} rows")
    model.to(device).eval()
    step = int(ckpt.get("step", 0))
    return LoadedRun(rdir, config, model, tokenizer, step, ckpt_path)
