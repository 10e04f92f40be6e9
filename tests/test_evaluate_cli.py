import json

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from gradharmony.data.clip import ClipSpec
from gradharmony.data.text import TextTokenizer
from gradharmony.data.writer import encode_mp4, write_shards
from gradharmony.evaluate.cli import main_eval, main_score
from gradharmony.evaluate.clips import load_clips, window_starts
from gradharmony.evaluate.run import load_run
from gradharmony.models import create_model

COLOURS = np.array([[230, 30, 30], [30, 200, 30], [30, 30, 230]], dtype=np.uint8)
WORDS = ["red", "green", "blue"]
MODEL = dict(depth=1, width=32, heads=2, mlp_dim=64, video_frames=4, video_size=32,
             video_patch=[2, 16, 16], audio_seconds=1.0, audio_rate=8000, audio_patch=400,
             vocab_size=16, text_embed_dim=16, max_words=6, num_candidates=2, va_dim=16,
             vt_dim=8, dropout=0.0)
DATA = dict(frames=4, fps=4.0, size=32, crop=32, audio_rate=8000, clip_seconds=1.0,
            text_len=6, candidates=2)


def _clip(label, rng, seconds=2.0, text_aligned=True, audio_aligned=True):
    n = int(seconds * 4)
    frames = np.zeros((n, 32, 32, 3), np.uint8) + 20
    frames[:, 8:24, 8:24] = COLOURS[label]
    frames = np.clip(frames + rng.integers(0, 20, frames.shape), 0, 255).astype(np.uint8)
    t = np.arange(int(seconds * 8000)) / 8000
    audio = (0.5 * np.sin(2 * np.pi * (300 + 400 * label) * t)).astype(np.float32)
    return encode_mp4(frames, fps=4, audio=audio, sample_rate=8000), text_aligned, audio_aligned


def _write_split(root, name, labels, rng, flags=None):
    samples = []
    for i, lab in enumerate(labels):
        ta, aa = flags[i] if flags else (True, True)
        mp4, _, _ = _clip(lab, rng)
        word = WORDS[lab] if ta else WORDS[(lab + 1) % 3]
        samples.append({"__key__": f"{name}{i:03d}", "mp4": mp4, "txt": f"a {word} square",
                        "json": {"label": int(lab), "text_aligned": ta, "audio_aligned": aa,
                                 "neighbors": ["a square"]}})
    write_shards(samples, root / name, prefix=name, max_count=8)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalcli")
    rng = np.random.default_rng(0)
    data = root / "data"
    _write_split(data, "retrieval", [0, 1, 2, 0, 1, 2], rng)
    _write_split(data, "action", [0, 1, 2] * 5, rng)
    _write_split(data, "sound", [0, 1, 2] * 5, rng)
    flags = [(bool(i % 2), True) for i in range(12)]
    _write_split(root, "noisy", [0, 1, 2] * 4, rng, flags)
    run = root / "run"
    (run / "checkpoints").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create({
        "method": "gr", "seed": 0, "batch_size": 4, "granularity": "sample",
        "model": {"preset": "tiny", "modality_agnostic": True, "temperature": 0.07,
                  "kwargs": MODEL}, "data": DATA}), run / "config.yaml")
    TextTokenizer.from_texts(["a red green blue square"]).save(run / "vocab.json")
    torch.manual_seed(0)
    model = create_model("tiny", modality_agnostic=True, **MODEL)
    torch.save({"step": 5, "model": model.state_dict()}, run / "checkpoints" / "last.pt")
    return root


def test_window_starts_cover_the_clip():
    assert window_starts(8, 4, 2) == [0, 4]
    assert window_starts(9, 4, 3) == [0, 2, 5]  # slack 5: 0, round(2.5) = 2, 5


def test_load_clips_windows(tiny):
    spec = ClipSpec.from_config({"data": DATA})
    clips = load_clips(tiny / "data" / "retrieval", spec, windows=2, progress=False)
    assert clips.video.shape == (6, 2, 4, 32, 32, 3)
    assert clips.audio.shape == (6, 2, 8000)
    assert clips.texts[1] == "a green square" and clips.labels.tolist() == [0, 1, 2, 0, 1, 2]
    # window 1 starts at frame 4 = 1 s: its audio is the second second of the tone
    t = np.arange(8000, 16000) / 8000
    tone = 0.5 * np.sin(2 * np.pi * 700 * t)
    assert np.corrcoef(clips.audio[1, 1], tone)[0, 1] > 0.9


def test_eval_writes_every_task_with_protocol(tiny, capsys):
    rc = main_eval(["--run", str(tiny / "run"), "--data", str(tiny / "data"), "--quiet",
                    "--finetune-epochs", "1", "--batch-size", "8"])
    assert rc == 0
    ev = json.loads((tiny / "run" / "eval.json").read_text())
    r = ev["retrieval"]
    assert r["protocol"]["n"] == 6 and r["protocol"]["windows"] == 2
    assert "pessimistic" in r["protocol"]["tie_rule"]
    for d in ("video_to_text", "text_to_video"):
        assert set(r[d]) == {"R@1", "R@5", "R@10", "MedR"}
        assert r[d]["R@10"] == 100.0  # 6 candidates
    for task in ("probe", "finetune"):
        for name in ("video_action", "audio_sound"):
            m = ev[task][name]
            assert 0.0 <= m["top1"] <= m["top5"] == 100.0  # 3 classes
            assert "carved" in m["protocol"]["split"]
    assert ev["probe"]["video_action"]["protocol"]["C"] in ev["probe"]["video_action"][
        "protocol"]["C_grid"]
    emb = np.load(tiny / "run" / "eval_embeddings.npz")
    assert emb["video_vt"].shape == (6, 8)
    assert "retrieval video_to_text" in capsys.readouterr().out


