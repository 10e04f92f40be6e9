"""Configuration: presets, overrides, and errors that name the key before any work."""

import math
from pathlib import Path

import pytest

from gradharmony.train.cli import main
from gradharmony.train.config import ConfigError, load_config, validate
from gradharmony.train.schedule import warmup_cosine

CONFIGS = Path(__file__).parent.parent / "configs"
RANDOM = ["data.kind=random"]


@pytest.mark.parametrize("overrides, key", [
    (["methd=gr"], "methd"),
    (["optim.lrate=1"], "optim.lrate"),
    (["steps=ten"], "steps"),
    (["method=grr"], "method"),
    (["granularity=7"], "granularity"),
    (["granularity=samples"], "granularity"),
    (["precision=fp16"], "precision"),
    (["optim.min_lr=1.0"], "optim.min_lr"),
    (["data.kind=shards"], "data.mixture"),
    (["data.kind=shards", "data.mixture=[{shards: /no/such/dir/*.tar}]"],
     "data.mixture[0].shards"),
    (["data.kind=shards", "data.mixture=[{weight: 1.0}]"], "data.mixture[0].shards"),
])
def test_bad_config_names_the_key(overrides, key):
    with pytest.raises(ConfigError) as err:
        load_config(overrides=[*RANDOM, *overrides])
    assert key in str(err.value)


def test_group_size_must_divide_the_per_rank_batch():
    cfg = load_config(overrides=[*RANDOM, "batch_size=8", "granularity=4"])
    validate(cfg, world_size=1)
    with pytest.raises(ConfigError, match="granularity"):
        validate(cfg, world_size=4)  # 2 triplets per rank
    with pytest.raises(ConfigError, match="batch_size"):
        validate(cfg, world_size=3)


def test_cli_reports_config_errors_before_work(capsys, tmp_path):
    assert main([f"run_dir={tmp_path}", *RANDOM, "method=gradvak"]) == 2
    err = capsys.readouterr().err
    assert "method" in err and "gradvak" in err
    assert not any(tmp_path.iterdir())


def test_demo_preset_fits_the_cpu_budget():
    cfg = load_config(CONFIGS / "demo.yaml", check=False)
    assert cfg.method == "both" and cfg.model.preset == "tiny" and cfg.device == "cpu"
    assert cfg.data.frames == 8 and cfg.data.crop == 64 and cfg.data.audio_rate == 16000
    assert 100 <= cfg.steps <= 2000


def test_paper_preset_has_the_papers_hyper_parameters():
    cfg = load_config(CONFIGS / "paper.yaml", check=False)
    assert cfg.model.preset == "medium" and cfg.model.modality_agnostic
    assert (cfg.optim.lr, cfg.optim.min_lr, cfg.optim.warmup_steps) == (1e-4, 5e-5, 10_000)
    assert (cfg.steps, cfg.batch_size, cfg.precision) == (500_000, 2048, "bf16")
    assert (cfg.gamma0, cfg.gamma_end) == (-0.3, 0.0)


def test_schedule_against_closed_form():
    lr, lo, w, T = 1e-4, 5e-5, 10, 110
    assert warmup_cosine(0, lr, lo, w, T) == pytest.approx(1e-5)
    assert warmup_cosine(9, lr, lo, w, T) == pytest.approx(1e-4)
    assert warmup_cosine(10, lr, lo, w, T) == pytest.approx(1e-4)
    assert warmup_cosine(60, lr, lo, w, T) == pytest.approx(7.5e-5)  # half-way: the mean
    assert warmup_cosine(35, lr, lo, w, T) == pytest.approx(
        lo + (lr - lo) * math.cos(math.pi / 8) ** 2)
    assert warmup_cosine(110, lr, lo, w, T) == pytest.approx(lo)
    assert warmup_cosine(500, lr, lo, w, T) == pytest.approx(lo)


def test_override_indexes_a_list_entry_and_keeps_its_siblings():
    demo = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
    cfg = load_config(demo, ["data.mixture.0.weight=2.5", "steps=7"], check=False)
    source = cfg.data.mixture[0]
    assert (source.weight, source.shards, cfg.steps) == (2.5, "data/synthetic/train", 7)
    with pytest.raises(ConfigError, match=r"data\.mixture\[3\]"):
        load_config(demo, ["data.mixture.3.shards=x"], check=False)
