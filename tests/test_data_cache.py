"""The decoded-clip cache: same clips as live decoding, built once, keyed by shards and spec."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from gradharmony.data import ClipSpec, ShardSet, TextTokenizer, make_loader
from gradharmony.data.cache import build_cache, cache_path
from gradharmony.data.writer import ShardWriter, encode_mp4

SPEC = ClipSpec(frames=4, fps=4.0, size=16, crop=12, audio_rate=8000, clip_seconds=1.0)


def mp4(i: int, n: int = 12) -> bytes:
    frames = np.zeros((n, 24, 32, 3), np.uint8)
    frames[..., 0] = (20 * np.arange(n))[:, None, None]
    frames[:, :, :16, 2] = 12 * i  # a left/right difference, so crops and flips show
    t = np.arange(n * 2000) / 16000
    return encode_mp4(frames, 8, (0.4 * np.sin(2 * np.pi * (250 + 50 * i) * t)), 16000)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    d = tmp_path_factory.mktemp("cache_shards")
    with ShardWriter(d, prefix="s", max_count=4) as w:
        for i in range(10):
            data = mp4(i, n=4 if i == 7 else 12)  # clip 7 is too short
            txt = "" if i == 8 else f"clip {i}"  # clip 8 has an empty narration
            w.write({"__key__": f"k{i:02d}", "mp4": data, "txt": txt,
                     "json": {"video_id": "v", "neighbors": [f"clip {i + 1}"]}})
    return os.path.join(str(d), "s-*.tar")


@pytest.fixture(scope="module")
def tok():
    return TextTokenizer.from_texts([f"clip {i}" for i in range(12)])


def test_cache_gives_the_live_clips_and_skip_counts(shards, tok, tmp_path):
    live = make_loader(shards, SPEC, tok, batch_size=3, train=False, infinite=False)
    cached = make_loader(shards, SPEC, tok, batch_size=3, train=False, infinite=False,
                         cache_dir=tmp_path)
    a, b = list(live), list(cached)
    assert [x["key"] for x in a] == [x["key"] for x in b]
    assert sum(len(x["key"]) for x in a) == 8
    for x, y in zip(a, b):
        assert torch.equal(x["video"], y["video"])
        assert (x["audio"] - y["audio"]).abs().max() <= 1.0 / 32767 + 1e-6
        for name in ("text", "text_mask", "candidate_mask", "has_text", "has_audio", "label"):
            assert torch.equal(x[name], y[name]), name
        assert x["meta"] == y["meta"]
    want = {"empty_text": 1, "too_short": 1}
    assert live.skipped.as_dict() == want and cached.skipped.as_dict() == want


def test_cache_is_built_once_and_keyed_by_spec_and_shards(shards, tmp_path):
    s = ShardSet(shards, name="demo")
    path = build_cache(s, SPEC, tmp_path, progress=False)
    stamp = os.stat(path / "meta.json").st_mtime_ns
    assert build_cache(s, SPEC, tmp_path, progress=False) == path
    assert os.stat(path / "meta.json").st_mtime_ns == stamp
    other = ClipSpec(frames=2, fps=4.0, size=16, crop=12, audio_rate=8000, clip_seconds=1.0)
    assert cache_path(s, other, tmp_path) != path
    assert cache_path(ShardSet(shards, text=False), SPEC, tmp_path) != path
    n_bytes = 8 * SPEC.frames * SPEC.size * SPEC.size * 3
    assert os.path.getsize(path / "frames.u8") == n_bytes
    parallel = build_cache(s, SPEC, tmp_path / "p", num_workers=2, progress=False)
    for name in ("frames.u8", "audio.i16", "index.json"):
        assert (path / name).read_bytes() == (parallel / name).read_bytes(), name
    first = sorted(ShardSet(shards).paths())[0]
    os.utime(first, (1, 1))
    assert cache_path(ShardSet(shards, name="demo"), SPEC, tmp_path) != path


def test_training_from_the_cache_augments_deterministically(shards, tok, tmp_path):
    def run(seed):
        loader = make_loader(shards, SPEC, tok, batch_size=4, seed=seed, cache_dir=tmp_path)
        out = []
        for b in loader:
            out.append(b)
            if len(out) == 4:
                return out

    a, b, c = run(1), run(1), run(2)
    assert all(torch.equal(x["video"], y["video"]) for x, y in zip(a, b))
    assert [x["key"] for x in a] != [x["key"] for x in c]
    # random crops and flips: the left/right blue difference shows up with both signs
    v = torch.cat([x["video"] for x in a + c])[:, 0, :, :, 2]
    diff = v[:, :, :3].mean(dim=(1, 2)) - v[:, :, -3:].mean(dim=(1, 2))
    assert (diff > 0.01).any() and (diff < -0.01).any()


def test_throughput_report(shards, tok, tmp_path):
    from gradharmony.data.throughput import throughput

    out = throughput(shards, SPEC, tok, tmp_path, clips=8, batch_size=4)
    assert out["live_clips_per_s"] > 0 and out["cache_clips_per_s"] > 0
    assert out["build_clips_per_s"] > 0
    again = throughput(shards, SPEC, tok, tmp_path, clips=4, batch_size=4)
    assert again["build_clips_per_s"] is None  # already built


DDP_SCRIPT = """
import json, sys
import torch.distributed as dist
from gradharmony.data import ClipSpec, TextTokenizer, make_loader
dist.init_process_group("gloo", init_method="env://")
pattern, cache, out = sys.argv[1:4]
tok = TextTokenizer.from_texts([f"clip {i}" for i in range(12)])
spec = ClipSpec(frames=4, fps=4.0, size=16, crop=12, audio_rate=8000, clip_seconds=1.0)
loader = make_loader(pattern, spec, tok, batch_size=2, infinite=False, cache_dir=cache,
                     num_workers=1)
keys = [k for b in loader for k in b["key"]]
json.dump({"rank": dist.get_rank(), "keys": keys}, open(out, "w"))
dist.destroy_process_group()
"""


@pytest.mark.slow
@pytest.mark.ddp
def test_two_ranks_share_one_cache_and_split_the_clips(shards, tmp_path):
    import socket
    import subprocess
    import sys

    script = tmp_path / "rank.py"
    script.write_text(DDP_SCRIPT)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port))
        procs.append(subprocess.Popen(
            [sys.executable, str(script), shards, str(tmp_path / "cache"),
             str(tmp_path / f"out{rank}.json")], env=env))
    assert all(p.wait(timeout=120) == 0 for p in procs)
    import json

    keys = [json.loads((tmp_path / f"out{r}.json").read_text())["keys"] for r in range(2)]
    assert keys[0] and keys[1] and not set(keys[0]) & set(keys[1])
    assert sorted(keys[0] + keys[1]) == [f"k{i:02d}" for i in range(10) if i not in (7, 8)]
    assert len(list((tmp_path / "cache").iterdir())) == 1  # built once, by rank 0
