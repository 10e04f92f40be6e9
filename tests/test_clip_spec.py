"""The clip geometry is defined once: ClipSpec carries the config's names and defaults, one
function reads it from a run config, one table maps it to the model's names."""

from __future__ import annotations

import dataclasses

import pytest
from omegaconf import OmegaConf

from gradharmony.data.cache import cache_key
from gradharmony.data.clip import ClipSpec
from gradharmony.evaluate.run import VATT_CLIP_FIELDS, model_sizes
from gradharmony.models.config import VATTConfig
from gradharmony.train.config import ConfigError, DataConfig, load_config

#: a value for each ClipSpec field, different from its default, forming a valid clip
OTHER = {"frames": 6, "fps": 5.0, "size": 40, "crop": 32, "audio_rate": 8000,
         "clip_seconds": 1.5, "text_len": 7, "candidates": 3}


def test_the_clip_fields_are_the_data_config_keys_with_the_same_defaults():
    data = {f.name: f.default for f in dataclasses.fields(DataConfig)}
    spec = {f.name: f.default for f in dataclasses.fields(ClipSpec)}
    assert set(spec) == set(OTHER)
    assert {name: data[name] for name in spec} == spec


def test_every_quantity_is_read_from_a_training_config():
    cfg = load_config(overrides=["data.kind=random", *[f"data.{k}={v}" for k, v in
                                                       OTHER.items()]])
    assert ClipSpec.from_config(cfg) == ClipSpec(**OTHER)
    plain = OmegaConf.to_container(cfg, resolve=True)
    assert ClipSpec.from_config(plain) == ClipSpec(**OTHER)
    assert ClipSpec.from_config(load_config(overrides=["data.kind=random"])) == ClipSpec()


def test_a_missing_crop_is_the_size_and_a_bad_geometry_names_the_field():
    assert ClipSpec.from_config({"data": {"size": 48}}).crop == 48
    with pytest.raises(ValueError, match="text_len"):
        ClipSpec.from_config({"data": {"text_len": 0}})
    with pytest.raises(ValueError, match="clip_seconds"):
        ClipSpec.from_config({"data": {"frames": 40}})


def test_the_model_sizes_follow_the_clip_fields():
    vatt = {f.name for f in dataclasses.fields(VATTConfig)}
    assert set(VATT_CLIP_FIELDS) <= vatt and set(VATT_CLIP_FIELDS.values()) <= set(OTHER)
    sizes = model_sizes({"data": OTHER})
    assert sizes == {"video_frames": 6, "video_size": 32, "audio_seconds": 1.5,
                     "audio_rate": 8000, "max_words": 7, "num_candidates": 3}
    assert model_sizes({"data": {"crop": 32}}) == {"video_size": 32}  # the rest: the preset's


def test_the_cache_key_ignores_the_text_sizes_only():
    spec = ClipSpec(**OTHER)
    key = cache_key(["a.tar"], spec, text=True)
    assert cache_key(["a.tar"], dataclasses.replace(spec, text_len=9, candidates=1),
                     text=True) == key
    for name, value in {"frames": 4, "fps": 10.0, "size": 80, "crop": 16, "audio_rate": 16000,
                        "clip_seconds": 3.0}.items():
        changed = dataclasses.replace(spec, **{name: value})
        assert cache_key(["a.tar"], changed, text=True) != key, name


def test_a_training_config_whose_clips_cannot_be_decoded_is_refused(tmp_path):
    (tmp_path / "a.tar").write_bytes(b"")
    base = ["data.kind=shards", f"data.mixture=[{{shards: '{tmp_path}/a.tar'}}]"]
    assert load_config(overrides=base).data.frames == 16
    with pytest.raises(ConfigError, match=r"data: ClipSpec: 40 frames .* clip_seconds=2.0"):
        load_config(overrides=[*base, "data.frames=40"])
    with pytest.raises(ConfigError, match="text_len must be >= 1"):
        load_config(overrides=[*base, "data.text_len=0"])
