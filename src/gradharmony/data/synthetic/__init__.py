"""The synthetic tri-modal benchmark: rendered videos, synthesised sound, template narrations,
with ground-truth misalignment at chosen rates (DESIGN.md §5). See ``docs/synthetic.md``.

- :func:`av_classification_arrays`: the audio-visual classification set (audio dominates) as
  in-memory arrays, without encoding.

Example:
    >>> from gradharmony.data.synthetic import av_classification_arrays
    >>> d = av_classification_arrays(2, seed=1, frames=2, size=16, sample_rate=8000)
    >>> sorted(k for k in d if k in ("audio", "label", "video"))
    ['audio', 'label', 'video']
"""

from .avclass import AVConfig, av_classification_arrays, av_sample
from .events import COLOURS, MOTIONS, SHAPES, Event

__all__ = [
    "AVConfig",
    "COLOURS",
    "Event",
    "MOTIONS",
    "SHAPES",
    "av_classification_arrays",
    "av_sample",
]
