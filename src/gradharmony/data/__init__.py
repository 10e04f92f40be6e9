"""gradharmony.data: tri-modal clips from WebDataset shards, and the synthetic benchmark.

Names are imported on first use, so ``import gradharmony.data`` stays cheap.

- :func:`make_loader`, :class:`ShardSet`, :class:`ClipLoader`, :class:`SkipCounter`:
  reading shards (mixtures, DDP x worker sharding, skip counting, resumable position), local
  or from URLs (``https://``, ``pipe:``, fsspec schemes: :mod:`gradharmony.data.streams`)
- :class:`ClipSpec`, :func:`decode_clip`: PyAV decoding and clip sampling
- :class:`TextTokenizer`: the narration vocabulary
- :func:`gradharmony.data.collate.collate`: samples -> the batch dict of
  ``docs/architecture.md`` (the name ``gradharmony.data.collate`` is that module)
- :func:`build_cache`, :func:`open_cache`: the decoded-clip cache
- :func:`make_shards`: a folder of videos + a caption manifest -> shards
- :func:`encode_mp4`, :class:`ShardWriter`, :func:`write_shards`: writing shards
- :func:`generate_synthetic` (``gradharmony.data.synthetic.generate.generate``),
  :class:`ClipSize`, :class:`NoiseConfig`, :func:`noise_config`,
  :func:`av_classification_arrays`, :class:`AVClassConfig`: the synthetic benchmark

Example:
    >>> from gradharmony.data import ClipSpec
    >>> ClipSpec(frames=8, fps=4.0).frames
    8
"""

from __future__ import annotations

import importlib

# exported name -> (module under gradharmony.data, attribute)
_EXPORTS = {
    "ClipSpec": ("clip", "ClipSpec"),
    **{n: ("decode", n) for n in ("SampleError", "decode_clip", "decode_clip_raw",
                                  "augment_frames")},
    "TextTokenizer": ("text", "TextTokenizer"),
    **{n: ("sources", n) for n in ("ShardSet", "SkipCounter", "SKIP_REASONS")},
    "TriModalDataset": ("dataset", "TriModalDataset"),
    **{n: ("loader", n) for n in ("ClipLoader", "make_loader")},
    "iter_tar_groups": ("streams", "iter_tar_groups"),
    "build_cache": ("cache", "build_cache"),
    "open_cache": ("cache", "open_cache"),
    "make_shards": ("make_shards", "make_shards"),
    **{n: ("writer", n) for n in ("encode_mp4", "ShardWriter", "write_shards")},
    "generate_synthetic": ("synthetic.generate", "generate"),
    **{n: ("synthetic.plan", n) for n in ("ClipSize", "NoiseConfig", "noise_config")},
    **{n: ("synthetic", n) for n in ("av_classification_arrays", "AVClassConfig")},
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        module, attr = _EXPORTS[name]
        value = getattr(importlib.import_module(f"gradharmony.data.{module}"), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'gradharmony.data' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
