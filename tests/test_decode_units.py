"""The frame picker and the audio window of the decoder, on fake frames and fake audio."""

import numpy as np
import pytest

from gradharmony.data.decode import AudioWindow, FramePicker, SampleError


def _nearest(times: np.ndarray, target: float) -> int:
    """Brute force: the frame whose time is nearest to target (ties: the earlier)."""
    d = np.abs(times - target)
    return int(np.flatnonzero(d == d.min())[0])


@pytest.mark.parametrize("seed", range(20))
def test_each_target_gets_the_nearest_frame(seed):
    rng = np.random.default_rng(seed)
    origin = float(rng.uniform(0, 3))
    gaps = rng.choice([0.05, 0.1, 0.125, 0.25], size=int(rng.integers(5, 30)))
    times = np.concatenate([[0.0], np.cumsum(gaps)])
    targets = float(rng.uniform(0, 0.5)) + np.arange(int(rng.integers(1, 8))) * 0.25
    targets = targets[targets <= times[-1]]
    if targets.size == 0:
        targets = np.array([0.0])
    picker = FramePicker(targets, convert=lambda i: ("kept", i))
    for i, t in enumerate(times):
        picker.offer(origin + t, i)
    assert picker.complete
    assert picker.finish(period=0.25) == [("kept", _nearest(times, t)) for t in targets]


def test_a_tie_goes_to_the_earlier_frame_and_missing_times_count_as_zero():
    picker = FramePicker(np.array([0.0, 0.5]))
    picker.offer(None, "a")
    picker.offer(1.0, "b")  # 0.5 is as near to a (0) as to b (1)
    assert picker.finish(period=0.5) == ["a", "a"]


def test_targets_after_the_last_frame_reuse_it_within_one_period():
    picker = FramePicker(np.array([0.0, 0.25, 0.5]))
    for t in (10.0, 10.25):
        picker.offer(t, t)
    assert not picker.complete
    assert picker.finish(period=0.25) == [10.0, 10.25, 10.25]
    short = FramePicker(np.array([0.0, 0.25, 0.75]))
    for t in (0.0, 0.25):
        short.offer(t, t)
    with pytest.raises(SampleError, match="too_short: last frame at 0.250 s, clip needs 0.750"):
        short.finish(period=0.25)


def test_no_frame_is_a_corrupt_video():
    with pytest.raises(SampleError) as err:
        FramePicker(np.array([0.0])).finish(period=1.0)
    assert err.value.reason == "corrupt_video"


def _fake_track(n: int) -> np.ndarray:
    return (np.arange(n) * 1e-4).astype(np.float32)  # each sample holds its index


@pytest.mark.parametrize("lead_s", [-0.5, -0.125, 0.0, 0.25, 1.0])
@pytest.mark.parametrize("start_s", [0.0, 0.375, 1.5])
def test_the_window_is_cut_by_timestamps(lead_s, start_s):
    rate, n, total = 8, 12, 40
    video_origin, audio_origin = 2.0, 2.0 + lead_s
    track = _fake_track(total)
    window = AudioWindow(start_s, rate, n)
    pieces = np.split(track, [5, 6, 23])
    window.add([pieces[0]], time=audio_origin)
    for piece in pieces[1:]:
        window.add([piece])
    got = window.cut(video_origin)
    for j in range(n):
        # brute force: the track sample at the absolute time of window sample j
        t = video_origin + start_s + j / rate
        i = (t - audio_origin) * rate
        assert i == int(i)
        want = track[int(i)] if 0 <= i < total else 0.0
        assert got[j] == want, (j, got[j], want)


def test_the_window_is_complete_once_its_last_sample_arrived():
    window = AudioWindow(start=1.0, rate=4, samples=4)  # samples 4..7 of a track starting with
    window.add([np.zeros(5)], time=0.0)                # the video; 8 must be there too
    assert not window.complete(video_origin=0.0)
    window.add([np.zeros(3)])
    assert not window.complete(video_origin=0.0)
    window.add([np.zeros(1)])
    assert window.complete(video_origin=0.0)
    # the same samples with no video frame decoded yet: where the window lies is unknown
    assert not window.complete(video_origin=None)
    # the audio starting 1 s after the video: the window is the track's first samples
    assert window.complete(video_origin=-1.0) and window.first_sample(-1.0) == 0


def test_an_audio_track_without_samples_is_bad_audio_and_loud_samples_are_clipped():
    with pytest.raises(SampleError) as err:
        AudioWindow(0.0, 8, 4).cut(0.0)
    assert err.value.reason == "bad_audio"
    window = AudioWindow(0.0, 8, 4)
    window.add([np.array([[2.0, -3.0, 0.5]])], time=0.0)
    np.testing.assert_array_equal(window.cut(0.0), np.array([1.0, -1.0, 0.5, 0.0], np.float32))
