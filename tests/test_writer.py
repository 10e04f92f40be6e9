"""mp4 encoding and tar shard writing (gradharmony.data.writer), checked by decoding with PyAV
and reading the tars with the standard library."""

import io
import json
import tarfile
from pathlib import Path

import av
import numpy as np
import pytest

from gradharmony.data.writer import FIXED_MTIME, ShardWriter, encode_mp4, shard_name, write_shards


def _frames(t=16, h=64, w=64):
    # smooth moving gradient: compressible, so x264 at crf 18 is near-lossless on it
    y, x = np.mgrid[0:h, 0:w]
    out = np.empty((t, h, w, 3), dtype=np.uint8)
    for i in range(t):
        out[i, ..., 0] = (x * 4 + i * 8) % 256
        out[i, ..., 1] = (y * 4) % 256
        out[i, ..., 2] = 255 - (x * 2 + y * 2) % 256
    return out


def _decode(data):
    with av.open(io.BytesIO(data)) as c:
        decoded = list(c.decode(video=0))
        frames = [f.to_ndarray(format="rgb24") for f in decoded]
        times = [float(f.time) for f in decoded]
    audio, rate = None, None
    with av.open(io.BytesIO(data)) as c:
        if c.streams.audio:
            rate = c.streams.audio[0].sample_rate
            audio = np.concatenate([f.to_ndarray()[0] for f in c.decode(audio=0)])
    return np.stack(frames), times, audio, rate


def test_mp4_roundtrip_frames_audio_and_timing():
    frames = _frames()
    sr = 16000
    tone = (0.5 * np.sin(2 * np.pi * 440 * np.arange(2 * sr) / sr)).astype(np.float32)
    data = encode_mp4(frames, fps=8, audio=tone, sample_rate=sr)
    got, times, audio, rate = _decode(data)
    assert got.shape == frames.shape
    assert times == pytest.approx([i / 8 for i in range(16)])
    assert np.abs(got.astype(int) - frames.astype(int)).mean() < 4.0
    assert rate == sr
    assert 2 * sr <= audio.size <= 2 * sr + 1024
    # aligned at t = 0: correlation with the input tone (independent closed form) near 1
    assert np.corrcoef(audio[: 2 * sr], tone)[0, 1] > 0.99
    with av.open(io.BytesIO(data)) as c:
        assert c.streams.video[0].codec_context.name == "h264"
        assert c.streams.video[0].codec_context.pix_fmt == "yuv420p"
        assert c.streams.audio[0].codec_context.name == "aac"
        assert c.streams.audio[0].codec_context.layout.nb_channels == 1


def test_mp4_without_audio_and_determinism():
    frames = _frames(t=5, h=32, w=48)
    a = encode_mp4(frames, fps=10)
    assert a == encode_mp4(frames, fps=10)
    with av.open(io.BytesIO(a)) as c:
        assert len(c.streams.audio) == 0
        assert len(list(c.decode(video=0))) == 5
    assert encode_mp4(frames[::-1].copy(), fps=10) != a


@pytest.mark.parametrize(
    "frames, audio, match",
    [
        (np.zeros((4, 16, 16), np.uint8), None, "frames"),
        (np.zeros((4, 16, 16, 3), np.float32), None, "uint8"),
        (np.zeros((4, 15, 16, 3), np.uint8), None, "even"),
        (np.zeros((4, 16, 16, 3), np.uint8), np.zeros((2, 100), np.float32), "mono"),
        (np.zeros((4, 16, 16, 3), np.uint8), np.zeros(100, np.int16), "float"),
        (np.zeros((4, 16, 16, 3), np.uint8), np.full(100, np.nan, np.float32), "NaN"),
    ],
)
def test_mp4_bad_input(frames, audio, match):
    with pytest.raises(ValueError, match=match):
        encode_mp4(frames, fps=8, audio=audio)


def test_shards_layout_order_and_fixed_metadata(tmp_path):
    samples = [
        {"__key__": f"v{i:03d}_00", "mp4": bytes([i]) * 10, "txt": f"text {i}",
         "json": {"z": i, "a": [1, 2]}}
        for i in range(7)
    ]
    paths = write_shards(samples, tmp_path, prefix="train", max_count=3)
    assert [p.split("/")[-1] for p in paths] == [shard_name("train", i) for i in range(3)]
    names = []
    for p in paths:
        with tarfile.open(p) as tar:
            for m in tar.getmembers():
                assert (m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) == (
                    FIXED_MTIME, 0, 0, "", "", 0o644)
                names.append(m.name)
                if m.name.endswith(".json"):
                    raw = tar.extractfile(m).read()
                    assert raw.startswith(b'{"a": [1, 2], "z": ')  # sorted keys
                    assert json.loads(raw)["z"] == int(m.name[1:4])
    expected = [f"v{i:03d}_00.{ext}" for i in range(7) for ext in ("json", "mp4", "txt")]
    assert names == expected
    assert not list(tmp_path.glob("*.tmp"))
    # byte-determinism of the tar files
    again = write_shards(samples, tmp_path / "again", prefix="train", max_count=3)
    for p, q in zip(paths, again):
        assert Path(p).read_bytes() == Path(q).read_bytes()


def test_shards_read_by_webdataset(tmp_path):
    wds = pytest.importorskip("webdataset")
    samples = [{"__key__": f"k{i}", "txt": f"t{i}", "json": {"i": i}} for i in range(5)]
    paths = write_shards(samples, tmp_path, prefix="p", max_count=2)
    got = list(wds.WebDataset(paths, shardshuffle=False))
    assert [s["__key__"] for s in got] == [f"k{i}" for i in range(5)]
    assert [json.loads(s["json"])["i"] for s in got] == list(range(5))
    assert [s["txt"].decode() for s in got] == [f"t{i}" for i in range(5)]


def test_shard_writer_bad_input(tmp_path):
    with pytest.raises(ValueError, match="max_count"):
        ShardWriter(tmp_path, max_count=0)
    w = ShardWriter(tmp_path, prefix="x")
    with pytest.raises(ValueError, match="__key__"):
        w.write({"__key__": "a.b", "txt": "t"})
    with pytest.raises(ValueError, match="__key__"):
        w.write({"txt": "t"})
    w.write({"__key__": "a", "txt": "t"})
    with pytest.raises(ValueError, match="duplicate"):
        w.write({"__key__": "a", "txt": "t"})
    with pytest.raises(ValueError, match="'npy'"):
        w.write({"__key__": "b", "npy": 3.0})
    assert w.close() == [str(tmp_path / "x-000000.tar")]


def test_shard_writer_removes_partial_shard_on_error(tmp_path):
    with pytest.raises(RuntimeError), ShardWriter(tmp_path, prefix="x") as w:
        w.write({"__key__": "a", "txt": "t"})
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
