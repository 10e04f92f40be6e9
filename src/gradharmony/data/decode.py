"""Decoding one clip with PyAV: frames at a target fps, resize + crop, audio at a target rate.

The spatial pipeline is the same for live decoding and for the decoded-clip cache
(:mod:`gradharmony.data.cache`): every frame is resized so that its short side is
``spec.size``, the central ``size x size`` square is kept (stored as uint8), and the
augmentation then takes a ``crop x crop`` window from it (random position + horizontal flip
in training, the centre in evaluation) and converts it to float32 in [0, 1].

Temporally, the clip window lasts ``spec.clip_seconds``; in training its start is uniform
over the video's duration, in evaluation the window is centred. Inside the window,
``spec.frames`` target times ``start + j / spec.fps`` are each given the decoded frame with the
nearest timestamp (ties go to the earlier frame). A video shorter than
``spec.clip_seconds - 1 / spec.fps`` is rejected as ``too_short`` (:class:`FramePicker`). The
audio track is resampled to mono ``spec.audio_rate`` with :class:`av.AudioResampler`, placed
by its timestamps relative to the first video frame, then cut or zero-padded to
``spec.audio_samples`` (:class:`AudioWindow`); a file without an audio track gets silence and
``has_audio=False``. The sizes are a :class:`~gradharmony.data.clip.ClipSpec`.

Example:
    >>> spec = ClipSpec(frames=4, fps=2.0, size=8, crop=6, audio_rate=8000, clip_seconds=2.0)
    >>> spec.audio_samples
    16000
    >>> frames = np.zeros((4, 8, 8, 3), np.uint8)
    >>> augment_frames(frames, spec, train=False).shape
    (4, 6, 6, 3)
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from gradharmony.data.clip import ClipSpec

#: Stable reasons under which a decoding failure is counted (see :class:`SampleError`).
DECODE_REASONS = ("corrupt_video", "too_short", "bad_audio")


class SampleError(Exception):
    """A sample that cannot be used; ``reason`` is a stable string counted by the loader.

    Example:
        >>> SampleError("too_short", "2.0 s needed").reason
        'too_short'
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


_REFORMATTER: dict[int, object] = {}


def _reformatter():
    """One ``VideoReformatter`` per process: it keeps its scaler between frames (10x faster
    than ``frame.reformat``, which builds a new one per call)."""
    pid = os.getpid()
    if pid not in _REFORMATTER:
        from av.video.reformatter import VideoReformatter

        _REFORMATTER[pid] = VideoReformatter()
    return _REFORMATTER[pid]


def _resize_square(frame, size: int) -> np.ndarray:
    """Resize an ``av.VideoFrame`` to short side ``size`` and keep the central square (uint8)."""
    w, h = frame.width, frame.height
    if w <= h:
        nw, nh = size, max(size, int(round(h * size / w)))
    else:
        nw, nh = max(size, int(round(w * size / h))), size
    img = _reformatter().reformat(frame, width=nw, height=nh, format="rgb24",
                                  interpolation="AREA")
    arr = img.to_ndarray()
    top, left = (nh - size) // 2, (nw - size) // 2
    return np.ascontiguousarray(arr[top:top + size, left:left + size])


def _window_start(duration: float | None, spec: ClipSpec, train: bool,
                  rng: np.random.Generator | None) -> float:
    if duration is None or duration <= spec.clip_seconds:
        return 0.0
    slack = duration - spec.clip_seconds
    if train:
        rng = rng if rng is not None else np.random.default_rng()
        return float(rng.uniform(0.0, slack))
    return slack / 2


def _stream_duration(container, stream) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000
    return None


