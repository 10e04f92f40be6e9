"""The synthetic tri-modal benchmark: rendered videos, synthesised sound, template narrations,
with ground-truth misalignment at chosen rates, written as WebDataset shards. See
``docs/synthetic.md``.

- :func:`av_classification_arrays`: the audio-visual classification set (audio dominates) as
  in-memory arrays, without encoding.
- :func:`noise_config` / :class:`NoiseConfig`: misalignment kinds, rates and candidate bags.
- :func:`oracle_levels`: the retrieval of attribute oracles on planned clips.

Example:
    >>> from gradharmony.data.synthetic import av_classification_arrays
    >>> d = av_classification_arrays(2, seed=1, frames=2, size=16, sample_rate=8000)
    >>> sorted(k for k in d if k in ("audio", "label", "video"))
    ['audio', 'label', 'video']
"""

from .avclass import AVClassConfig, av_classification_arrays, av_sample
from .events import COLOURS, MOTIONS, SHAPES, Event
from .oracle import oracle_levels
from .plan import NoiseConfig, noise_config

__all__ = [
    "AVClassConfig",
    "COLOURS",
    "Event",
    "MOTIONS",
    "NoiseConfig",
    "SHAPES",
    "av_classification_arrays",
    "av_sample",
    "noise_config",
    "oracle_levels",
]
