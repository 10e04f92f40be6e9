"""Reading real tri-modal shards: decoding, tokenizer, loader, sharding, mixtures, bad input.

Fixture clips have known content: frame t of clip i has red = 20 t and green = 10 i; clip i
sounds a sine at 200 + 100 i Hz; its narration is "clip number i". The oracles below are
brute-force nearest-timestamp searches and closed-form waveforms, independent of the reader.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import json
import os
import tarfile

import av
import numpy as np
import pytest
import torch

from gradharmony.data import (
    ClipSpec,
    SampleError,
    ShardSet,
    SkipCounter,
    TextTokenizer,
    decode_clip,
    make_loader,
)
from gradharmony.data import dataset as dataset_module
from gradharmony.data.cli import main_build_vocab
from gradharmony.data.collate import collate
from gradharmony.data.writer import ShardWriter, encode_mp4
from tests.media import garble_audio

SRC_FPS, SRC_FRAMES, SRC_RATE = 8, 12, 16000  # 1.5 s source clips
SPEC = ClipSpec(frames=4, fps=4.0, size=16, crop=12, audio_rate=8000, clip_seconds=1.0)


def tone_hz(i: int) -> float:
    return 200.0 + 100.0 * (i % 30)


def clip_frames(i: int, n: int = SRC_FRAMES, h: int = 24, w: int = 32) -> np.ndarray:
    f = np.zeros((n, h, w, 3), np.uint8)
    f[..., 0] = (20 * np.arange(n) % 256)[:, None, None]
    f[..., 1] = 10 * (i % 25)
    return f


def clip_audio(i: int, seconds: float = SRC_FRAMES / SRC_FPS) -> np.ndarray:
    t = np.arange(int(seconds * SRC_RATE)) / SRC_RATE
    return (0.5 * np.sin(2 * np.pi * tone_hz(i) * t)).astype(np.float32)


def clip_mp4(i: int, n: int = SRC_FRAMES, audio: bool = True) -> bytes:
    return encode_mp4(clip_frames(i, n), SRC_FPS,
                      clip_audio(i, n / SRC_FPS) if audio else None, SRC_RATE)


def sample(i: int, **over) -> dict:
    s = {"__key__": f"c{i:04d}", "mp4": clip_mp4(i), "txt": f"clip number {i}",
         "json": {"video_id": f"v{i // 4}", "start": float(i), "end": i + 1.5,
                  "neighbors": [f"after {i}", f"before {i}"], "label": i % 3,
                  "text_aligned": True}}
    s.update(over)
    return s


def write_set(d, prefix: str, samples, per_shard: int) -> str:
    with ShardWriter(d, prefix=prefix, max_count=per_shard) as w:
        for s in samples:
            w.write({k: v for k, v in s.items() if v is not None})
    return os.path.join(str(d), f"{prefix}-*.tar")


@pytest.fixture(scope="module")
def mp4_cache():
    return {i: clip_mp4(i) for i in range(40)}


@pytest.fixture(scope="module")
def tok():
    words = [f"clip number {i}" for i in range(60)] + [f"after {i} before {i}" for i in range(60)]
    return TextTokenizer.from_texts(words)


def clean_set(tmp_path_factory, mp4_cache, n: int, per_shard: int, prefix: str = "s") -> str:
    d = tmp_path_factory.mktemp(prefix)
    return write_set(d, prefix, [sample(i, mp4=mp4_cache[i % 40]) | {"__key__": f"c{i:04d}"}
                                 for i in range(n)], per_shard)


@pytest.fixture(scope="module")
def shards12(tmp_path_factory, mp4_cache):
    return clean_set(tmp_path_factory, mp4_cache, 12, 5)


def nearest_frame(t: float) -> int:
    """Brute force: the source frame whose timestamp is nearest to t (ties: earlier)."""
    times = np.arange(SRC_FRAMES) / SRC_FPS
    d = np.abs(times - t)
    return int(np.flatnonzero(d <= d.min() + 1e-9)[0])


@pytest.mark.parametrize("workers", [0, 2])
def test_round_trip_frames_audio_text_meta(shards12, tok, workers):
    spec = dataclasses.replace(SPEC, candidates=4, text_len=6)
    loader = make_loader(shards12, spec, tok, batch_size=5, train=False, infinite=False,
                         num_workers=workers)
    batches = list(loader)
    assert sorted(len(b["key"]) for b in batches) == ([2, 5, 5] if workers == 0 else
                                                      [1, 1, 5, 5])
    start = (SRC_FRAMES / SRC_FPS - SPEC.clip_seconds) / 2  # eval: the centred window
    want_idx = [nearest_frame(start + j / SPEC.fps) for j in range(SPEC.frames)]
    t = start + np.arange(SPEC.audio_samples) / SPEC.audio_rate
    seen = []
    for b in batches:
        assert b["video"].dtype == torch.float32 and b["video"].shape[1:] == (4, 12, 12, 3)
        assert b["audio"].shape[1:] == (SPEC.audio_samples,)
        assert b["text"].shape[1:] == (4, 6) and b["text"].dtype == torch.int64
        for r, key in enumerate(b["key"]):
            i = int(key[1:])
            seen.append(i)
            red = b["video"][r, :, :, :, 0].mean(dim=(1, 2)).numpy() * 255
            green = b["video"][r, :, :, :, 1].mean().item() * 255
            np.testing.assert_allclose(red, 20 * np.array(want_idx), atol=4)
            assert abs(green - 10 * i) < 4
            want = 0.5 * np.sin(2 * np.pi * tone_hz(i) * t)
            got = b["audio"][r].numpy()
            assert np.corrcoef(got, want)[0, 1] > 0.95
            assert abs(np.sqrt((got ** 2).mean()) - 0.5 / np.sqrt(2)) < 0.05
            assert tok.decode(b["text"][r, 0]) == f"clip number {i}"
            assert tok.decode(b["text"][r, 1]) == f"after {i}"
            assert tok.decode(b["text"][r, 2]) == f"before {i}"
            assert b["candidate_mask"][r].tolist() == [True, True, True, False]
            assert b["text_mask"][r, 0].tolist() == [True] * 3 + [False] * 3
            assert b["meta"][r] == sample(i)["json"]
            assert b["label"][r].item() == i % 3
        assert b["has_text"].all() and b["has_audio"].all()
    assert sorted(seen) == list(range(12))


def test_fps_sampling_and_crop_sizes():
    data = clip_mp4(3)
    for fps, frames in [(8.0, 8), (4.0, 4), (2.0, 3)]:
        spec = ClipSpec(frames=frames, fps=fps, size=20, crop=10, audio_rate=4000, clip_seconds=1.0)
        video, audio, has_audio = decode_clip(data, spec, train=False)
        assert video.shape == (frames, 10, 10, 3) and audio.shape == (4000,) and has_audio
        start = 0.25
        want = [20 * nearest_frame(start + j / fps) for j in range(frames)]
        np.testing.assert_allclose(video[..., 0].mean(axis=(1, 2)) * 255, want, atol=4)


def test_train_crop_is_random_and_flips_eval_is_centred():
    f = np.zeros((8, 32, 48, 3), np.uint8)
    f[:, :, 24:] = 255  # left half black, right half white
    data = encode_mp4(f, 8)
    spec = ClipSpec(frames=2, fps=4.0, size=16, crop=8, audio_rate=8000, clip_seconds=0.5)
    video, audio, has_audio = decode_clip(data, spec, train=False)
    assert not has_audio and not audio.any()
    # centre crop of the centred 16x16 square: columns 4..11, the black/white edge at 8
    cols = video[0, :, :, 0].mean(axis=0)
    assert cols[:3].max() < 0.1 and cols[5:].min() > 0.9
    flipped = 0
    for seed in range(12):
        v, _, _ = decode_clip(data, spec, train=True, rng=np.random.default_rng(seed))
        assert v.shape == (2, 8, 8, 3)
        c = v[0, :, :, 0].mean(axis=0)
        flipped += c[0] > c[-1]
    assert 0 < flipped < 12


def test_too_short_corrupt_and_missing_audio_track():
    spec = ClipSpec(frames=4, fps=4.0, size=16, crop=12, audio_rate=8000, clip_seconds=2.0)
    with pytest.raises(SampleError) as e:
        decode_clip(clip_mp4(0), spec)  # 1.5 s < 2.0 s - 1/4 s
    assert e.value.reason == "too_short"
    with pytest.raises(SampleError) as e:
        decode_clip(clip_mp4(0)[: 3000], SPEC)
    assert e.value.reason == "corrupt_video"
    video, audio, has_audio = decode_clip(clip_mp4(0, audio=False), SPEC)
    assert not has_audio and audio.shape == (SPEC.audio_samples,) and not audio.any()


def test_loader_is_deterministic_for_a_seed(shards12, tok):
    def run(seed):
        loader = make_loader(shards12, SPEC, tok, batch_size=4, seed=seed, shuffle_buffer=4)
        out = []
        for b in loader:
            out.append(b)
            if len(out) == 4:
                return out

    a, b, c = run(5), run(5), run(6)
    assert [x["key"] for x in a] == [x["key"] for x in b]
    for x, y in zip(a, b):
        assert torch.equal(x["video"], y["video"]) and torch.equal(x["audio"], y["audio"])
    assert [x["key"] for x in a] != [x["key"] for x in c]
    assert any(not torch.equal(x["video"], y["video"]) for x, y in zip(a, c))


@pytest.mark.parametrize("per_reader", [1, 8])  # 1: split by shards; 8: split by clips
def test_ddp_times_workers_sharding_has_no_duplicate_and_no_loss(
        tmp_path_factory, mp4_cache, tok, monkeypatch, per_reader):
    pattern = clean_set(tmp_path_factory, mp4_cache, 18, 3, prefix=f"ddp{per_reader}")
    monkeypatch.setattr(dataset_module, "SHARDS_PER_READER", per_reader)
    spec = ClipSpec(frames=1, fps=4.0, size=8, crop=8, audio_rate=4000, clip_seconds=1.0)
    orders = []
    for epoch in (0, 1):
        keys = []
        for rank in range(2):
            loader = make_loader(pattern, spec, tok, batch_size=4, rank=rank, world_size=2,
                                 num_workers=2, infinite=False, epoch=epoch, seed=1)
            rank_keys = [k for b in loader for k in b["key"]]
            assert 4 <= len(rank_keys) <= 14
            keys += rank_keys
        assert sorted(keys) == [f"c{i:04d}" for i in range(18)]
        orders.append(keys)
    assert orders[0] != orders[1]  # each epoch has its own order


def test_mixture_weights_and_text_free_set(tmp_path_factory, mp4_cache, tok):
    a = clean_set(tmp_path_factory, mp4_cache, 8, 4, prefix="mixa")
    d = tmp_path_factory.mktemp("mixb")
    b = write_set(d, "b", [sample(i, mp4=mp4_cache[i], txt=None) | {"__key__": f"b{i:02d}"}
                           for i in range(6)], 6)
    spec = ClipSpec(frames=1, fps=4.0, size=8, crop=8, audio_rate=4000, clip_seconds=1.0)
    sets = [ShardSet(a, weight=3.0, name="narrated"), ShardSet(b, weight=1.0, text=False)]
    loader = make_loader(sets, spec, tok, batch_size=20, seed=3)
    n_b = n = 0
    for j, batch in enumerate(loader):
        from_b = torch.tensor([k.startswith("b") for k in batch["key"]])
        assert torch.equal(batch["has_text"], ~from_b)
        assert not batch["candidate_mask"][from_b].any() and not batch["text"][from_b].any()
        assert batch["candidate_mask"][~from_b, 0].all()
        n_b += int(from_b.sum())
        n += len(from_b)
        if j == 11:
            break
    assert loader.skipped.total == 0  # the missing .txt of the text-free set is no error
    # epoch mode: a used-up set leaves the draw, every clip of both sets comes exactly once
    once = make_loader(sets, spec, tok, batch_size=5, seed=3, infinite=False, num_workers=2)
    keys = sorted(k for b in once for k in b["key"])
    assert keys == sorted([f"b{i:02d}" for i in range(6)] + [f"c{i:04d}" for i in range(8)])
    # 240 i.i.d. draws with p = 1/4: standard deviation 0.028
    assert abs(n_b / n - 0.25) < 0.09


@pytest.fixture(scope="module")
def corrupt_set(tmp_path_factory, mp4_cache):
    d = tmp_path_factory.mktemp("corrupt")
    good = mp4_cache[0]
    rng = np.random.default_rng(0)
    samples = [sample(i, mp4=mp4_cache[i]) for i in range(6)] + [
        sample(10, mp4=rng.integers(0, 256, 5000, dtype=np.uint8).tobytes()),  # corrupt
        sample(11, mp4=good[: len(good) // 2]),  # truncated mp4 (moov at the end)
        sample(12, txt=None),
        sample(13, json=None),
        sample(14, json=b"{not json"),
        sample(15, txt="  \n"),
        sample(16, mp4=clip_mp4(16, n=4)),  # 0.5 s: shorter than the 1 s clip
        sample(17, mp4=garble_audio(clip_mp4(17))),
        sample(18, mp4=None),
    ]
    order = rng.permutation(len(samples))
    write_set(d, "bad", [samples[j] for j in order], 5)
    # a truncated tar: two good clips, then a cut in the middle of the third clip's mp4
    with ShardWriter(d, prefix="cut", max_count=10) as w:
        for i in (20, 21, 22):
            w.write(sample(i, mp4=mp4_cache[i]))
    path = os.path.join(str(d), "cut-000000.tar")
    with tarfile.open(path) as tar:
        cut_at = next(m.offset_data for m in tar.getmembers() if m.name == "c0022.mp4") + 100
    with open(path, "r+b") as f:
        f.truncate(cut_at)
    return os.path.join(str(d), "*.tar")


EXPECTED_SKIPS = {"corrupt_video": 2, "missing_txt": 1, "missing_json": 1, "bad_json": 1,
                  "empty_text": 1, "too_short": 1, "bad_audio": 1, "missing_video": 1,
                  "truncated_tar": 1}


@pytest.mark.parametrize("workers", [0, 2])
def test_corrupt_inputs_are_skipped_and_counted_by_reason(corrupt_set, tok, workers):
    loader = make_loader(corrupt_set, SPEC, tok, batch_size=3, train=False, infinite=False,
                         num_workers=workers)
    keys = sorted(k for b in loader for k in b["key"])
    assert keys == [f"c{i:04d}" for i in [0, 1, 2, 3, 4, 5, 20, 21]]
    assert loader.skipped.as_dict() == EXPECTED_SKIPS


def test_set_without_usable_clip_is_an_error(tmp_path, tok):
    pattern = write_set(tmp_path, "dead", [sample(i, json=b"[]") for i in range(3)], 2)
    for infinite in (False, True):
        loader = make_loader(pattern, SPEC, tok, batch_size=2, infinite=infinite)
        with pytest.raises(RuntimeError, match=r"dead-\*\.tar.*no usable clip.*bad_json"):
            next(iter(loader))
    with pytest.raises(ValueError, match="matches no file"):
        make_loader(str(tmp_path / "nothing-*.tar"), SPEC, tok, batch_size=2)
    with pytest.raises(ValueError, match="tokenizer"):
        make_loader(pattern, SPEC, None, batch_size=2)


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_replays_the_same_batches(shards12, tok, workers):
    def fresh():
        return make_loader(shards12, SPEC, tok, batch_size=3, seed=2, num_workers=workers,
                           shuffle_buffer=4)

    loader, state, after = fresh(), None, []
    for j, b in enumerate(loader):
        if j == 4:
            state = copy.deepcopy(loader.state_dict())
        if j > 4:
            after.append(b)
        if j == 9:
            break
    assert state["batches"] == 5
    resumed = fresh()
    resumed.load_state_dict(json.loads(json.dumps(state)))
    replay = []
    for b in resumed:
        replay.append(b)
        if len(replay) == len(after):
            break
    assert [b["key"] for b in replay] == [b["key"] for b in after]
    for x, y in zip(replay, after):
        assert torch.equal(x["video"], y["video"]) and torch.equal(x["audio"], y["audio"])
    other_seed = make_loader(shards12, SPEC, tok, batch_size=3, seed=3)
    with pytest.raises(ValueError, match="seed"):
        other_seed.load_state_dict(state)


def test_vocab_round_trip(shards12, tmp_path):
    out = tmp_path / "vocab.json"
    assert main_build_vocab(["--shards", shards12, "--out", str(out), "--quiet"]) == 0
    tok = TextTokenizer.load(out)
    vocab = json.loads(out.read_text())["model"]["vocab"]
    # 12 narrations "clip number i" and neighbours "after i", "before i": the words 12 times
    # each (ties by spelling), then the numbers 0..11, 3 times each
    want = {"[PAD]": 0, "[UNK]": 1, "after": 2, "before": 3, "clip": 4, "number": 5}
    assert {w: vocab[w] for w in want} == want
    assert sorted(vocab) == sorted(want.keys() | {str(i) for i in range(12)})
    ids, mask = tok.encode(["Clip number 7", "unseen words here"], length=5)
    assert ids.tolist() == [[4, 5, vocab["7"], 0, 0], [1, 1, 1, 0, 0]]
    assert mask.sum(1).tolist() == [3, 3]
    assert tok.decode(ids[0]) == "clip number 7"


def test_skip_counter_and_collate_errors():
    c = SkipCounter()
    c.update({"too_short": 2})
    c.add("bad_audio")
    assert c.as_dict() == {"bad_audio": 1, "too_short": 2} and c.total == 3
    s = {"video": np.zeros((1, 2, 2, 3), np.float32), "audio": np.zeros(4, np.float32),
         "text": np.zeros((2, 3), np.int64), "text_mask": np.zeros((2, 3), bool),
         "candidate_mask": np.ones(2, bool), "has_text": True, "has_audio": True,
         "label": 0, "key": "x", "meta": {}}
    with pytest.raises(ValueError, match="'audio' shapes differ"):
        collate([s, s | {"audio": np.zeros(5, np.float32)}])
    with pytest.raises(ValueError, match="has no 'label'"):
        collate([{k: v for k, v in s.items() if k != "label"}])
    with pytest.raises(ValueError, match="crop=80 is larger than size=72"):
        ClipSpec(crop=80)


def test_every_public_name_resolves_and_import_is_cheap():
    import subprocess
    import sys

    import gradharmony.data as data

    for name in data.__all__:
        assert getattr(data, name) is not None, name
    code = "import sys, gradharmony.data; print('torch' in sys.modules, 'av' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_an_unexpected_error_is_counted_and_warned_not_raised(shards12, tok, monkeypatch):
    from gradharmony.data import dataset as ds_module

    real = ds_module.TarSource.load

    def flaky(self, item, *args):
        if item.key == "c0003":
            raise ZeroDivisionError("odd file")
        return real(self, item, *args)

    monkeypatch.setattr(ds_module.TarSource, "load", flaky)
    loader = make_loader(shards12, SPEC, tok, batch_size=4, train=False, infinite=False)
    with pytest.warns(UserWarning, match="c0003.*ZeroDivisionError"):
        keys = [k for b in loader for k in b["key"]]
    assert len(keys) == 11 and "c0003" not in keys
    assert loader.skipped.as_dict() == {"decode_error": 1}


def late_audio_mp4(delay: float, rate: int = 16000) -> bytes:
    """An mp4 whose audio track starts ``delay`` seconds after the video (1.5 s of video)."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as c:
        vs = c.add_stream("libx264", rate=SRC_FPS)
        vs.width, vs.height, vs.pix_fmt = 32, 24, "yuv420p"
        a = c.add_stream("aac", rate=rate)
        a.layout = "mono"
        for i in range(SRC_FRAMES):
            f = av.VideoFrame.from_ndarray(np.full((24, 32, 3), 100, np.uint8), format="rgb24")
            f.pts = i
            c.mux(vs.encode(f))
        c.mux(vs.encode())
        t = np.arange(int(rate * (SRC_FRAMES / SRC_FPS - delay))) / rate
        wave = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        for s in range(0, len(wave), 1024):
            af = av.AudioFrame.from_ndarray(wave[None, s:s + 1024], format="fltp", layout="mono")
            af.sample_rate, af.pts = rate, int(delay * rate) + s
            c.mux(a.encode(af))
        c.mux(a.encode())
    return buf.getvalue()


