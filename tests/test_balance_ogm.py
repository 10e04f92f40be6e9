"""OGM-GE: coefficients, scores, gradient modulation and GE noise against hand computations."""

import math

import pytest
import torch
import torch.nn.functional as F

from gradharmony.balance import (
    AVClassifier,
    OGMConfig,
    modality_scores,
    modulate_gradients,
    ogm_coefficients,
    select_parameters,
)


def test_two_modalities_both_forms_hand_computed():
    # rho_audio = 30 / 10 = 3; rho_visual = 1/3 (not dominant -> 1)
    paper = ogm_coefficients({"audio": 30.0, "visual": 10.0}, alpha=0.5)
    official = ogm_coefficients({"audio": 30.0, "visual": 10.0}, alpha=0.5, form="official")
    assert paper["audio"] == pytest.approx(0.2384058440)      # 1 - tanh(0.5 * (3 - 1))
    assert official["audio"] == pytest.approx(0.0948517464)   # 1 - tanh(0.5 * 3)
    assert paper["visual"] == 1.0 and official["visual"] == 1.0


def test_three_modalities_ratio_to_mean_of_others():
    scores = {"a": 6.0, "b": 2.0, "c": 5.0}
    # rho_a = 6 / 3.5 = 12/7, rho_b = 2 / 5.5 = 4/11, rho_c = 5 / 4
    paper = ogm_coefficients(scores, alpha=1.0)
    official = ogm_coefficients(scores, alpha=1.0, form="official")
    assert paper["a"] == pytest.approx(1 - math.tanh(5 / 7))
    assert paper["c"] == pytest.approx(1 - math.tanh(1 / 4))
    assert official["a"] == pytest.approx(1 - math.tanh(12 / 7))
    assert official["c"] == pytest.approx(1 - math.tanh(5 / 4))
    assert paper["b"] == official["b"] == 1.0


def test_equal_scores_and_zero_alpha_leave_gradients_alone():
    assert ogm_coefficients({"a": 2.0, "v": 2.0}, 0.8, "official") == {"a": 1.0, "v": 1.0}
    assert ogm_coefficients({"a": 9.0, "v": 1.0}, 0.0) == {"a": 1.0, "v": 1.0}


@pytest.mark.parametrize("kwargs, match", [
    ({"scores": {"a": 1.0, "v": 1.0}, "alpha": -0.1}, "alpha"),
    ({"scores": {"a": 1.0, "v": 1.0}, "alpha": 0.5, "form": "tanh"}, "form"),
    ({"scores": {"a": 1.0}, "alpha": 0.5}, "two modalities"),
    ({"scores": {"a": -1.0, "v": 1.0}, "alpha": 0.5}, "scores\\['a'\\]"),
])
def test_coefficient_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ogm_coefficients(**kwargs)


@pytest.mark.parametrize("window", [(3, 3), (5, 2), (-1, 4)])
def test_empty_epoch_window_is_an_error(window):
    with pytest.raises(ValueError, match="window"):
        OGMConfig(window=window)


def test_negative_alpha_config_is_an_error():
    with pytest.raises(ValueError, match="alpha"):
        OGMConfig(alpha=-1.0)


def test_window_is_half_open():
    cfg = OGMConfig(window=(2, 5))
    assert [cfg.active(e) for e in range(7)] == [False, False, True, True, True, False, False]


def test_scores_match_a_per_sample_loop():
    g = torch.Generator().manual_seed(3)
    slices = {"a": torch.randn(7, 4, generator=g), "v": torch.randn(7, 4, generator=g)}
    y = torch.randint(4, (7,), generator=g)
    got = modality_scores(slices, y)
    for m, z in slices.items():
        expect = 0.0
        for i in range(7):
            row = [math.exp(float(v)) for v in z[i]]
            expect += row[int(y[i])] / sum(row)
        assert got[m] == pytest.approx(expect, rel=1e-6)


def _grads(model, batch, y):
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(batch)["logits"], y).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("which", ["all", "conv"])
def test_modulation_changes_only_the_targeted_gradients(which):
    torch.manual_seed(0)
    model = AVClassifier({"audio": 5, "visual": 4}, num_classes=3, fusion="concat", dim=8)
    batch = {"audio": torch.randn(6, 7, 5), "visual": torch.randn(6, 3, 4)}
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    plain = _grads(model, batch, y)
    _grads(model, batch, y)
    params = {m: select_parameters(model.encoders[m], which) for m in ("audio", "visual")}
    modulate_gradients(params, {"audio": 0.3, "visual": 1.0})
    targeted = {id(p) for p in params["audio"]}
    n_scaled = 0
    for name, p in model.named_parameters():
        if p.grad is None:
            continue
        if id(p) in targeted:
            n_scaled += 1
            torch.testing.assert_close(p.grad, 0.3 * plain[name])
            assert name.startswith("encoders.audio.")
        else:
            assert torch.equal(p.grad, plain[name]), name
    expected = 4 if which == "all" else 2     # conv1/conv2 weight+bias, or the two weights
    assert n_scaled == expected


def test_ge_noise_has_the_std_of_the_unscaled_gradient():
    g = torch.Generator().manual_seed(1)
    w = torch.nn.Parameter(torch.zeros(200, 500))
    w.grad = 3.0 * torch.randn(200, 500, generator=g) + 1.0
    original = w.grad.clone()
    modulate_gradients({"audio": [w]}, {"audio": 0.25}, ge=True, generator=g)
    noise = w.grad - 0.25 * original
    std = float(original.std())
    # 100k draws: the sample std is within ~0.5% of the truth; 3% leaves ample margin
    assert float(noise.std()) == pytest.approx(std, rel=0.03)
    assert abs(float(noise.mean())) < 0.03 * std
    # ... and it is not the std of the scaled gradient (0.25 * std): the test can fail
    assert float(noise.std()) > 0.5 * std


def test_ge_noise_on_every_modality_or_only_dominant():
    a = torch.nn.Parameter(torch.zeros(1000))
    v = torch.nn.Parameter(torch.zeros(1000))
    for scope, v_changed in (("all", True), ("dominant", False)):
        a.grad, v.grad = torch.ones(1000).cumsum(0), torch.ones(1000).cumsum(0)
        modulate_gradients({"a": [a], "v": [v]}, {"a": 0.5, "v": 1.0}, ge=True,
                           ge_modalities=scope)
        assert (not torch.equal(v.grad, torch.ones(1000).cumsum(0))) == v_changed
        assert not torch.equal(a.grad, 0.5 * torch.ones(1000).cumsum(0))


def test_coefficients_shrink_with_alpha_and_stay_in_range():
    prev = {"paper": 1.0, "official": 1.0}
    for alpha in (0.0, 0.1, 0.5, 1.0, 5.0):
        for form in prev:
            k = ogm_coefficients({"a": 4.0, "v": 1.0}, alpha, form)["a"]
            assert 0.0 <= k <= prev[form]
            prev[form] = k
    # official <= paper for the same alpha (relu(rho) >= relu(rho - 1))
    assert prev["official"] <= prev["paper"]
