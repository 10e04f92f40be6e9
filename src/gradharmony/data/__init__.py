"""gradharmony.data: tri-modal clips from WebDataset shards, and the synthetic benchmark.

Names are imported on first use, so ``import gradharmony.data`` stays cheap.

- :func:`make_loader`, :class:`ShardSet`, :class:`ClipLoader`, :class:`SkipCounter`:
  reading shards (mixtures, DDP x worker sharding, skip counting, resumable position)
- :class:`ClipSpec`, :func:`decode_clip`: PyAV decoding and clip sampling
- :class:`TextTokenizer`: the narration vocabulary
- :func:`gradharmony.data.collate.collate`: samples -> the batch dict of
  ``docs/architecture.md`` (the name ``gradharmony.data.collate`` is that module)
- :func:`build_cache`, :func:`open_cache`: the decoded-clip cache
- :func:`encode_mp4`, :class:`ShardWriter`, :func:`write_shards`: writing shards

Example:
    >>> from gradharmony.data import ClipSpec
    >>> ClipSpec(frames=8, fps=4.0).frames
    8
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "ClipSpec": "decode", "SampleError": "decode", "decode_clip": "decode",
    "decode_clip_raw": "decode", "augment_frames": "decode",
    "TextTokenizer": "text",
    "ShardSet": "dataset", "SkipCounter": "dataset", "SKIP_REASONS": "dataset",
    "ClipLoader": "dataset", "TriModalDataset": "dataset", "make_loader": "dataset",
    "iter_tar_groups": "dataset",
    "build_cache": "cache", "open_cache": "cache",
    "encode_mp4": "writer", "ShardWriter": "writer", "write_shards": "writer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"gradharmony.data.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'gradharmony.data' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