def decode_clip_raw(data: bytes, spec: ClipSpec, *, train: bool = False,
                    rng: np.random.Generator | None = None
                    ) -> tuple[np.ndarray, np.ndarray, bool]:
    """Decode an mp4 (bytes) into uint8 frames ``[T, size, size, 3]`` and float32 audio ``[S]``.

    Returns ``(frames, audio, has_audio)``. Raises :class:`SampleError` with reason
    ``corrupt_video`` (cannot open / no video stream / no frame decodes), ``too_short`` (the
    video does not cover the clip) or ``bad_audio`` (an audio track that does not decode).
    The window start is drawn from ``rng`` when ``train`` (see the module docstring).

    Example:
        >>> decode_clip_raw(b"not an mp4", ClipSpec())
        Traceback (most recent call last):
        ...
        gradharmony.data.decode.SampleError: corrupt_video: cannot open container...
    """
    import av

    try:
        container = av.open(io.BytesIO(data), mode="r")
    except Exception as exc:  # noqa: BLE001 - any FFmpeg failure means a corrupt file
        raise SampleError("corrupt_video", f"cannot open container ({exc})") from None
    try:
        return _decode_open(container, spec, train, rng)
    finally:
        container.close()


class FramePicker:
    """Gives each target time the decoded frame with the nearest timestamp (ties: the earlier).

    Frames are :meth:`offer` ed in decoding order with their timestamps; times count from the
    first frame's. ``convert`` turns a picked frame into what is kept (the resized square).

    Example:
        >>> picker = FramePicker(np.array([0.0, 0.5, 1.0]))
        >>> for t in (0.0, 0.3, 0.6, 0.9):
        ...     picker.offer(t, f"frame@{t}")
        >>> picker.finish(period=0.5)
        ['frame@0.0', 'frame@0.6', 'frame@0.9']
    """

    def __init__(self, targets: np.ndarray, convert: Callable[[Any], Any] = lambda f: f):
        self.targets = targets
        self.convert = convert
        self.picked: list = []
        self.origin: float | None = None  # timestamp of the first frame
        self.last: tuple[float, Any] | None = None  # (time, frame) of the latest frame

    @property
    def complete(self) -> bool:
        """Every target time has its frame."""
        return len(self.picked) == len(self.targets)

    def offer(self, time: float | None, frame: Any) -> None:
        """The next decoded frame and its timestamp in seconds (``None`` counts as 0)."""
        t = float(time) if time is not None else 0.0
        if self.origin is None:
            self.origin = t
        t -= self.origin
        while not self.complete and t >= self.targets[len(self.picked)]:
            target = self.targets[len(self.picked)]
            nearer_last = self.last is not None and target - self.last[0] <= t - target
            self.picked.append(self.convert(self.last[1] if nearer_last else frame))
        self.last = (t, frame)

    def finish(self, period: float) -> list:
        """The picked frames; target times after the last frame get it while they lie within
        ``period`` of it. Raises :class:`SampleError` ``corrupt_video`` (no frame at all) or
        ``too_short`` (the frames end before the clip does)."""
        if self.last is None:
            raise SampleError("corrupt_video", "no frame decodes")
        while not self.complete:
            target = self.targets[len(self.picked)]
            if target - self.last[0] > period:
                raise SampleError("too_short", f"last frame at {self.last[0]:.3f} s, clip needs "
                                               f"{self.targets[-1]:.3f} s")
            self.picked.append(self.convert(self.last[1]))
        return self.picked


