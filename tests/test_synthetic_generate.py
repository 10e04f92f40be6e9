"""The synthetic benchmark on disk: layout, byte-determinism, decodability, labels, info.json,
and a round trip through the project's reader."""

import io
import json
import tarfile
from pathlib import Path

import av
import numpy as np
import pytest

from gradharmony.data.cli_synthetic import main
from gradharmony.data.synthetic import av_classification_arrays
from gradharmony.data.synthetic.events import MOTIONS, SHAPES
from gradharmony.data.synthetic.generate import generate, render_planned_clip
from gradharmony.data.synthetic.oracle import oracle_levels
from gradharmony.data.synthetic.plan import ClipSize, noise_config, plan_split

SMALL = {"clips": 10, "retrieval": 4, "probe": (4, 3), "av": (4, 3), "clips_per_shard": 4}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic") / "data"
    info = generate(out, seed=7, noise="wild", workers=0, progress=False, **SMALL)
    return out, info


def _samples(path):
    groups = {}
    with tarfile.open(path) as tar:
        for m in tar.getmembers():
            key, ext = m.name.split(".", 1)
            groups.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return groups


def _split(out, folder, prefix="*"):
    samples = {}
    for p in sorted((out / folder).glob(f"{prefix}-*.tar")):
        samples.update(_samples(p))
    return samples


def test_layout_and_info(dataset):
    out, info = dataset
    assert sorted(p.name for p in (out / "train").iterdir()) == [
        "train-000000.tar", "train-000001.tar", "train-000002.tar"]
    for folder in ("action", "sound", "av"):
        names = sorted(p.name for p in (out / folder).iterdir())
        assert names == ["test-000000.tar", "train-000000.tar"]
    on_disk = json.loads((out / "info.json").read_text())
    assert on_disk == info
    assert info["seed"] == 7
    assert info["sizes"]["frames"] == 16 and info["sizes"]["size"] == 64
    assert info["sizes"]["sample_rate"] == 16000 and info["sizes"]["seconds"] == 2.0
    assert info["noise"]["text_noise"] == 0.7 and info["noise"]["audio_noise"] == 0.4
    assert info["splits"]["train"]["clips"] == 10
    assert info["splits"]["train"]["rates"]["text_noise"] == pytest.approx(0.7)
    assert info["splits"]["train"]["rates"]["audio_noise"] == pytest.approx(0.4)
    assert info["splits"]["action"]["class_names"] == list(MOTIONS)
    assert len(info["splits"]["sound"]["class_names"]) == len(SHAPES)
    assert info["splits"]["av"]["test"]["first_index"] == 4
    rates = info["splits"]["train"]["rates"]
    assert set(rates) - {"text_noise", "audio_noise"} <= {
        "same_object_shift", "other_object_shift", "off_topic", "unrelated_audio", "music"}
    assert info["noise"]["kind_rates"] == pytest.approx(noise_config("wild").kind_rates())
    # the oracle levels of the retrieval split are those of its plan
    want = oracle_levels(plan_split("retrieval", 4, seed=7))
    assert info["splits"]["retrieval"]["oracles"] == json.loads(json.dumps(want))
    for split in ("train", "retrieval"):
        assert all((out / p).is_file() for p in info["splits"][split]["shards"])


def test_tar_members_in_key_order(dataset):
    out, _ = dataset
    names = []
    for p in sorted((out / "train").glob("*.tar")):
        with tarfile.open(p) as tar:
            names += tar.getnames()
    keys = [n.split(".")[0] for n in names]
    assert keys == sorted(keys)
    assert names[:3] == [f"{keys[0]}.json", f"{keys[0]}.mp4", f"{keys[0]}.txt"]


def test_same_seed_same_bytes_any_worker_count(dataset, tmp_path):
    out, info = dataset
    again = generate(tmp_path / "again", seed=7, noise="wild", workers=2, progress=False,
                     **SMALL)
    files = sorted(p.relative_to(out) for p in out.rglob("*.tar"))
    assert files == sorted(p.relative_to(tmp_path / "again")
                           for p in (tmp_path / "again").rglob("*.tar"))
    for f in files:
        assert (out / f).read_bytes() == (tmp_path / "again" / f).read_bytes(), f
    strip = {"seconds", "workers"}
    assert ({k: v for k, v in info.items() if k not in strip}
            == {k: v for k, v in again.items() if k not in strip})
    other = generate(tmp_path / "other", seed=8, noise="wild", workers=0, progress=False,
                     **SMALL)
    assert other["splits"]["train"]["clips"] == 10
    assert ((tmp_path / "other/train/train-000000.tar").read_bytes()
            != (out / "train/train-000000.tar").read_bytes())


def _decode(data):
    with av.open(io.BytesIO(data)) as c:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    with av.open(io.BytesIO(data)) as c:
        rate = c.streams.audio[0].sample_rate
        audio = np.concatenate([f.to_ndarray()[0] for f in c.decode(audio=0)])
    return frames, audio, rate