def test_audio_is_placed_by_its_timestamps():
    spec = ClipSpec(frames=4, fps=4.0, size=16, crop=12, audio_rate=16000, clip_seconds=1.5)
    _, audio, has_audio = decode_clip(late_audio_mp4(0.25), spec)
    assert has_audio
    envelope = np.abs(audio).reshape(-1, 400).max(axis=1)  # 25 ms blocks
    assert envelope[:9].max() < 0.05 and envelope[11:].min() > 0.4  # sound from 0.25 s on


def test_train_window_start_is_random_within_the_video():
    data = clip_mp4(1)  # 1.5 s, frames every 1/8 s; clip of 1 s: start uniform in [0, 0.5]
    spec = ClipSpec(frames=4, fps=4.0, size=16, crop=16, audio_rate=8000, clip_seconds=1.0)
    firsts = set()
    for seed in range(10):
        video, audio, _ = decode_clip(data, spec, train=True, rng=np.random.default_rng(seed))
        idx = np.round(video[:, :, :, 0].mean(axis=(1, 2)) * 255 / 20).astype(int)
        assert 0 <= idx[0] <= 4 and np.all(np.diff(idx) == 2)  # 4 fps out of 8 fps
        firsts.add(int(idx[0]))
    assert len(firsts) >= 3