def test_score_writes_rows_and_auroc_matches_sklearn(tiny, capsys):
    from sklearn.metrics import roc_auc_score

    out = tiny / "scores.jsonl"
    assert main_score(["--run", str(tiny / "run"), "--data", str(tiny / "noisy"), "--out",
                       str(out), "--quiet", "--n-boot", "50", "--limit", "10"]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 10 and [r["batch_size"] for r in rows] == [4] * 8 + [2] * 2
    assert [r["batch"] for r in rows] == [0] * 4 + [1] * 4 + [2] * 2
    assert all(-1.0 <= r["cos"] <= 1.0 for r in rows)
    assert all(abs(r["loss"] - r["loss_va"] - r["loss_vt"]) < 1e-5 for r in rows)
    summary = json.loads(out.with_suffix(".summary.json").read_text())
    y = [not r["text_aligned"] for r in rows]
    a = summary["auroc"]["text_misaligned"]
    assert a["cos"]["auroc"] == pytest.approx(roc_auc_score(y, [-r["cos"] for r in rows]))
    assert a["loss_vt"]["auroc"] == pytest.approx(roc_auc_score(y, [r["loss_vt"] for r in rows]))
    assert "AUROC for text_misaligned" in capsys.readouterr().out
    ex = np.load(out.with_suffix(".examples.npz"))
    assert ex["top_frames"].shape[0] == 1 and ex["top_frames"].shape[-1] == 3


def test_bad_runs_are_clear_errors(tiny, tmp_path):
    import shutil

    no_ckpt = tmp_path / "nockpt"
    shutil.copytree(tiny / "run", no_ckpt)
    (no_ckpt / "checkpoints" / "last.pt").unlink()
    with pytest.raises(RuntimeError, match="no checkpoint"):
        load_run(no_ckpt)
    big = tmp_path / "bigvocab"
    shutil.copytree(tiny / "run", big)
    TextTokenizer.from_texts([" ".join(f"w{i}" for i in range(40))]).save(big / "vocab.json")
    with pytest.raises(ValueError, match="vocabulary mismatch"):
        load_run(big)
    empty = tmp_path / "data"
    (empty / "retrieval").mkdir(parents=True)
    write_shards([{"__key__": "x", "txt": "no video"}], empty / "retrieval", prefix="r")
    with pytest.raises(ValueError, match="empty"):
        main_eval(["--run", str(tiny / "run"), "--data", str(empty), "--tasks", "retrieval",
                   "--quiet"])
    one = tmp_path / "one"
    _write_split(one, "action", [1, 1, 1], np.random.default_rng(0))
    _write_split(one, "sound", [1, 1, 1], np.random.default_rng(0))
    with pytest.raises(ValueError, match="single class"):
        main_eval(["--run", str(tiny / "run"), "--data", str(one), "--tasks", "probe",
                   "--quiet"])


def test_iter_clipsets_chunks_in_shard_order(tiny):
    from gradharmony.evaluate.clips import iter_clipsets

    spec = ClipSpec.from_config({"data": DATA})
    parts = list(iter_clipsets(tiny / "data" / "retrieval", spec, 1, chunk=4, progress=False))
    assert [len(p) for p in parts] == [4, 2]
    assert [k for p in parts for k in p.keys] == [f"retrieval{i:03d}" for i in range(6)]


def test_encode_clips_window_average_matches_per_window_encoding():
    from gradharmony.evaluate.clips import ClipSet
    from gradharmony.evaluate.features import encode_clips

    torch.manual_seed(0)
    model = create_model("tiny", modality_agnostic=True, **MODEL).eval()
    rng = np.random.default_rng(0)
    video = rng.integers(0, 255, (3, 2, 4, 32, 32, 3), dtype=np.uint8)
    audio = rng.normal(size=(3, 2, 8000)).astype(np.float32) * 0.1

    def clipset(v, a):
        n = v.shape[0]
        return ClipSet(v, a, np.ones(n, bool), ["a"] * n, [[]] * n, np.zeros(n, np.int64),
                       [str(i) for i in range(n)], [{}] * n)

    got = encode_clips(model, clipset(video, audio), modalities=("video", "audio"),
                       progress=False)
    with torch.no_grad():  # oracle: each window alone, then normalise-mean-normalise by hand
        per = [model.encode_video(torch.from_numpy(video[:, j]).float() / 255)["video_vt"]
               for j in range(2)]
        mean = sum(p / p.norm(dim=-1, keepdim=True) for p in per) / 2
        feat = sum(model.encode_audio(torch.from_numpy(audio[:, j]))["audio_feat"]
                   for j in range(2)) / 2
    assert np.allclose(got["video_vt"], (mean / mean.norm(dim=-1, keepdim=True)).numpy(),
                       atol=1e-5)
    assert np.allclose(got["audio_feat"], feat.numpy(), atol=1e-5)
    # identical windows are encoded once and give the single-window result
    same = encode_clips(model, clipset(video[:, [0, 0]], audio[:, [0, 0]]), progress=False,
                        modalities=("video",))
    one = encode_clips(model, clipset(video[:, :1], audio[:, :1]), progress=False,
                       modalities=("video",))
    assert np.allclose(same["video_vt"], one["video_vt"], atol=1e-6)