def test_mp4_decodes_to_the_rendered_clip(dataset):
    out, _ = dataset
    samples = _split(out, "train")
    assert len(samples) == 10
    for key, files in samples.items():
        meta = json.loads(files["json"])
        frames, audio, rate = _decode(files["mp4"])
        assert frames.shape == (16, 64, 64, 3)
        assert rate == 16000
        assert 32000 <= audio.size <= 32000 + 1024
        plan = {**meta, "__key__": key, "txt": files["txt"].decode()}
        want_frames, want_audio = render_planned_clip(plan, ClipSize())
        assert np.abs(frames.astype(float) - want_frames).mean() < 6.0, key
        assert np.corrcoef(audio[:32000], want_audio)[0, 1] > 0.95, key


def test_json_fields_and_narrations(dataset):
    out, _ = dataset
    for split in ("train", "retrieval"):
        for key, files in _split(out, split).items():
            meta = json.loads(files["json"])
            text = files["txt"].decode()
            for field in ("video_id", "clip_index", "start", "end", "neighbors", "label",
                          "text_aligned", "audio_aligned", "text_noise", "audio_noise",
                          "description", "event"):
                assert field in meta, (key, field)
            assert 1 <= len(text.split()) <= 16
            assert meta["end"] - meta["start"] == pytest.approx(2.0)
            assert meta["description"].endswith(meta["event"]["motion"])
            if split == "retrieval":
                assert meta["text_aligned"] and meta["audio_aligned"]
                assert text == meta["aligned_text"]


def test_classification_splits_labels(dataset):
    out, info = dataset
    action = {k: json.loads(f["json"]) for k, f in _split(out, "action").items()}
    sound = {k: json.loads(f["json"]) for k, f in _split(out, "sound").items()}
    assert action.keys() == sound.keys() and len(action) == 7
    for k in action:
        assert MOTIONS[action[k]["label"]] == action[k]["event"]["motion"]
        assert SHAPES[sound[k]["label"]] == sound[k]["event"]["shape"]
        assert action[k]["text_aligned"] and action[k]["audio_aligned"]
    test_keys = {k for k, m in action.items() if m["subset"] == "test"}
    train_keys = set(action) - test_keys
    assert len(test_keys) == 3
    # train and test come from different videos
    assert not {action[k]["video_id"] for k in test_keys} & {action[k]["video_id"]
                                                            for k in train_keys}
    # the av split is the in-memory set, encoded
    avs = _split(out, "av")
    assert all("txt" not in f for f in avs.values())
    metas = [json.loads(avs[k]["json"]) for k in sorted(avs)]
    arrays = av_classification_arrays(7, seed=7, progress=False)
    assert [m["label"] for m in metas] == arrays["label"].tolist()
    frames, audio, _ = _decode(avs["av_000005"]["mp4"])
    assert np.abs(frames.astype(float) - arrays["video"][5]).mean() < 6.0
    assert np.corrcoef(audio[:32000], arrays["audio"][5])[0, 1] > 0.9
    assert info["splits"]["av"]["class_names"] == arrays["class_names"]


def test_round_trip_through_the_reader(dataset):
    data = pytest.importorskip("gradharmony.data")
    from gradharmony.data.decode import ClipSpec, decode_clip_raw
    from gradharmony.data.text import TextTokenizer

    out, _ = dataset
    spec = ClipSpec(frames=16, fps=8.0, size=64, crop=64, audio_rate=16000, clip_seconds=2.0)
    assert ClipSize().read_spec() == spec
    key, files = next(iter(data.iter_tar_groups(out / "train" / "train-000000.tar")))
    frames, audio, has_audio = decode_clip_raw(files["mp4"], spec)
    assert frames.shape == (16, 64, 64, 3) and audio.shape == (32000,) and has_audio
    texts = [f["txt"].decode() for f in _split(out, "train").values()]
    tok = TextTokenizer.from_texts(texts)
    loader = data.make_loader(str(out / "train" / "*.tar"), spec, tok, batch_size=5,
                              train=False, infinite=False)
    batch = next(iter(loader))
    assert batch["video"].shape == (5, 16, 64, 64, 3)
    assert batch["audio"].shape == (5, 32000)
    assert batch["text"].shape[:2] == (5, 4)
    assert batch["candidate_mask"][:, 0].all()
    assert batch["has_text"].all() and batch["has_audio"].all()
    assert {"text_aligned", "audio_aligned"} <= set(batch["meta"][0])