class AudioWindow:
    """Collects the decoded samples of an audio track and cuts the clip's window out of them.

    ``start``: the window's start in seconds after the first video frame; ``rate``: the samples'
    rate; ``samples``: the window's length. The audio track may start before or after the
    video: its first timestamp (``origin``, set by the first :meth:`add`) places it.

    Example:
        >>> window = AudioWindow(start=0.5, rate=4, samples=4)
        >>> window.add([np.arange(1, 5) / 10], time=0.25)  # the audio starts 0.25 s late
        >>> window.complete(video_origin=0.0)
        False
        >>> window.add([np.arange(5, 8) / 10])
        >>> window.complete(video_origin=0.0), window.cut(video_origin=0.0)
        (True, array([0.2, 0.3, 0.4, 0.5], dtype=float32))
    """

    def __init__(self, start: float, rate: int, samples: int) -> None:
        self.start_sample = int(round(start * rate))
        self.rate, self.samples = rate, samples
        self.chunks: list[np.ndarray] = []
        self.count = 0
        self.origin: float | None = None  # timestamp of the first audio sample

    def add(self, parts: list[np.ndarray], time: float | None = None) -> None:
        """Decoded samples in track order; ``time`` is their timestamp (None counts as 0)."""
        if self.origin is None:
            self.origin = float(time) if time is not None else 0.0
        for part in parts:
            part = part.reshape(-1).astype(np.float32, copy=False)
            self.chunks.append(part)
            self.count += part.size

    def first_sample(self, video_origin: float) -> int:
        """Index of the window's first sample among the collected ones."""
        lead = int(round(((self.origin or 0.0) - video_origin) * self.rate))  # audio - video
        return self.start_sample - lead

    def complete(self, video_origin: float | None) -> bool:
        """The collected samples cover the window (unknown while no video frame decoded)."""
        if video_origin is None or self.origin is None:
            return False
        return self.count >= self.first_sample(video_origin) + self.samples + 1

    def cut(self, video_origin: float) -> np.ndarray:
        """The window, zero-padded where the track does not reach, clipped to [-1, 1]."""
        if not self.chunks:
            raise SampleError("bad_audio", "the audio track decodes to no sample")
        wave = np.concatenate(self.chunks)
        first = self.first_sample(video_origin)
        audio = np.zeros(self.samples, np.float32)
        lo, hi = max(first, 0), min(first + self.samples, wave.size)
        if hi > lo:
            audio[lo - first:hi - first] = wave[lo:hi]
        return np.clip(audio, -1.0, 1.0)


class _MonoResampler:
    """Audio frames to mono float samples at ``rate``; frames already so skip the resampler."""

    def __init__(self, rate: int) -> None:
        import av

        self.rate = rate
        self.resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        self.used = False

    def samples(self, frame) -> list[np.ndarray]:
        direct = (frame.sample_rate == self.rate and frame.layout.nb_channels == 1
                  and frame.format.name in ("flt", "fltp"))
        self.used = self.used or not direct
        try:
            return [out.to_ndarray() for out in ([frame] if direct
                                                 else self.resampler.resample(frame))]
        except Exception as exc:  # noqa: BLE001
            raise SampleError("bad_audio", f"resampling ({exc})") from None

    def flush(self) -> list[np.ndarray]:
        """The samples the resampler still holds."""
        if not self.used:
            return []
        try:
            return [out.to_ndarray() for out in self.resampler.resample(None)]
        except Exception as exc:  # noqa: BLE001
            raise SampleError("bad_audio", f"flushing ({exc})") from None


def _decode_packet(packet, is_video: bool) -> list:
    try:
        return packet.decode()
    except Exception as exc:  # noqa: BLE001
        if is_video:
            raise SampleError("corrupt_video", f"video packet ({exc})") from None
        raise SampleError("bad_audio", f"audio packet ({exc})") from None


def _demux(container, vstream, astream, picker: FramePicker, window: AudioWindow | None,
           resampler: _MonoResampler | None) -> bool:
    """Feed the decoded frames to ``picker`` and ``window`` until both are complete; return
    whether the audio window is."""
    audio_done = astream is None
    streams = [vstream] + ([astream] if astream is not None else [])
    try:
        for packet in container.demux(*streams):
            is_video = packet.stream.index == vstream.index
            if not is_video and audio_done:
                continue
            for frame in _decode_packet(packet, is_video):
                if is_video:
                    picker.offer(frame.time, frame)
                else:
                    window.add(resampler.samples(frame), frame.time)
                    audio_done = window.complete(picker.origin)
            if picker.complete and audio_done:
                break
    except SampleError:
        raise
    except Exception as exc:  # noqa: BLE001 - demuxing errors: a damaged container
        if not picker.complete:
            raise SampleError("corrupt_video", f"demux ({exc})") from None
    return audio_done


