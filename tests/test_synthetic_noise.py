"""Misalignment kinds with exact per-kind rates, the study preset, and the MIL-NCE candidate
bags (neighbour modes) of the synthetic benchmark's plan."""

import hashlib
import json
from collections import Counter

import pytest

from gradharmony.data.synthetic.plan import (
    PRESETS,
    RANDOM_NEIGHBORS,
    NoiseConfig,
    noise_config,
    plan_split,
)

N = 2000


def _obj(event):
    return event["shape"], event["colour"]


def _by_key(clips):
    return {(c["video_id"], c["clip_index"]): c for c in clips}


def _described(clips):
    """key -> the object (shape, colour) the clip's given narration describes (None: none)."""
    by = _by_key(clips)
    return {c["__key__"]: None if c["text_source_clip"] is None
            else _obj(by[(c["video_id"], c["text_source_clip"])]["event"]) for c in clips}


@pytest.fixture(scope="module")
def study():
    return plan_split("train", N, seed=2, noise=noise_config("study"))


def test_study_preset_has_exact_kind_counts(study):
    t = Counter(c["text_noise"] for c in study)
    a = Counter(c["audio_noise"] for c in study)
    want = PRESETS["study"].kind_rates()
    assert want == pytest.approx({"off_topic": 0.25, "same_object_shift": 0.1,
                                  "other_object_shift": 0.15, "unrelated_audio": 0.2,
                                  "music": 0.1})
    for kind, rate in want.items():
        assert abs((t + a)[kind] - rate * N) <= 1, kind
    assert t["aligned"] == N // 2


def test_shift_kinds_describe_what_they_say(study):
    by = _by_key(study)
    seen = Counter()
    for c in study:
        kind = c["text_noise"]
        if kind not in ("same_object_shift", "other_object_shift"):
            assert (c["text_source_clip"] is None) == (kind == "off_topic")
            continue
        src = by[(c["video_id"], c["text_source_clip"])]
        assert src is not c
        if kind == "same_object_shift":  # the same object in another motion
            assert _obj(src["event"]) == _obj(c["event"])
            assert src["event"]["motion"] != c["event"]["motion"]
        else:
            assert _obj(src["event"]) != _obj(c["event"])
        # the nearest such segment of the video: brute force over the video's clips
        video = [o for o in study if o["video_id"] == c["video_id"]]
        ok = [o["clip_index"] for o in video if o is not c
              and (_obj(o["event"]) == _obj(c["event"])) == (kind == "same_object_shift")
              and (kind == "other_object_shift" or o["event"]["motion"] != c["event"]["motion"])]
        d = abs(c["text_source_clip"] - c["clip_index"])
        assert d == min(abs(o - c["clip_index"]) for o in ok)
        seen[kind] += 1
    assert seen["same_object_shift"] and seen["other_object_shift"]


def test_random_neighbours_never_name_the_own_object_nor_come_from_the_video(study):
    described = _described(study)
    keys = {c["__key__"]: c for c in study}
    for c in study:
        assert len(c["neighbors"]) == RANDOM_NEIGHBORS == len(set(c["neighbor_keys"]))
        for text, key in zip(c["neighbors"], c["neighbor_keys"]):
            assert keys[key]["video_id"] != c["video_id"]
            assert keys[key]["txt"] == text
            assert described[key] != _obj(c["event"])


def test_neighbour_mode_changes_only_the_bags():
    common = dict(text_noise=0.5, audio_noise=0.2, shift_fraction=0.7, music_fraction=0.5)
    plans = {m: plan_split("train", 300, seed=4, noise=NoiseConfig(**common, neighbors=m))
             for m in ("same-video", "random", "none")}
    strip = {"neighbors", "neighbor_keys", "neighbor_clip_indices"}
    rows = {m: [{k: v for k, v in c.items() if k not in strip} for c in p]
            for m, p in plans.items()}
    assert rows["same-video"] == rows["random"] == rows["none"]
    assert all(c["neighbors"] == [] == c["neighbor_keys"] for c in plans["none"])
    same = plans["same-video"]
    for c in same:
        assert all(k.startswith(c["video_id"]) for k in c["neighbor_keys"])
    assert plan_split("train", 300, seed=4, noise=NoiseConfig(**common, neighbors="random")) \
        == plans["random"]


