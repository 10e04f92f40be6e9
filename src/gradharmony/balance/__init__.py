"""Balanced audio-visual classification: OGM-GE, Gradient-Blending, Modality-Drop, UMT, ATF.

When one modality dominates a jointly trained late-fusion classifier, the other's encoder is
under-optimised. This package provides the classifier (one encoder per modality, fusion by
sum, concat, FiLM or gating), the balancing methods, and the training program behind
``gradharmony train-av``.

Example:
    >>> from gradharmony.balance import ogm_coefficients, gblend_weights
    >>> ogm_coefficients({"audio": 3.0, "visual": 1.0}, alpha=0.0)
    {'audio': 1.0, 'visual': 1.0}
"""

from gradharmony.balance.atf import ATFConfig, TrackingFactor, atf_targets
from gradharmony.balance.data import load_av_features
from gradharmony.balance.encoders import ENCODERS, build_encoder, register_encoder
from gradharmony.balance.features import (
    audio_features,
    extract_features,
    video_features,
    with_motion,
)
from gradharmony.balance.fusion import FUSIONS, build_fusion
from gradharmony.balance.gblend import gblend_weights, overfit_to_generalization_ratio
from gradharmony.balance.mdrop import modality_drop_masks
from gradharmony.balance.model import AVClassifier, check_batch
from gradharmony.balance.ogm import (
    OGMConfig,
    discrepancy_ratios,
    modality_scores,
    modulate_gradients,
    ogm_coefficients,
    select_parameters,
)
from gradharmony.balance.trainer import (
    METHODS,
    AVConfig,
    prepare_splits,
    train_av,
    train_teachers,
)
from gradharmony.balance.umt import (
    check_teachers,
    distillation_loss,
    distillation_targets,
    load_teacher,
    save_teacher,
)

__all__ = [
    "ATFConfig", "AVClassifier", "AVConfig", "ENCODERS", "FUSIONS", "METHODS", "OGMConfig",
    "TrackingFactor", "atf_targets", "audio_features", "build_encoder", "build_fusion",
    "check_batch", "check_teachers", "discrepancy_ratios", "distillation_loss",
    "distillation_targets", "extract_features", "gblend_weights", "load_av_features",
    "load_teacher", "modality_drop_masks", "modality_scores", "modulate_gradients",
    "ogm_coefficients", "overfit_to_generalization_ratio", "prepare_splits",
    "register_encoder", "save_teacher", "select_parameters", "train_av", "train_teachers",
    "video_features", "with_motion",
]
