"""G-Blend weights, fusion slices, Modality-Drop and bad input, against hand computations."""

import math

import pytest
import torch

from gradharmony.balance import (
    AVClassifier,
    build_fusion,
    check_batch,
    gblend_weights,
    modality_drop_masks,
    overfit_to_generalization_ratio,
)


def test_gblend_weights_hand_computed():
    train_before = {"audio": 1.0, "visual": 1.5, "fused": 1.0}
    val_before = {"audio": 1.2, "visual": 1.6, "fused": 1.1}
    train_after = {"audio": 0.6, "visual": 1.3, "fused": 0.5}
    val_after = {"audio": 1.0, "visual": 1.5, "fused": 1.2}
    # audio:  dG = 1.2 - 1.0 = 0.2, dO = (1.0 - 0.6) - (1.2 - 1.0) = 0.2 -> 0.2 / 0.04 = 5
    # visual: dG = 0.1, dO = (1.5 - 1.3) - (1.6 - 1.5) = 0.1 -> 0.1 / 0.01 = 10
    # fused:  dG = -0.1 (held-out loss went up) -> 0
    w = gblend_weights(train_before, val_before, train_after, val_after)
    assert w["audio"] == pytest.approx(1 / 3)
    assert w["visual"] == pytest.approx(2 / 3)
    assert w["fused"] == 0.0


def test_gblend_uniform_when_nothing_generalizes():
    same = {"a": 1.0, "v": 2.0}
    assert gblend_weights(same, same, same, same) == {"a": 0.5, "v": 0.5}


def test_gblend_bad_input():
    with pytest.raises(ValueError, match="val_before"):
        gblend_weights({"a": 1.0}, {"b": 1.0}, {"a": 1.0}, {"a": 1.0})
    with pytest.raises(ValueError, match="finite"):
        gblend_weights({"a": math.nan}, {"a": 1.0}, {"a": 1.0}, {"a": 1.0})


def test_ogr_hand_computed():
    # dO = (1.0 - 0.5) - (1.2 - 1.0) = 0.3, dG = 0.2
    assert overfit_to_generalization_ratio(1.0, 1.2, 0.5, 1.0) == pytest.approx(1.5)


@pytest.mark.parametrize("fusion", ["sum", "concat", "film", "gating"])
def test_slices_add_up_to_the_logits(fusion):
    torch.manual_seed(0)
    f = build_fusion(fusion, {"audio": 5, "visual": 3}, num_classes=4)
    feats = {"audio": torch.randn(6, 5), "visual": torch.randn(6, 3)}
    logits, shares = f(feats)
    slices = f.slices(shares)
    torch.testing.assert_close(slices["audio"] + slices["visual"], logits)


def test_concat_slice_is_the_papers_w_phi_plus_half_bias():
    torch.manual_seed(0)
    f = build_fusion("concat", {"audio": 2, "visual": 3}, num_classes=2)
    feats = {"audio": torch.randn(4, 2), "visual": torch.randn(4, 3)}
    W, b = f.fc.weight.detach(), f.fc.bias.detach()
    with torch.no_grad():
        slices = f.slices(f(feats)[1])
    for i in range(4):
        for c in range(2):
            a = sum(float(W[c, j]) * float(feats["audio"][i, j]) for j in range(2))
            v = sum(float(W[c, 2 + j]) * float(feats["visual"][i, j]) for j in range(3))
            assert float(slices["audio"][i, c]) == pytest.approx(a + float(b[c]) / 2, abs=1e-5)
            assert float(slices["visual"][i, c]) == pytest.approx(v + float(b[c]) / 2, abs=1e-5)


def test_sum_fusion_three_modalities_uses_b_over_m():
    f = build_fusion("sum", {"a": 2, "b": 2, "c": 2}, num_classes=2)
    zero = {m: torch.zeros(1, 2) for m in "abc"}
    slices = f.slices(f(zero)[1])
    total_bias = sum(f.fc[m].bias.detach() for m in "abc")
    torch.testing.assert_close(slices["b"][0], total_bias / 3)


def test_film_needs_two_modalities():
    with pytest.raises(ValueError, match="two modalities"):
        build_fusion("film", {"a": 2, "b": 2, "c": 2}, 3)


def test_modality_drop_zeroes_features_before_fusion():
    torch.manual_seed(0)
    model = AVClassifier({"audio": 4, "visual": 3}, num_classes=3, fusion="concat", dim=6)
    batch = {"audio": torch.randn(5, 6, 4), "visual": torch.randn(5, 2, 3)}
    drop = {"audio": torch.tensor([True, False, True, False, False])}
    out = model(batch, drop=drop)
    feats = model.encode(batch)
    W, b = model.fusion.fc.weight, model.fusion.fc.bias
    for i in range(5):
        a = torch.zeros(6) if drop["audio"][i] else feats["audio"][i]
        expect = W @ torch.cat([a, feats["visual"][i]]) + b
        torch.testing.assert_close(out["logits"][i], expect)


def test_modality_drop_rates():
    g = torch.Generator().manual_seed(0)
    masks = modality_drop_masks(20000, ["audio", "visual"], 0.4, "random", g)
    assert not (masks["audio"] & masks["visual"]).any()
    for m in masks.values():   # each modality dropped on 0.2 of samples; sd ~ 0.003
        assert float(m.float().mean()) == pytest.approx(0.2, abs=0.015)
    with pytest.raises(ValueError, match="rate"):
        modality_drop_masks(4, ["audio"], 1.5)
    with pytest.raises(ValueError, match="target"):
        modality_drop_masks(4, ["audio"], 0.5, "text")


def test_missing_modality_is_a_clear_error():
    model = AVClassifier({"audio": 4, "visual": 3}, num_classes=3)
    with pytest.raises(ValueError, match="missing modality 'visual'"):
        model({"audio": torch.randn(2, 3, 4)})


def test_label_out_of_range_is_a_clear_error():
    batch = {"audio": torch.randn(3, 2, 4), "label": torch.tensor([0, 1, 3])}
    with pytest.raises(ValueError, match=r"batch\['label'\].*\[0, 3\)"):
        check_batch(batch, ["audio"], num_classes=3)
    batch["label"] = torch.tensor([0, -1, 2])
    with pytest.raises(ValueError, match="label"):
        check_batch(batch, ["audio"], num_classes=3)


def test_mismatched_rows_and_wrong_rank_are_errors():
    with pytest.raises(ValueError, match="rows"):
        check_batch({"audio": torch.randn(3, 2, 4), "visual": torch.randn(2, 2, 4)},
                    ["audio", "visual"])
    with pytest.raises(ValueError, match=r"\[B, T, D\]"):
        check_batch({"audio": torch.randn(3, 4)}, ["audio"])


@pytest.mark.parametrize("fusion", ["sum", "concat", "gating"])
def test_three_modalities_and_custom_encoders(fusion):
    class Mean(torch.nn.Module):
        out_dim = 4

        def forward(self, x):
            return x.mean(1)

    encs = {m: Mean() for m in ("a", "b", "c")}
    model = AVClassifier({"a": 4, "b": 4, "c": 4}, num_classes=3, fusion=fusion, encoder=encs)
    batch = {m: torch.randn(5, 2, 4) for m in "abc"}
    out = model(batch)
    torch.testing.assert_close(sum(out["slices"].values()), out["logits"])
    # the custom encoder is used as given: features are the time means of the inputs
    torch.testing.assert_close(out["features"]["b"], batch["b"].mean(1))
    with pytest.raises(ValueError, match="lacks modalities"):
        AVClassifier({"a": 4, "b": 4}, 3, fusion, encoder={"a": Mean()})
