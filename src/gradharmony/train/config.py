"""The pre-training configuration: a structured OmegaConf schema, loading, overrides, checks.

Every key has a typed default here, so a YAML preset or a ``key=value`` override with an
unknown key or a badly typed value fails at load time with a message naming the key, and
:func:`validate` checks the values (method names, group size dividing the per-rank batch,
data paths) before any work is done.

Example:
    >>> cfg = load_config(overrides=["method=gr", "batch_size=8", "data.kind=random"])
    >>> cfg.method, cfg.batch_size, cfg.optim.lr
    ('gr', 8, 0.0001)
    >>> load_config(overrides=["methd=gr"])
    Traceback (most recent call last):
    ...
    gradharmony.train.config.ConfigError: unknown config key 'methd' ...
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

PRECISIONS = ("fp32", "bf16")
DATA_KINDS = ("shards", "random")


class ConfigError(ValueError):
    """A configuration problem found before any work; the message names the key."""


@dataclass
class SourceConfig:
    """One shard set of the data mixture, sampled i.i.d. with ``weight``."""

    shards: str = "???"
    weight: float = 1.0
    has_text: bool = True


@dataclass
class DataConfig:
    """Where the triplets come from and how clips are sampled.

    ``kind=random`` draws batches of random tensors shaped like the real batch dict (no I/O):
    for throughput measurements and smoke tests only. ``vocab`` is a vocabulary file
    (``gradharmony build-vocab``); when unset it is built from the text sets' narrations into
    the run directory. ``vocab_size`` is used by ``kind=random`` only. Clips: ``frames`` at
    ``fps``, resized to ``size`` and cropped to ``crop`` pixels, ``clip_seconds`` of audio at
    ``audio_rate``; ``candidates`` narrations of ``text_len`` tokens. ``cache_dir`` trains from
    the decoded-clip cache (built there on first use). A remote shard (URL) whose stream fails
    is re-opened up to ``retries`` times after ``retry_backoff * 2**attempt`` seconds.
    """

    kind: str = "shards"
    mixture: list[SourceConfig] = field(default_factory=list)
    vocab: str | None = None
    vocab_size: int = 1000
    num_workers: int = 0
    cache_dir: str | None = None
    shuffle_buffer: int = 64
    retries: int = 3
    retry_backoff: float = 2.0
    frames: int = 16
    fps: float = 8.0
    size: int = 72
    crop: int = 64
    audio_rate: int = 16000
    clip_seconds: float = 2.0
    text_len: int = 16
    candidates: int = 4


@dataclass
class ModelConfig:
    """Which VATT to build: a preset name of ``gradharmony.models.create_model``.

    ``kwargs`` go to the model factory unchanged; ``sync_bn`` turns the heads' BatchNorm into
    SyncBatchNorm under DDP.
    """

    preset: str = "tiny"
    modality_agnostic: bool = True
    temperature: float = 0.07
    sync_bn: bool = True
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimConfig:
    """Adam with linear warm-up then cosine annealing from ``lr`` down to ``min_lr``."""

    lr: float = 1e-4
    min_lr: float = 5e-5
    warmup_steps: int = 10_000
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8


@dataclass
class TrainConfig:
    """The whole pre-training run. ``batch_size`` is global (summed over ranks)."""

    name: str = "run"
    run_dir: str = "runs"
    method: str = "both"
    granularity: str = "batch"
    gamma0: float = -0.3
    gamma_end: float = 0.0
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    batch_size: int = 64
    steps: int = 300
    seed: int = 0
    precision: str = "fp32"
    grad_checkpointing: bool = False
    compile: bool = False
    device: str = "auto"
    log_every: int = 10
    ckpt_every: int = 100
    keep_every: int = 0
    conflicts_every: int = 1
    max_nonfinite: int = 5
    resume: bool = False


def _schema() -> DictConfig:
    return OmegaConf.structured(TrainConfig)


def _explain(err: OmegaConfBaseException) -> ValueError:
    key = getattr(err, "full_key", None) or getattr(err, "key", None) or "?"
    if isinstance(err, (ConfigKeyError, ConfigAttributeError)):
        return ConfigError(f"unknown config key {key!r} ({err.msg.splitlines()[0]})")
    return ConfigError(f"bad value for config key {key!r}: {err.msg.splitlines()[0]}")


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | tuple = (),
                check: bool = True) -> DictConfig:
    """Merge the defaults, a YAML preset and ``key=value`` overrides, then :func:`validate`.

    Raises ``ValueError`` naming the key on an unknown key, a badly typed value or a bad value.

    Example:
        >>> load_config(overrides=["steps=ten"])
        Traceback (most recent call last):
        ...
        gradharmony.train.config.ConfigError: bad value for config key 'steps': ...
    """
    cfg = _schema()
    layers = []
    if path is not None:
        if not Path(path).is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        layers.append(OmegaConf.load(path))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
    try:
        for layer in layers:
            cfg = OmegaConf.merge(cfg, layer)
        for item in overrides:
            # one key at a time: `data.mixture.0.shards=...` indexes the list (a merged
            # dotlist would turn `0` into a dict key and fail to merge)
            key, value = item.split("=", 1)
            OmegaConf.update(cfg, key, OmegaConf.from_dotlist([f"v={value}"]).v, merge=True)
    except OmegaConfBaseException as err:
        raise _explain(err) from None
    except (TypeError, IndexError) as err:
        raise ConfigError(f"cannot apply overrides {list(overrides)}: {err}") from None
    if check:
        validate(cfg)
    return cfg


def parse_granularity(value: str | int) -> str | int:
    """The config's ``granularity`` as :class:`gradharmony.harmonize.Harmonizer` takes it:
    ``"batch"`` and ``"sample"`` stay strings, a group size (``"8"`` or ``8``) becomes an int.
    Which values are valid is the Harmonizer's rule; an invalid one is a ``ValueError``.

    Example:
        >>> parse_granularity("sample"), parse_granularity("8")
        ('sample', 8)
        >>> parse_granularity("0")
        Traceback (most recent call last):
        ...
        ValueError: granularity must be 'batch', 'sample' or a positive int group size, got 0
    """
    from gradharmony.harmonize import Harmonizer

    text = str(value)
    granularity = int(text) if text.lstrip("-").isdigit() else text
    Harmonizer._parse_granularity(granularity)
    return granularity


def _expand(pattern: str) -> list[str]:
    """Shard files of a pattern: a directory (its ``*.tar``), a glob, or ``{a..b}`` braces
    (a URL is brace-expanded only: a remote set cannot be listed)."""
    from gradharmony.data.streams import is_url

    if is_url(pattern):
        from gradharmony.data.sources import ShardSet

        return ShardSet(pattern).paths()
    if os.path.isdir(pattern):
        return sorted(glob.glob(os.path.join(pattern, "*.tar")))
    try:
        import braceexpand

        patterns = list(braceexpand.braceexpand(pattern))
    except ImportError:  # pragma: no cover - webdataset ships braceexpand
        patterns = [pattern]
    return sorted(f for p in patterns for f in glob.glob(p))


def validate(cfg: DictConfig, world_size: int = 1) -> None:
    """Check values that types alone cannot; raise ``ValueError`` naming the key.

    Example:
        >>> cfg = load_config(overrides=["data.kind=random"], check=False)
        >>> cfg.granularity = "7"
        >>> validate(cfg)
        Traceback (most recent call last):
        ...
        gradharmony.train.config.ConfigError: granularity: group size 7 does not divide ... 64
    """
    def need(ok: bool, key: str, msg: str) -> None:
        if not ok:
            raise ConfigError(f"{key}: {msg}")

    from gradharmony.harmonize import METHODS

    need(cfg.method in METHODS, "method", f"unknown method {cfg.method!r}; expected one of "
         f"{', '.join(METHODS)}")
    need(cfg.precision in PRECISIONS, "precision", f"expected one of {PRECISIONS}, "
         f"got {cfg.precision!r}")
    need(cfg.batch_size > 0, "batch_size", f"must be positive, got {cfg.batch_size}")
    need(cfg.batch_size % world_size == 0, "batch_size",
         f"global batch {cfg.batch_size} is not divisible by the {world_size} ranks")
    per_rank = cfg.batch_size // world_size
    try:
        gran = parse_granularity(str(cfg.granularity))
    except ValueError as err:
        raise ConfigError(f"granularity: {err}") from None
    if isinstance(gran, int):
        need(per_rank % gran == 0, "granularity",
             f"group size {gran} does not divide the per-rank batch of {per_rank}")
    need(cfg.steps > 0, "steps", f"must be positive, got {cfg.steps}")
    need(cfg.gamma0 <= 1 and cfg.gamma_end <= 1 and cfg.gamma0 >= -1 and cfg.gamma_end >= -1,
         "gamma0/gamma_end", "cosine thresholds must lie in [-1, 1]")
    need(cfg.log_every > 0, "log_every", "must be positive")
    need(cfg.ckpt_every > 0, "ckpt_every", "must be positive")
    need(cfg.keep_every >= 0, "keep_every", "must be >= 0 (0 keeps only checkpoints/last.pt)")
    need(cfg.conflicts_every >= 0, "conflicts_every", "must be >= 0 (0 disables)")
    need(cfg.max_nonfinite > 0, "max_nonfinite", "must be positive")
    need(cfg.device in ("auto", "cpu", "cuda"), "device", f"expected auto, cpu or cuda, "
         f"got {cfg.device!r}")
    o = cfg.optim
    need(o.lr > 0, "optim.lr", "must be positive")
    need(0 <= o.min_lr <= o.lr, "optim.min_lr", f"must lie in [0, optim.lr={o.lr}]")
    need(o.warmup_steps >= 0, "optim.warmup_steps", "must be >= 0")
    d = cfg.data
    need(d.kind in DATA_KINDS, "data.kind", f"expected one of {DATA_KINDS}, got {d.kind!r}")
    need(d.candidates >= 1, "data.candidates", "must be >= 1")
    need(d.num_workers >= 0, "data.num_workers", "must be >= 0")
    need(d.retries >= 0 and d.retry_backoff >= 0, "data.retries/data.retry_backoff",
         f"must be >= 0, got {d.retries} and {d.retry_backoff}")
    need(0 < d.crop <= d.size, "data.crop", f"must lie in [1, data.size={d.size}]")
    if d.kind == "shards":
        need(len(d.mixture) > 0, "data.mixture", "no shard set given (data.mixture is empty)")
        for i, src in enumerate(d.mixture):
            key = f"data.mixture[{i}]"
            need(not OmegaConf.is_missing(src, "shards"), f"{key}.shards", "missing")
            need(src.weight > 0, f"{key}.weight", f"must be positive, got {src.weight}")
            try:
                found = _expand(src.shards)
            except ValueError as err:  # a URL whose scheme needs a missing package
                raise ConfigError(f"{key}.shards: {err}") from None
            need(len(found) > 0, f"{key}.shards", f"no shard files match {src.shards!r}")
        if d.vocab is not None:
            need(Path(d.vocab).is_file(), "data.vocab", f"file {d.vocab!r} does not exist")
        _check_clip(cfg)


def _check_clip(cfg: DictConfig) -> None:
    """The clip geometry the reader will decode (:class:`~gradharmony.data.clip.ClipSpec`)."""
    from gradharmony.data.clip import ClipSpec

    try:
        ClipSpec.from_config(cfg)
    except ValueError as err:
        raise ConfigError(f"data: {err} (keys data.frames, data.fps, data.size, data.crop, "
                          "data.audio_rate, data.clip_seconds, data.text_len, "
                          "data.candidates)") from None


def run_path(cfg: DictConfig) -> Path:
    """The run directory ``run_dir/name``.

    Example:
        >>> str(run_path(load_config(overrides=["data.kind=random", "name=x"])))
        'runs/x'
    """
    return Path(cfg.run_dir) / cfg.name
