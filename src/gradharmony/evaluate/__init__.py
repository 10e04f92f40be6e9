"""Evaluation of pre-trained models: the paper's Section 4.3 protocols and alignment scoring.

Pure metrics work on arrays; the protocols take a model following docs/architecture.md.

Example:
    >>> from gradharmony.evaluate import retrieval_metrics, auroc
    >>> retrieval_metrics([[1.0, 0.0], [0.0, 1.0]])["R@1"]
    100.0
    >>> auroc([0.2, 0.9], [0, 1])
    1.0
"""

from gradharmony.evaluate.auroc import auroc, bootstrap_auroc, cluster_bootstrap_auroc
from gradharmony.evaluate.probe import linear_probe, stratified_split, topk_accuracy
from gradharmony.evaluate.retrieval import (
    TIE_RULE,
    average_windows,
    bidirectional_retrieval,
    retrieval_metrics,
    truth_ranks,
)

__all__ = [
    "TIE_RULE",
    "auroc",
    "average_windows",
    "bidirectional_retrieval",
    "bootstrap_auroc",
    "cluster_bootstrap_auroc",
    "detection_aurocs",
    "encode_clips",
    "finetune",
    "linear_probe",
    "load_clips",
    "load_run",
    "retrieval_metrics",
    "score_clips",
    "stratified_split",
    "topk_accuracy",
    "truth_ranks",
]


def __getattr__(name):  # model- and data-dependent pieces load on first use
    lazy = {"encode_clips": "features", "finetune": "finetune", "load_clips": "clips",
            "load_run": "run", "score_clips": "scoring", "detection_aurocs": "scoring"}
    if name in lazy:
        import importlib

        return getattr(importlib.import_module(f"gradharmony.evaluate.{lazy[name]}"), name)
    raise AttributeError(f"module 'gradharmony.evaluate' has no attribute {name!r}")