def _decode_open(container, spec: ClipSpec, train: bool, rng):
    if not container.streams.video:
        raise SampleError("corrupt_video", "no video stream")
    vstream = container.streams.video[0]
    astream = container.streams.audio[0] if container.streams.audio else None
    duration = _stream_duration(container, vstream)
    period = 1.0 / spec.fps
    if duration is not None and duration < spec.clip_seconds - period:
        raise SampleError("too_short",
                          f"video lasts {duration:.3f} s, clip needs {spec.clip_seconds} s")
    start = _window_start(duration, spec, train, rng)
    picker = FramePicker(start + np.arange(spec.frames) / spec.fps,
                         lambda frame: _resize_square(frame, spec.size))
    window = resampler = None
    if astream is not None:
        window = AudioWindow(start, spec.audio_rate, spec.audio_samples)
        resampler = _MonoResampler(spec.audio_rate)
    audio_done = _demux(container, vstream, astream, picker, window, resampler)
    frames = np.stack(picker.finish(period))
    if astream is None:
        return frames, np.zeros(spec.audio_samples, np.float32), False
    if not audio_done:
        window.add(resampler.flush())
    return frames, window.cut(picker.origin), True


def augment_frames(frames: np.ndarray, spec: ClipSpec, *, train: bool,
                   rng: np.random.Generator | None = None, as_float: bool = True
                   ) -> np.ndarray:
    """Crop uint8 ``[T, size, size, 3]`` frames to float32 ``[T, crop, crop, 3]`` in [0, 1].

    Training: one random crop position and a horizontal flip with probability 1/2, shared by
    all frames of the clip. Evaluation: the centre crop. ``as_float=False`` returns the uint8
    crop (the loader converts whole batches at once, which is faster).

    Example:
        >>> spec = ClipSpec(frames=1, fps=1.0, size=4, crop=2, clip_seconds=1.0)
        >>> x = np.arange(16, dtype=np.uint8).reshape(1, 4, 4, 1).repeat(3, -1)
        >>> np.round(augment_frames(x, spec, train=False)[0, :, :, 0] * 255)
        array([[ 5.,  6.],
               [ 9., 10.]], dtype=float32)
    """
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"augment_frames: frames must be [T, H, W, 3], got {frames.shape}")
    h, w = frames.shape[1], frames.shape[2]
    c = spec.crop
    if h < c or w < c:
        raise ValueError(f"augment_frames: frames {h}x{w} are smaller than crop={c}")
    if train:
        rng = rng if rng is not None else np.random.default_rng()
        top = int(rng.integers(0, h - c + 1))
        left = int(rng.integers(0, w - c + 1))
        flip = bool(rng.random() < 0.5)
    else:
        top, left, flip = (h - c) // 2, (w - c) // 2, False
    out = frames[:, top:top + c, left:left + c]
    if flip:
        out = out[:, :, ::-1]
    if not as_float:
        return np.ascontiguousarray(out)
    return out.astype(np.float32) / np.float32(255.0)


def decode_clip(data: bytes, spec: ClipSpec, *, train: bool = False,
                rng: np.random.Generator | None = None
                ) -> tuple[np.ndarray, np.ndarray, bool]:
    """Decode and augment: float32 frames ``[T, crop, crop, 3]`` in [0, 1], audio ``[S]``.

    Returns ``(video, audio, has_audio)``; errors as :func:`decode_clip_raw`.

    Example:
        >>> decode_clip(b"", ClipSpec())
        Traceback (most recent call last):
        ...
        gradharmony.data.decode.SampleError: corrupt_video: cannot open container...
    """
    frames, audio, has_audio = decode_clip_raw(data, spec, train=train, rng=rng)
    return augment_frames(frames, spec, train=train, rng=rng), audio, has_audio
