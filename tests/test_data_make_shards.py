"""make-shards: cut clips from videos by a manifest, with neighbours, bad rows counted."""

from __future__ import annotations

import io
import json

import av
import numpy as np
import pytest

from gradharmony.data import ClipSpec, TextTokenizer, iter_tar_groups, make_loader
from gradharmony.data.cli import main_make_shards
from gradharmony.data.make_shards import neighbor_order
from gradharmony.data.writer import encode_mp4
from tests.media import garble_audio

FPS, RATE, HZ = 10, 16000, 440.0


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("videos")
    n = 40  # 4 s at 10 fps; frame t has red = 5 t and green = 40 (t mod 6)
    frames = np.zeros((n, 48, 64, 3), np.uint8)
    frames[..., 0] = (5 * np.arange(n))[:, None, None]
    frames[..., 1] = (40 * (np.arange(n) % 6))[:, None, None]
    t = np.arange(4 * RATE) / RATE
    (d / "cook.mp4").write_bytes(encode_mp4(frames, FPS, 0.5 * np.sin(2 * np.pi * HZ * t), RATE))
    (d / "silent.mp4").write_bytes(encode_mp4(frames[:20], FPS))
    (d / "garbage.mp4").write_bytes(b"\x00not a video" * 100)
    return d


def write_manifest(path, rows):
    if path.suffix == ".csv":
        lines = ["path,start,end,text,label"]
        lines += [",".join(str(x) for x in r) for r in rows]
        path.write_text("\n".join(lines) + "\n")
    else:
        keys = ("path", "start", "end", "text", "label")
        path.write_text("".join(json.dumps(dict(zip(keys, r))) + "\n" for r in rows))


ROWS = [("cook.mp4", 0, 1, "first step", 1), ("cook.mp4", 1, 2, "second step", 2),
        ("cook.mp4", 2.5, 3.5, "third step", 3), ("silent.mp4", 0, 1, "no sound", 4),
        ("missing.mp4", 0, 1, "gone", 0), ("cook.mp4", 2, 1, "backwards", 0),
        ("cook.mp4", 0, 1, "", 0), ("cook.mp4", 10, 11, "after the end", 0),
        ("garbage.mp4", 0, 1, "broken", 0)]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_make_shards_cuts_clips_with_neighbors_and_counts_bad_rows(videos, tmp_path, capsys,
                                                                   suffix):
    manifest = tmp_path / f"captions{suffix}"
    write_manifest(manifest, ROWS)
    out = tmp_path / "shards"
    rc = main_make_shards(["--videos", str(videos), "--manifest", str(manifest), "--out",
                           str(out), "--clips-per-shard", "3", "--quiet"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary == {"clips": 4, "shards": 2, "skipped": {
        "bad_row": 1, "corrupt_video": 1, "empty_text": 1, "missing_file": 1, "no_frames": 1}}
    samples = [g for p in sorted(out.glob("*.tar")) for g in iter_tar_groups(p)]
    texts = {files["txt"].decode(): (json.loads(files["json"]), files["mp4"])
             for _, files in samples}
    assert sorted(texts) == ["first step", "no sound", "second step", "third step"]
    assert texts["first step"][0]["neighbors"] == ["second step", "third step"]
    assert texts["second step"][0]["neighbors"] == ["first step", "third step"]
    assert texts["third step"][0]["neighbors"] == ["second step", "first step"]
    assert texts["no sound"][0]["neighbors"] == []
    meta = texts["third step"][0]
    assert (meta["video_id"], meta["start"], meta["end"], int(meta["label"])) == (
        "cook", 2.5, 3.5, 3)
    with av.open(io.BytesIO(texts["third step"][1])) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    with av.open(io.BytesIO(texts["third step"][1])) as c:
        audio = np.concatenate([f.to_ndarray().reshape(-1) for f in c.decode(audio=0)])
    assert len(frames) == 10  # source frames 25..34
    src = np.arange(25, 35)  # red pins the frame to +-1, green (step 40) to the exact one
    np.testing.assert_allclose([f[..., 0].mean() for f in frames], 5 * src, atol=8)
    np.testing.assert_allclose([f[..., 1].mean() for f in frames], 40 * (src % 6), atol=15)
    t = 2.5 + np.arange(RATE) / RATE  # the cut audio continues the source's phase
    assert np.corrcoef(audio[:RATE], np.sin(2 * np.pi * HZ * t))[0, 1] > 0.95
    tok = TextTokenizer.from_texts(texts)
    spec = ClipSpec(frames=4, fps=4.0, size=16, crop=16, audio_rate=8000, clip_seconds=1.0)
    loader = make_loader(str(out / "*.tar"), spec, tok, batch_size=4, train=False,
                         infinite=False)
    batch = next(iter(loader))
    by_key = dict(zip(batch["key"], batch["has_audio"].tolist()))
    assert sorted(by_key.values()) == [False, True, True, True]


def test_neighbor_order_by_centre_distance():
    spans = [(0, 2), (3, 4), (1, 2), (10, 11)]
    # centres 1, 3.5, 1.5, 10.5; from span 2 (1.5): 0 at 0.5, 1 at 2, 3 at 9
    assert neighbor_order(spans, 2) == [0, 1, 3]
    assert neighbor_order([(0, 1), (2, 3), (-2, -1)], 0) == [2, 1]  # tie: earlier first


def test_make_shards_bad_manifest(tmp_path, capsys):
    m = tmp_path / "m.csv"
    m.write_text("file,begin\nx,0\n")
    assert main_make_shards(["--videos", str(tmp_path), "--manifest", str(m), "--out",
                             str(tmp_path / "o"), "--quiet"]) == 2
    assert "needs the columns path, start, end, text" in capsys.readouterr().err
    assert main_make_shards(["--videos", str(tmp_path), "--manifest", str(tmp_path / "no.csv"),
                             "--out", str(tmp_path / "o"), "--quiet"]) == 2


def test_make_shards_resamples_fps_and_resizes(videos, tmp_path, capsys):
    manifest = tmp_path / "m.jsonl"
    write_manifest(manifest, [("cook.mp4", 1, 2, "step", 0)])
    out = tmp_path / "o"
    assert main_make_shards(["--videos", str(videos), "--manifest", str(manifest), "--out",
                             str(out), "--fps", "5", "--short-side", "24", "--quiet"]) == 0
    (_, files), = [g for p in out.glob("*.tar") for g in iter_tar_groups(p)]
    with av.open(io.BytesIO(files["mp4"])) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == 5 and frames[0].shape == (24, 32, 3)
    src = 10 + 2 * np.arange(5)  # times 1.0, 1.2, ... -> source frames 10, 12, ...
    np.testing.assert_allclose([f[..., 1].mean() for f in frames], 40 * (src % 6), atol=15)
    np.testing.assert_allclose([f[..., 0].mean() for f in frames], 5 * src, atol=8)


def test_make_shards_counts_undecodable_audio(videos, tmp_path, capsys):
    (tmp_path / "noisy.mp4").write_bytes(garble_audio((videos / "cook.mp4").read_bytes()))
    manifest = tmp_path / "m.csv"
    write_manifest(manifest, [("noisy.mp4", 0, 1, "x", 0), ("cook.mp4", 0, 1, "y", 0)])
    assert main_make_shards(["--videos", str(tmp_path), "--manifest", str(manifest), "--out",
                             str(tmp_path / "o"), "--quiet"]) == 1  # nothing written
    assert json.loads(capsys.readouterr().out)["skipped"] == {"bad_audio": 1, "missing_file": 1}