def test_legacy_presets_give_the_data_of_version_1():
    """Digests of the plan written by the generator before the kinds were split (version 1:
    ``shifted``/``unrelated``), computed from that code: narrations, sources, audio kinds,
    render seeds and neighbours are unchanged; only the kind names are refined."""
    digests = {"howto": "4a82fb10dca55820", "wild": "69d6622f25426b43"}
    for preset, digest in digests.items():
        clips = plan_split("train", 300, seed=3, noise=noise_config(preset))
        rows = [(c["__key__"], c["txt"], c["text_source_clip"], c["audio_noise"],
                 c["render"]["seed"], c["neighbors"]) for c in clips]
        assert hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16] == digest, preset


def test_same_videos_for_every_preset_of_a_seed():
    plans = [plan_split("train", 400, seed=9, noise=noise_config(p)) for p in PRESETS]
    events = [[(c["__key__"], c["event"]) for c in p] for p in plans]
    assert all(e == events[0] for e in events)


def test_per_kind_rates_convert_to_the_fields():
    c = noise_config("clean", same_object_shift=0.1, other_object_shift=0.3, off_topic=0.2,
                     unrelated_audio=0.15, music=0.05)
    assert c.kind_rates() == pytest.approx({"same_object_shift": 0.1, "other_object_shift": 0.3,
                                            "off_topic": 0.2, "unrelated_audio": 0.15,
                                            "music": 0.05})
    clips = plan_split("train", 1000, seed=0, noise=c)
    got = Counter(x["text_noise"] for x in clips) + Counter(x["audio_noise"] for x in clips)
    for kind, rate in c.kind_rates().items():
        assert abs(got[kind] - 1000 * rate) <= 1, kind
    # one kind replaced, the others of the preset kept
    s = noise_config("study", off_topic=0.05).kind_rates()
    assert s == pytest.approx({**PRESETS["study"].kind_rates(), "off_topic": 0.05})
    # a shift kind on a preset with adjacent shifts: exact kinds, the other shift kind 0
    h = noise_config("howto", other_object_shift=0.1).kind_rates()
    assert h == pytest.approx({"off_topic": 0.15, "same_object_shift": 0.0,
                               "other_object_shift": 0.1, "unrelated_audio": 0.05,
                               "music": 0.05})
    assert noise_config("howto", off_topic=0.3).kind_rates()["adjacent_shift"] == 0.35


@pytest.mark.parametrize("kwargs, match", [
    ({"off_topic": 1.5}, "off_topic"),
    ({"music": -0.1}, "music"),
    ({"off_topic": 0.6, "same_object_shift": 0.5}, "add up to 1.1"),
    ({"unrelated_audio": 0.7, "music": 0.4}, "audio kinds add up"),
    ({"off_topic": 0.2, "text_noise": 0.3}, "cannot be combined"),
    ({"music": 0.2, "music_fraction": 0.3}, "cannot be combined"),
    ({"neighbors": "adjacent"}, "neighbors: expected one of same-video, random, none"),
    ({"other_object_share": 1.2}, "other_object_share"),
    ({"offtopic": 0.2}, "unknown rate"),
])
def test_bad_kind_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        noise_config("clean", **kwargs)


def test_infeasible_shift_rate_is_a_clear_error():
    # other-object shifts exist only in two-object videos (~40 % of them)
    with pytest.raises(ValueError, match="other_object_shift: 480 of 800 clips requested"):
        plan_split("train", 800, seed=0, noise=noise_config("clean", other_object_shift=0.6))
