"""gradharmony: multimodal contrastive pre-training with cross-modality gradient harmonization.

The library is split into independent packages:

- :mod:`gradharmony.harmonize` -- model-agnostic per-triplet gradient conflicts and methods
- :mod:`gradharmony.models` -- VATT (modality-agnostic or modality-specific)
- :mod:`gradharmony.losses` -- NCE and MIL-NCE with cross-device negatives
- :mod:`gradharmony.data` -- shard reading, clip sampling, the synthetic benchmark
- :mod:`gradharmony.evaluate` -- retrieval, linear probes, fine-tuning, alignment scoring
- :mod:`gradharmony.balance` -- OGM-GE, Gradient-Blending, Modality-Drop
- :mod:`gradharmony.train` / :mod:`gradharmony.report` -- the training program and reports
"""

__version__ = "0.1.0"
