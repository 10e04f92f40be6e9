"""train-av end to end on a tiny stand-in set: every method runs, OGM respects its window,
bad input fails clearly, the CLI and the table mode write their files."""

import json

import numpy as np
import pytest
import torch

from gradharmony.balance import AVConfig, prepare_splits, train_av, video_features
from gradharmony.balance.cli import main
from gradharmony.balance.features import audio_features


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


@pytest.mark.parametrize("method", ["audio", "visual", "joint", "ogm", "ogm-ge", "gblend",
                                    "mdrop"])
def test_every_method_trains(splits, method):
    tr, te = splits
    r = train_av(tr, te, AVConfig(method=method, epochs=2, batch_size=32, progress=False))
    assert 0.0 <= r["acc"] <= 1.0
    expected = [method] if method in ("audio", "visual") else ["audio", "visual"]
    assert sorted(r["probe"]) == expected
    if method == "gblend":
        assert len(r["history"]["gblend_weights"]) == 1


def test_audio_is_learned(splits):
    tr, te = splits
    r = train_av(tr, te, AVConfig(method="joint", epochs=6, batch_size=16, progress=False))
    assert r["acc"] > 0.8 and r["probe"]["audio"] > 0.8   # audio separates the classes


def test_ogm_only_modulates_inside_the_window(splits):
    tr, te = splits
    cfg = AVConfig(method="ogm", epochs=4, batch_size=32, window=(1, 3), alpha=5.0,
                   progress=False)
    h = train_av(tr, te, cfg)["history"]
    epochs = np.asarray(h["epoch_of_step"])
    for m in ("audio", "visual"):
        coef, rho = np.asarray(h["coef"][m]), np.asarray(h["rho"][m])
        outside = (epochs < 1) | (epochs >= 3)
        assert (coef[outside] == 1.0).all()
        inside = ~outside
        np.testing.assert_allclose(coef[inside & (rho > 1)],
                                   1 - np.tanh(5.0 * (rho[inside & (rho > 1)] - 1)), rtol=1e-6)
        assert (coef[inside & (rho <= 1)] == 1.0).all()


def test_train_av_bad_input(splits):
    tr, te = splits
    with pytest.raises(ValueError, match="window"):
        AVConfig(method="ogm-ge", window=(4, 4))
    with pytest.raises(ValueError, match="alpha"):
        AVConfig(method="ogm", alpha=-0.5)
    with pytest.raises(ValueError, match="method"):
        AVConfig(method="late")
    bad = dict(tr)
    bad["label"] = tr["label"].clone()
    bad["label"][0] = 7
    with pytest.raises(ValueError, match="label"):
        train_av(bad, te, AVConfig(epochs=1, progress=False, extra={"num_classes": 3}))
    missing = {k: v for k, v in tr.items() if k != "visual"}
    with pytest.raises(ValueError, match="visual"):
        train_av(missing, te, AVConfig(epochs=1, progress=False))


def test_features_match_brute_force_pooling():
    rng = np.random.default_rng(0)
    video = rng.integers(0, 256, size=(1, 2, 8, 8, 3), dtype=np.uint8)
    f = video_features(video, grid=2)
    for t in range(2):
        for c in range(3):
            for r in range(2):
                for q in range(2):
                    block = video[0, t, 4 * r:4 * r + 4, 4 * q:4 * q + 4, c] / 255.0
                    got = float(f[0, t, c * 4 + r * 2 + q])
                    assert got == pytest.approx(block.mean(), abs=1e-6)
    with pytest.raises(ValueError, match="video"):
        video_features(np.zeros((2, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="n_fft"):
        audio_features(np.zeros((2, 100), np.float32))


def test_cli_single_run_and_table(tmp_path, capsys):
    out = tmp_path / "one"
    small = ["--frames", "4", "--size", "16", "--cache-dir", str(tmp_path / "cache")]
    assert main(["--method", "ogm-ge", "--alpha", "0.8", "--epochs", "1", "--n-train", "64",
                 "--n-test", "32", "--quiet", "--out", str(out), *small]) == 0
    res = json.loads((out / "result.json").read_text())
    assert set(res["probe"]) == {"audio", "visual"} and res["config"]["method"] == "ogm-ge"
    table = tmp_path / "table"
    assert main(["--table", "--methods", "audio", "ogm", "--fusions", "sum",
                 "--optimizers", "adam", "--seeds", "0", "1", "--epochs", "1",
                 "--n-train", "64", "--n-test", "32", "--out", str(table), *small]) == 0
    text = (table / "table.md").read_text()
    assert "| ogm | sum |" in text and "| audio | - |" in text
    assert len((table / "runs.jsonl").read_text().splitlines()) == 4
    assert (table / "balance_sum_adam.png").exists()
    with pytest.raises(SystemExit):
        main(["--method", "ogm", "--alpha", "-1"])
