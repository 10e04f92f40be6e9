"""ATF: the tracking factor's update against hand computations, its use as the encoders'
learning-rate factor, and bad input."""

import pytest
import torch
import torch.nn.functional as F

from gradharmony.balance import (
    ATFConfig,
    AVClassifier,
    AVConfig,
    TrackingFactor,
    atf_targets,
    prepare_splits,
    train_av,
)
from gradharmony.balance.cli import main


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


def test_tracking_factor_four_steps_by_hand():
    tf = TrackingFactor(["audio", "visual"], rate=0.5, power=2.0, smoothing=0.5, init=1.0)
    # step 1: first losses (2, 1); smoothed = first; ratios (1, 1) -> targets (1, 1) -> (1, 1)
    assert tf.update({"audio": 2.0, "visual": 1.0}) == pytest.approx({"audio": 1.0, "visual": 1.0})
    # step 2: smoothed audio = .5*2 + .5*1 = 1.5, visual 1 -> ratios (.75, 1), squared
    #   (.5625, 1), sum 1.5625 -> targets (2*.5625/1.5625, 2/1.5625) = (.72, 1.28)
    #   factors 1 + .5*(.72 - 1) = .86, 1 + .5*(1.28 - 1) = 1.14
    assert tf.update({"audio": 1.0, "visual": 1.0}) == pytest.approx({"audio": 0.86,
                                                                       "visual": 1.14})
    # step 3: smoothed audio = .5*1.5 + .5*.5 = 1.0, visual 1 -> ratios (.5, 1), squared
    #   (.25, 1), sum 1.25 -> targets (.4, 1.6); factors .86 + .5*(.4 - .86) = .63,
    #   1.14 + .5*(1.6 - 1.14) = 1.37
    assert tf.update({"audio": 0.5, "visual": 1.0}) == pytest.approx({"audio": 0.63,
                                                                       "visual": 1.37})
    # step 4: smoothed audio = .5*1 + .5*1 = 1, visual .5*1 + .5*.2 = .6 -> ratios (.5, .6),
    #   squared (.25, .36), sum .61 -> targets (.5/.61, .72/.61) = (.8196721, 1.1803279)
    #   factors .63 + .5*(.8196721 - .63) = .7248361, 1.37 + .5*(1.1803279 - 1.37) = 1.2751639
    got = tf.update({"audio": 1.0, "visual": 0.2})
    assert got == pytest.approx({"audio": 0.7248361, "visual": 1.2751639}, abs=1e-7)
    assert sum(got.values()) == pytest.approx(2.0)      # mean factor stays at 1


def test_tracking_factor_clips_and_three_modalities():
    tf = TrackingFactor(["a", "v"], rate=1.0, power=1.0, smoothing=0.0, min_factor=0.3,
                        max_factor=1.5)
    tf.update({"a": 1.0, "v": 1.0})
    # ratios (.1, 1) -> targets (2*.1/1.1, 2/1.1) = (.18, 1.82) -> clipped to (.3, 1.5)
    assert tf.update({"a": 0.1, "v": 1.0}) == pytest.approx({"a": 0.3, "v": 1.5})
    # three modalities: ratios (.5, 1, 1.5) -> targets 3 * r / 3 = r
    assert atf_targets({"a": 0.5, "b": 1.0, "c": 1.5}, power=1.0) == pytest.approx(
        {"a": 0.5, "b": 1.0, "c": 1.5})


@pytest.mark.parametrize("kwargs, match", [
    ({"rate": 0.0}, "--atf-rate"),
    ({"rate": -0.1}, "--atf-rate"),
    ({"rate": 1.5}, "--atf-rate"),
    ({"init": 0.0}, "--atf-init"),
    ({"init": -1.0}, "--atf-init"),
    ({"power": -1.0}, "--atf-power"),
    ({"smoothing": 1.0}, "--atf-smoothing"),
    ({"min_factor": 0.0}, "--atf-min"),
    ({"min_factor": 2.0, "max_factor": 1.0}, "--atf-min"),
    ({"signal": "probe"}, "--atf-signal"),
    ({"rate": float("nan")}, "finite"),
])
def test_atf_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ATFConfig(**kwargs)


