"""UMT: distillation targets and loss against hand computations, teacher cache, bad input."""

import json
import os

import pytest
import torch

from gradharmony.balance import (
    AVConfig,
    distillation_loss,
    distillation_targets,
    load_teacher,
    prepare_splits,
    train_av,
    train_teachers,
)
from gradharmony.balance.cli import main
from gradharmony.balance.encoders import TemporalConvEncoder


def _tiny(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(3, (n,), generator=g)
    audio = torch.randn(n, 4, 3, generator=g) + 2.0 * torch.nn.functional.one_hot(y, 3)[:, None]
    visual = torch.randn(n, 3, 5, generator=g)
    visual[:, :, 0] += 0.5 * y[:, None]
    return {"audio": audio, "visual": visual, "label": y}


@pytest.fixture(scope="module")
def splits():
    return prepare_splits(_tiny(96, 0), _tiny(64, 1))


def test_distillation_target_is_the_teachers_conv_features_by_hand():
    # teacher: conv1d encoder, in_dim 1, dim 1; conv1 = [1, 2, -1] + bias 0.5, conv2 = [0, 1, 0]
    # (identity) + bias -1, both with zero padding 1, ReLU after each, mean over time.
    enc = TemporalConvEncoder(1, 1)
    with torch.no_grad():
        enc.conv1.weight.copy_(torch.tensor([[[1.0, 2.0, -1.0]]]))
        enc.conv1.bias.fill_(0.5)
        enc.conv2.weight.copy_(torch.tensor([[[0.0, 1.0, 0.0]]]))
        enc.conv2.bias.fill_(-1.0)
    x = torch.tensor([[[1.0], [3.0], [-2.0], [0.0]]])      # one sample, T = 4
    # padded x: 0, 1, 3, -2, 0, 0 -> conv1 at t: x[t-1] + 2 x[t] - x[t+1] + 0.5
    #   t0: 0 + 2 - 3 + .5 = -0.5 -> 0 ; t1: 1 + 6 + 2 + .5 = 9.5 ; t2: 3 - 4 - 0 + .5 = -0.5 -> 0
    #   t3: -2 + 0 - 0 + .5 = -1.5 -> 0
    # conv2 = h - 1 -> relu: 0, 8.5, 0, 0 -> mean 2.125
    targets = distillation_targets({"audio": enc}, {"audio": x}, ["audio"])
    assert targets["audio"].shape == (1, 1)
    assert float(targets["audio"][0, 0]) == pytest.approx(2.125)
    assert not targets["audio"].requires_grad


def test_distillation_loss_closed_form_and_gradient():
    student = {"audio": torch.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True),
               "visual": torch.tensor([[0.5, 0.0], [0.0, -1.0]], requires_grad=True)}
    teacher = {"audio": torch.tensor([[0.0, 0.0], [1.0, 1.0]]),
               "visual": torch.tensor([[0.5, 2.0], [1.0, 1.0]])}
    # audio: (1 + 4 + 4 + 9) / 4 = 4.5 ; visual: (0 + 4 + 1 + 4) / 4 = 2.25 ; w = 0.2
    loss = distillation_loss(student, teacher, weight=0.2)
    assert float(loss.detach()) == pytest.approx(0.2 * (4.5 + 2.25))
    loss.backward()
    # d/ds of w * mean((s - t)^2) = w * 2 (s - t) / 4
    torch.testing.assert_close(student["audio"].grad,
                               torch.tensor([[0.1, 0.2], [0.2, 0.3]]))
    torch.testing.assert_close(student["visual"].grad,
                               torch.tensor([[0.0, -0.2], [-0.1, -0.2]]))
    with pytest.raises(ValueError, match="shape"):
        distillation_loss({"audio": torch.zeros(2, 3)}, {"audio": torch.zeros(2, 2)}, 1.0)


def test_umt_without_a_teacher_for_every_modality_is_an_error(splits):
    tr, te = splits
    enc, _ = train_teachers(tr, te, AVConfig(method="umt", epochs=1, progress=False))
    with pytest.raises(ValueError, match=r"teacher per modality.*\['visual'\]"):
        train_av(tr, te, AVConfig(method="umt", epochs=1, progress=False),
                 teachers={"audio": enc["audio"]})
    with pytest.raises(ValueError, match="only used by method 'umt'"):
        train_av(tr, te, AVConfig(method="joint", epochs=1, progress=False), teachers=enc)


