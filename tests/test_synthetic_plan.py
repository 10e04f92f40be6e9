"""Metadata of the synthetic benchmark (no rendering): misalignment rates, narrations,
neighbours, labels, and argument checking."""

from collections import Counter

import pytest

from gradharmony.data.synthetic.events import MOTIONS, SHAPES
from gradharmony.data.synthetic.narration import (
    COLOUR_WORDS,
    EVENT_WORDS,
    MOTION_WORDS,
    SHAPE_WORDS,
)
from gradharmony.data.synthetic.plan import (
    AUDIO_KINDS,
    PRESETS,
    TEXT_KINDS,
    NoiseConfig,
    noise_config,
    plan_split,
)

N = 3000


@pytest.fixture(scope="module")
def howto():
    return plan_split("train", N, seed=5, noise=noise_config("howto"))


@pytest.mark.parametrize("text, audio, shift, music", [
    (0.5, 0.1, 0.7, 0.5), (0.7, 0.4, 0.4, 0.6), (0.33, 0.17, 0.25, 0.9), (0.0, 0.0, 0.6, 0.5),
    (1.0, 1.0, 0.5, 0.5),
])
def test_noise_rates_match_request(text, audio, shift, music):
    noise = NoiseConfig(text, audio, shift, music)
    clips = plan_split("train", N, seed=1, noise=noise)
    t = Counter(c["text_noise"] for c in clips)
    a = Counter(c["audio_noise"] for c in clips)
    assert set(t) <= set(TEXT_KINDS) and set(a) <= set(AUDIO_KINDS)
    shifted = t["same_object_shift"] + t["other_object_shift"]
    # counts are exact up to rounding: well within one clip of the requested fraction
    assert abs((shifted + t["off_topic"]) / N - text) <= 1 / N
    assert abs(shifted / N - text * shift) <= 2 / N
    assert abs((a["music"] + a["unrelated_audio"]) / N - audio) <= 1 / N
    assert abs(a["music"] / N - audio * music) <= 2 / N
    # the boolean ground truth agrees with the kind
    assert all(c["text_aligned"] == (c["text_noise"] == "aligned") for c in clips)
    assert all(c["audio_aligned"] == (c["audio_noise"] == "aligned") for c in clips)


def test_text_and_audio_noise_are_independent(howto):
    both = sum(not c["text_aligned"] and not c["audio_aligned"] for c in howto) / N
    assert both == pytest.approx(0.5 * 0.1, abs=0.02)


def _obj(event):
    return event["shape"], event["colour"]


def _mentions(text, phrases):
    padded = f" {text} "
    return any(f" {p} " in padded for p in phrases)


def test_narrations_match_their_ground_truth(howto):
    by_key = {(c["video_id"], c["clip_index"]): c for c in howto}
    for c in howto:
        assert 1 <= len(c["txt"].split()) <= 16
        kind = c["text_noise"]
        if kind == "off_topic":
            assert not set(c["txt"].split()) & EVENT_WORDS
            assert c["text_source_clip"] is None
            continue
        src = c if kind == "aligned" else by_key[(c["video_id"], c["text_source_clip"])]
        if kind != "aligned":  # howto: shifts go to the adjacent segment
            assert abs(c["text_source_clip"] - c["clip_index"]) == 1
            assert src["event"]["motion"] != c["event"]["motion"]
            same = _obj(src["event"]) == _obj(c["event"])
            assert kind == ("same_object_shift" if same else "other_object_shift")
        ev = src["event"]
        motion_phrases = [p for pair in MOTION_WORDS[ev["motion"]] for p in pair]
        assert _mentions(c["txt"], motion_phrases), (c["txt"], ev)
        # whatever object words it uses are those of the described event
        for table, name in ((COLOUR_WORDS, "colour"), (SHAPE_WORDS, "shape")):
            others = [p for k, ps in table.items() if k != ev[name] for p in ps
                      if p not in table[ev[name]]]
            assert not _mentions(c["txt"], [p for p in others if " " not in p]), (c["txt"], ev)


def test_narrations_are_varied(howto):
    texts = [c["aligned_text"] for c in howto]
    assert len(set(texts)) > 0.9 * len(texts)
    vocab = {w for t in texts for w in t.split()}
    assert 100 < len(vocab) < 400


def test_neighbors_nearest_first(howto):
    videos = {}
    for c in howto:
        videos.setdefault(c["video_id"], []).append(c)
    assert all(len(v) >= 2 for v in videos.values())
    for clips in videos.values():
        n = len(clips)
        assert [c["clip_index"] for c in clips] == list(range(n))
        for c in clips:
            j = c["clip_index"]
            # brute force: all other clips, by distance, the earlier one first on ties
            expected = []
            for dist in range(1, n):
                expected += [o for o in (j - dist, j + dist) if 0 <= o < n]
            assert c["neighbor_clip_indices"] == expected
            assert c["neighbors"] == [clips[o]["txt"] for o in expected]
            assert c["start"] == pytest.approx(2.0 * j) and c["end"] == pytest.approx(2.0 * j + 2)


def test_adjacent_segments_differ_in_motion_and_labels(howto):
    for a, b in zip(howto, howto[1:]):
        if a["video_id"] == b["video_id"]:
            assert a["event"]["motion"] != b["event"]["motion"]
    for c in howto:
        assert MOTIONS[c["label"]] == c["event"]["motion"] == c["label_name"]
        assert SHAPES[c["labels"]["sound"]] == c["event"]["shape"]
    keys = [c["__key__"] for c in howto]
    assert keys == sorted(keys) and len(set(keys)) == N


def test_unrelated_audio_differs_in_shape_and_motion(howto):
    unrelated = [c for c in howto if c["audio_noise"] == "unrelated_audio"]
    assert unrelated
    for c in unrelated:
        assert c["audio_event"]["shape"] != c["event"]["shape"]
        assert c["audio_event"]["motion"] != c["event"]["motion"]


def test_plan_is_deterministic_and_seed_dependent():
    a = plan_split("train", 50, seed=3, noise=noise_config("wild"))
    assert a == plan_split("train", 50, seed=3, noise=noise_config("wild"))
    assert a != plan_split("train", 50, seed=4, noise=noise_config("wild"))
    assert plan_split("retrieval", 50, seed=3)[0]["__key__"].startswith("retrieval_")


def test_presets():
    assert PRESETS["clean"].text_noise == 0 and PRESETS["clean"].audio_noise == 0
    assert PRESETS["howto"].text_noise == 0.5
    assert PRESETS["wild"].text_noise > PRESETS["howto"].text_noise
    assert PRESETS["wild"].audio_noise > PRESETS["howto"].audio_noise
    assert noise_config("howto", text_noise=0.2, audio_noise=None).text_noise == 0.2


@pytest.mark.parametrize("kwargs, match", [
    ({"text_noise": -0.1}, "text_noise"),
    ({"audio_noise": 1.5}, "audio_noise"),
    ({"shift_fraction": 2.0}, "shift_fraction"),
    ({"music_fraction": -1.0}, "music_fraction"),
])
def test_bad_rates(kwargs, match):
    with pytest.raises(ValueError, match=match):
        noise_config("clean", **kwargs)


def test_bad_preset_and_sizes():
    with pytest.raises(ValueError, match="preset.*'youtube'"):
        noise_config("youtube")
    with pytest.raises(ValueError, match="unknown rate"):
        noise_config("clean", text_nois=0.3)
    with pytest.raises(ValueError, match="n_clips"):
        plan_split("train", -1, seed=0)
    with pytest.raises(ValueError, match="segments"):
        plan_split("train", 10, seed=0, segments=(1, 3))
