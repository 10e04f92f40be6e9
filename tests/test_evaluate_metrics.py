import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from gradharmony.evaluate.auroc import auroc, bootstrap_auroc
from gradharmony.evaluate.probe import linear_probe, stratified_split, topk_accuracy
from gradharmony.evaluate.retrieval import (
    average_windows,
    bidirectional_retrieval,
    retrieval_metrics,
    truth_ranks,
)


def test_retrieval_metrics_hand_computed_with_ties():
    s = np.array([
        [0.9, 0.1, 0.2, 0.3],   # truth first: rank 1
        [0.5, 0.5, 0.1, 0.0],   # tie with candidate 0, counted ahead: rank 2
        [0.7, 0.8, 0.6, 0.6],   # two above, one tie: rank 4
        [0.0, 0.0, 0.0, 0.0],   # all tied: rank 4
    ])
    assert truth_ranks(s).tolist() == [1, 2, 4, 4]
    m = retrieval_metrics(s, ks=(1, 2, 5))
    assert m == {"R@1": 25.0, "R@2": 50.0, "R@5": 100.0, "MedR": 3.0}
    # default keys
    assert set(retrieval_metrics(s)) == {"R@1", "R@5", "R@10", "MedR"}


def test_retrieval_ranks_match_brute_force_loop():
    rng = np.random.default_rng(1)
    s = rng.integers(0, 4, size=(30, 40)).astype(float)
    expected = []
    for i in range(30):
        rank = 1
        for j in range(40):
            if j != i and s[i, j] >= s[i, i]:
                rank += 1
        expected.append(rank)
    assert truth_ranks(s).tolist() == expected
    m = retrieval_metrics(s)
    assert m["R@10"] == pytest.approx(100 * np.mean(np.array(expected) <= 10))
    assert m["MedR"] == np.median(expected)


def test_retrieval_bad_input():
    with pytest.raises(ValueError, match="2-D"):
        retrieval_metrics(np.zeros(3))
    with pytest.raises(ValueError, match="empty"):
        retrieval_metrics(np.zeros((0, 3)))
    with pytest.raises(ValueError, match="fewer candidates"):
        retrieval_metrics(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(np.array([[np.nan]]))


def test_bidirectional_is_transpose_and_windows_average():
    rng = torch.Generator().manual_seed(0)
    v = torch.randn(12, 8, generator=rng)
    t = v + 0.8 * torch.randn(12, 8, generator=rng)
    r = bidirectional_retrieval(v, t)
    sim = torch.nn.functional.normalize(v, dim=-1) @ torch.nn.functional.normalize(t, dim=-1).T
    assert r["text_to_video"] == retrieval_metrics(sim.T.numpy())
    w = torch.randn(5, 3, 8, generator=rng)
    avg = average_windows(w)
    manual = torch.stack([sum(x / x.norm() for x in clip) for clip in w])
    assert torch.allclose(avg, manual / manual.norm(dim=-1, keepdim=True), atol=1e-6)


def test_auroc_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    for n in (5, 37, 200):
        s = rng.integers(0, 6, n).astype(float) + (rng.random(n) < 0.3) * rng.random(n)
        y = rng.integers(0, 2, n)
        y[0], y[1] = 0, 1
        assert auroc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_auroc_bad_input():
    with pytest.raises(ValueError, match="single class"):
        auroc([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError, match="same length"):
        auroc([0.1, 0.2], [1])


def test_bootstrap_ci_contains_estimate_and_narrows_with_n():
    rng = np.random.default_rng(0)

    def sample(n):
        y = rng.integers(0, 2, n)
        return y + rng.normal(scale=1.5, size=n), y

    small = bootstrap_auroc(*sample(60), n_boot=300, seed=3)
    large = bootstrap_auroc(*sample(2000), n_boot=300, seed=3)
    for r in (small, large):
        assert r["low"] <= r["auroc"] <= r["high"]
    assert (large["high"] - large["low"]) < 0.5 * (small["high"] - small["low"])
    s, y = sample(100)
    assert bootstrap_auroc(s, y, n_boot=50, seed=7) == bootstrap_auroc(s, y, n_boot=50, seed=7)


def test_topk_accuracy_pessimistic_ties():
    scores = np.array([[1.0, 1.0, 0.0], [0.0, 0.2, 0.1], [0.3, 0.2, 0.1]])
    # row 0: true class 0 tied with class 1 -> rank 2
    r = topk_accuracy(scores, [0, 1, 2], ks=(1, 2, 3))
    assert r == {"top1": pytest.approx(100 / 3), "top2": pytest.approx(200 / 3), "top3": 100.0}


def test_probe_separable_features_reach_100_percent():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(6, 10)) * 4
    y = np.repeat(np.arange(6), 30)
    x = centres[y] + rng.normal(size=(180, 10)) * 0.2
    r = linear_probe(x[::2], y[::2], x[1::2], y[1::2])
    assert r["top1"] == 100.0 and r["top5"] == 100.0
    assert r["C"] in r["C_grid"] and r["n_val"] > 0 and r["n_classes"] == 6


def test_probe_random_labels_near_chance():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(1000, 8))
    y = rng.integers(0, 10, 1000)
    r = linear_probe(x[:600], y[:600], x[600:], y[600:])
    assert abs(r["top1"] - 10.0) < 6.0
    assert abs(r["top5"] - 50.0) < 10.0


def test_probe_is_deterministic_and_split_is_stratified():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(120, 5))
    y = rng.integers(0, 3, 120)
    assert linear_probe(x[:80], y[:80], x[80:], y[80:]) == linear_probe(
        x[:80], y[:80], x[80:], y[80:])
    fit, val = stratified_split(y, 0.25, seed=0)
    assert sorted(np.concatenate([fit, val]).tolist()) == list(range(120))
    assert set(y[val].tolist()) == {0, 1, 2}


def test_probe_bad_input():
    x = np.zeros((4, 2))
    with pytest.raises(ValueError, match="single class"):
        linear_probe(x, [1, 1, 1, 1], x, [0, 1, 0, 1])
    with pytest.raises(ValueError, match="empty"):
        linear_probe(np.zeros((0, 2)), [], x, [0, 1, 0, 1])
    with pytest.raises(ValueError, match="absent"):
        linear_probe(x, [0, 1, 0, 1], x, [0, 2, 0, 2])
