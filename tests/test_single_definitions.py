"""Concepts defined once: the methods, the granularity rule, building the model of a config."""

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from gradharmony.evaluate.run import build_model
from gradharmony.harmonize import METHODS, Harmonizer
from gradharmony.models import create_model
from gradharmony.train.config import ConfigError, load_config, parse_granularity

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


def test_the_config_accepts_exactly_the_harmonizer_methods():
    for method in METHODS:
        assert load_config(overrides=["data.kind=random", f"method={method}"]).method == method
    with pytest.raises(ConfigError, match="method"):
        load_config(overrides=["data.kind=random", "method=pcgrad"])


@pytest.mark.parametrize("text", ["batch", "sample", "1", "4", "0", "-2", "samples", "2.5", ""])
def test_the_config_and_the_harmonizer_agree_on_granularity(text):
    model = torch.nn.Linear(2, 2)
    as_harmonizer_takes_it = int(text) if text.lstrip("-").isdigit() else text
    try:
        Harmonizer(model, granularity=as_harmonizer_takes_it, total_steps=1).remove()
        valid = True
    except ValueError:
        valid = False
    if valid:
        assert parse_granularity(text) == as_harmonizer_takes_it
    else:
        with pytest.raises(ValueError, match="granularity"):
            parse_granularity(text)


def _demo_cfg():
    return load_config(DEMO, ["data.kind=random", "data.vocab_size=50"], check=False)


def test_the_model_of_the_demo_config_has_the_sizes_of_its_data():
    cfg = _demo_cfg()
    model = build_model(cfg)
    by_hand = create_model("tiny", modality_agnostic=True, depth=2, width=128, heads=4,
                           mlp_dim=512, dropout=0.0, video_patch=(4, 8, 8), audio_patch=512,
                           head_norm="layernorm", droptoken_rate=0.0, video_frames=8,
                           video_size=64, audio_seconds=2.0, audio_rate=16000, max_words=12,
                           num_candidates=4, vocab_size=50)
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert shapes == {k: v.shape for k, v in by_hand.state_dict().items()}
    assert build_model(cfg, vocab_size=77).text_tokenizer.embed.num_embeddings == 77


def test_training_and_evaluation_build_the_same_model_from_a_config():
    cfg = _demo_cfg()
    as_saved = OmegaConf.to_container(cfg, resolve=True)  # evaluation reads a plain dict
    torch.manual_seed(0)
    trained = build_model(cfg).state_dict()
    torch.manual_seed(0)
    evaluated = build_model(as_saved).state_dict()
    assert trained.keys() == evaluated.keys()
    assert all(torch.equal(trained[k], evaluated[k]) for k in trained)