def test_cli(tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["synthetic", "--out", str(out), "--seed", "1", "--clips", "6", "--preset", "howto",
            "--text-noise", "0.5", "--audio-noise", "0.5", "--retrieval-clips", "2",
            "--probe-clips", "2", "2", "--av-clips", "2", "2", "--frames", "4", "--size", "16",
            "--sample-rate", "8000", "--workers", "0", "--quiet"]
    assert main(args) == 0
    info = json.loads((out / "info.json").read_text())
    assert info["splits"]["train"]["rates"]["text_noise"] == 0.5
    assert info["splits"]["train"]["rates"]["audio_noise"] == 0.5
    assert info["sizes"]["frames"] == 4
    assert "wrote" in capsys.readouterr().out
    # an existing data set is not overwritten silently
    assert main(args) == 2
    assert "already holds" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0


def test_cli_kinds_neighbours_and_oracles(tmp_path, capsys):
    out = tmp_path / "kinds"
    args = ["synthetic", "--out", str(out), "--seed", "2", "--clips", "40", "--preset", "clean",
            "--off-topic", "0.25", "--other-object-shift", "0.1", "--music", "0.2",
            "--neighbors", "none", "--retrieval-clips", "12", "--probe-clips", "0", "0",
            "--av-clips", "0", "0", "--frames", "2", "--size", "16", "--sample-rate", "8000",
            "--workers", "0", "--quiet"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "oracle retrieval" in printed and "colour+shape" in printed
    info = json.loads((out / "info.json").read_text())
    rates = info["splits"]["train"]["rates"]
    assert rates["off_topic"] == 0.25 and rates["other_object_shift"] == 0.1
    assert rates["music"] == 0.2 and "same_object_shift" not in rates
    assert info["noise"]["neighbors"] == "none"
    metas = [json.loads(f["json"]) for f in _split(out, "train").values()]
    assert all(m["neighbors"] == [] for m in metas)
    kinds = {m["text_noise"] for m in metas} | {m["audio_noise"] for m in metas}
    assert kinds == {"aligned", "off_topic", "other_object_shift", "music"}
    assert set(info["splits"]["retrieval"]["oracles"]) == {"object", "colour+shape", "full",
                                                           "tie_rule"}


@pytest.mark.parametrize("extra, message", [
    (["--preset", "clean", "--clips", "10", "--other-object-shift", "0.9"],
     "other_object_shift: 9 of 10 clips requested"),
    (["--off-topic", "0.2", "--text-noise", "0.3"], "cannot be combined"),
    (["--music", "1.5"], "music"),
    (["--other-object-share", "2"], "other_object_share"),
    (["--text-noise", "-0.2"], "text_noise"),
    (["--audio-noise", "1.2"], "audio_noise"),
    (["--clips", "-3"], "clips"),
    (["--size", "15"], "size"),
])
def test_cli_bad_arguments(tmp_path, capsys, extra, message):
    assert main(["synthetic", "--out", str(tmp_path / "x"), "--quiet", *extra]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x" / "info.json").exists()


def test_cli_unknown_preset_and_kind(tmp_path, capsys):
    assert main(["synthetic", "--out", str(tmp_path), "--preset", "youtube"]) == 2
    assert "invalid choice" in capsys.readouterr().err
    assert main(["synthetic", "--out", str(tmp_path), "--neighbors", "adjacent"]) == 2
    assert "--neighbors: invalid choice" in capsys.readouterr().err
    assert main(["imagenet"]) == 2
    assert "unknown kind" in capsys.readouterr().err


def test_generate_rejects_bad_sizes(tmp_path):
    with pytest.raises(ValueError, match="probe"):
        generate(tmp_path, clips=2, probe=(-1, 2), progress=False)
    with pytest.raises(ValueError, match="preset"):
        generate(tmp_path, clips=2, noise="noisy", progress=False)
    assert not Path(tmp_path, "info.json").exists()


@pytest.mark.parametrize("neighbors, k", [
    ("none", 1), pytest.param("random", 3, marks=pytest.mark.slow)])
def test_training_on_the_study_preset_with_k_candidates(tmp_path, neighbors, k):
    """configs/study.yaml at toy sizes trains on generated shards with k = 1 (plain NCE on the
    own narration) and with MIL-NCE bags of random-clip neighbours."""
    from gradharmony.train.config import load_config
    from gradharmony.train.loop import pretrain

    data = tmp_path / "data"
    generate(data, seed=1, clips=16, noise=noise_config("clean", off_topic=0.25,
                                                        neighbors=neighbors),
             retrieval=2, probe=(0, 0), av=(0, 0), workers=0, progress=False,
             size=ClipSize(frames=4, fps=8.0, size=16, audio_rate=8000))
    cfg = load_config(Path(__file__).parents[1] / "configs" / "study.yaml", [
        f"data.mixture=[{{shards: {data / 'train'}, weight: 1.0, has_text: true}}]",
        "data.cache_dir=null", "data.frames=4", "data.fps=8.0", "data.size=16", "data.crop=16",
        "data.audio_rate=8000", "data.clip_seconds=0.5", "data.text_len=8",
        f"data.candidates={k}", "model.kwargs.video_patch=[2,8,8]",
        "model.kwargs.audio_patch=128", "model.kwargs.depth=1", "model.kwargs.width=32",
        "model.kwargs.heads=2", "model.kwargs.mlp_dim=64", "batch_size=4", "steps=2",
        "log_every=1", "ckpt_every=2", f"run_dir={tmp_path / 'runs'}", "name=k"])
    pretrain(cfg, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "runs/k/metrics.jsonl").read_text()
            .splitlines()]
    assert [r["step"] for r in rows][-1] == 1
    assert all(np.isfinite(r["loss_vt"]) and r.get("skipped_nonfinite", 0) == 0
               for r in rows)