def test_atf_bad_input_fails_before_training(capsys):
    with pytest.raises(ValueError, match="--atf-rate"):
        AVConfig(method="atf", atf_rate=0.0)
    with pytest.raises(ValueError, match="--atf-init"):
        AVConfig(method="atf", atf_init=-0.5)
    with pytest.raises(SystemExit):
        main(["--method", "atf", "--atf-rate", "-1"])
    assert "--atf-rate" in capsys.readouterr().err
    tf = TrackingFactor(["a", "v"])
    with pytest.raises(ValueError, match="modalities"):
        tf.update({"a": 1.0})
    with pytest.raises(ValueError, match="finite and > 0"):
        tf.update({"a": 1.0, "v": float("inf")})


def test_factor_scales_each_encoders_learning_rate(splits):
    """One full-batch SGD step: momentum buffer = gradient, so the change of a parameter is
    -lr * factor * (g + wd * theta), the factor 0.5 + 0.5 * (1 - 0.5) = 0.75 for the encoders
    (first step: both convergence ratios are 1) and 1 for the fusion head."""
    tr, te = splits
    cfg = AVConfig(method="atf", epochs=1, batch_size=len(tr["label"]), optimizer="sgd",
                   lr=0.05, atf_init=0.5, atf_rate=0.5, progress=False)
    res = train_av(tr, te, cfg)
    assert res["history"]["atf_factor"]["audio"] == pytest.approx([0.75])
    torch.manual_seed(cfg.seed)
    ref = AVClassifier({"audio": 3, "visual": 5}, 3, cfg.fusion, cfg.encoder, cfg.dim)
    theta0 = {k: v.detach().clone() for k, v in ref.named_parameters()}
    F.cross_entropy(ref(tr)["logits"], tr["label"]).backward()
    trained = dict(res["model"].named_parameters())
    checked = 0
    for name, p in ref.named_parameters():
        if name.startswith("unimodal."):
            continue   # trained by their own (detached) loss
        factor = 0.75 if name.startswith("encoders.") else 1.0
        expect = theta0[name] - 0.05 * factor * (p.grad + 1e-4 * theta0[name])
        torch.testing.assert_close(trained[name].detach(), expect, rtol=1e-4, atol=1e-6)
        checked += 1
    assert checked == len([n for n, _ in ref.named_parameters() if not n.startswith("unimodal.")])


def test_power_zero_is_joint_training(splits):
    tr, te = splits
    common = {"epochs": 2, "batch_size": 32, "progress": False}
    joint = train_av(tr, te, AVConfig(method="joint", **common))
    atf = train_av(tr, te, AVConfig(method="atf", atf_power=0.0, atf_signal="slice", **common))
    assert set(atf["history"]["atf_factor"]["visual"]) == {1.0}
    for (name, a), (_, b) in zip(joint["model"].named_parameters(),
                                 atf["model"].named_parameters()):
        torch.testing.assert_close(a, b, msg=name)


@pytest.mark.parametrize("signal", ["head", "slice"])
def test_atf_speeds_up_the_lagging_modality(splits, signal):
    tr, te = splits
    cfg = AVConfig(method="atf", epochs=4, batch_size=16, atf_signal=signal, progress=False)
    h = train_av(tr, te, cfg)["history"]
    steps = len(h["epoch_of_step"])
    assert len(h["atf_factor"]["audio"]) == steps
    late = slice(steps // 2, steps)
    # audio separates the classes far better, so its loss falls faster: it is slowed down
    assert sum(h["atf_factor"]["visual"][late]) > sum(h["atf_factor"]["audio"][late])