@pytest.mark.parametrize("kwargs, match", [
    ({"umt_weight": 0.0}, "umt-weight"),
    ({"umt_weight": -1.0}, "umt-weight"),
    ({"umt_weight": float("nan")}, "umt-weight"),
    ({"umt_teacher_epochs": 0}, "umt-teacher-epochs"),
    ({"lr": 0.0}, "--lr"),
    ({"lr": -0.1}, "--lr"),
])
def test_umt_bad_settings_fail_before_training(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AVConfig(method="umt", **kwargs)


def test_cli_rejects_a_non_positive_umt_weight(capsys):
    with pytest.raises(SystemExit):
        main(["--method", "umt", "--umt-weight", "0"])
    assert "umt-weight" in capsys.readouterr().err


def test_teachers_are_the_unimodal_baselines_and_are_cached(splits, tmp_path):
    tr, te = splits
    cfg = AVConfig(method="umt", epochs=2, batch_size=32, progress=False,
                   umt_cache_dir=str(tmp_path))
    enc, info = train_teachers(tr, te, cfg)
    assert not info["audio"]["cached"] and len(os.listdir(tmp_path)) == 2
    # the audio teacher is exactly the `audio` baseline of the same seed and settings
    base = train_av(tr, te, AVConfig(method="audio", epochs=2, batch_size=32, progress=False))
    for k, v in base["model"].encoders["audio"].state_dict().items():
        torch.testing.assert_close(enc["audio"].state_dict()[k], v)
    again, info2 = train_teachers(tr, te, cfg)
    assert info2["audio"]["cached"] and info2["visual"]["cached"]
    assert info2["audio"]["acc"] == info["audio"]["acc"]
    for m in ("audio", "visual"):
        for k, v in enc[m].state_dict().items():
            torch.testing.assert_close(again[m].state_dict()[k], v)
    # another seed, other data, or other teacher epochs -> other files, not a stale teacher
    train_teachers(tr, te, AVConfig(method="umt", epochs=2, batch_size=32, seed=1,
                                    progress=False, umt_cache_dir=str(tmp_path)))
    assert len(os.listdir(tmp_path)) == 4
    tr2 = dict(tr)
    tr2["visual"] = tr["visual"] + 0.01
    _, info3 = train_teachers(tr2, te, cfg)
    assert info3["audio"]["cached"] and not info3["visual"]["cached"]
    _, info4 = train_teachers(tr, te, AVConfig(method="umt", epochs=2, batch_size=32,
                                               umt_teacher_epochs=1, progress=False,
                                               umt_cache_dir=str(tmp_path)))
    assert not info4["audio"]["cached"]


def test_teacher_cache_never_unpickles_objects(tmp_path):
    path = tmp_path / "t.pt"
    torch.save({"state_dict": {}, "meta_json": json.dumps({}), "obj": _Evil()}, path)
    with pytest.raises(Exception, match="(?i)weights.only|unpickl|global"):
        load_teacher(str(path))


class _Evil:
    pass


def test_distillation_pulls_student_features_to_the_teacher(splits):
    tr, te = splits
    enc, _ = train_teachers(tr, te, AVConfig(method="umt", epochs=4, batch_size=16,
                                             progress=False))
    targets = distillation_targets(enc, tr, ["audio", "visual"])
    dist = {}
    for method in ("joint", "umt"):
        cfg = AVConfig(method=method, epochs=4, batch_size=16, umt_weight=10.0, progress=False)
        model = train_av(tr, te, cfg, teachers=enc if method == "umt" else None)["model"]
        with torch.no_grad():
            feats = model.encode(tr)
        dist[method] = {m: float(((feats[m] - targets[m]) ** 2).mean()) for m in targets}
    for m in ("audio", "visual"):
        assert dist["umt"][m] < 0.5 * dist["joint"][m]


def test_table_grid_trains_each_teacher_once_per_seed(tmp_path):
    cache, out = tmp_path / "cache", tmp_path / "table"
    small = ["--frames", "4", "--size", "16", "--cache-dir", str(cache), "--epochs", "1",
             "--n-train", "64", "--n-test", "32", "--optimizers", "sgd"]
    assert main(["--table", "--methods", "umt", "atf", "--fusions", "sum", "concat",
                 "--seeds", "0", "1", "--out", str(out), *small]) == 0
    text = (out / "table.md").read_text()
    assert "| umt | sum |" in text and "| atf | concat |" in text
    # 2 seeds x 2 modalities, although UMT ran with two fusions per seed
    assert len(os.listdir(cache / "umt-teachers")) == 4
    recs = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert len(recs) == 8
    umt = [r for r in recs if r["method"] == "umt"]
    assert all(r["umt_teacher_acc"] == umt[0]["umt_teacher_acc"] for r in umt
               if r["seed"] == umt[0]["seed"])
    atf = [r for r in recs if r["method"] == "atf"]
    assert all(len(r["atf_factor_per_epoch"]["visual"]) == 1 for r in atf)
    assert (out / "balance_atf_factors.png").exists()
