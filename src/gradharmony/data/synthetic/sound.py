"""Sound of the synthetic benchmark, synthesised from the event so that it is synchronised with
the picture.

- Object -> timbre and pitch: the shape picks a set of partials (:data:`TIMBRES`), the colour the
  fundamental (:data:`~.events.COLOUR_PITCH`).
- Motion -> rhythm: a knock at each floor contact of a bounce, a rattle at each direction change
  of a shake (both at :func:`~.events.beat_times`), a tone gated with a blink, tremolo locked to a
  spin, vibrato locked to an orbit, a rising/falling sweep while growing/shrinking, a steady tone
  with friction noise while sliding.
- Background: pink noise at a random level. Unrelated audio (a misaligned clip) is another
  event's sound or a few bars of :func:`music`.

Example:
    >>> import numpy as np
    >>> from gradharmony.data.synthetic.events import sample_event
    >>> ev = sample_event(np.random.default_rng(0), 2.0, motion="bouncing")
    >>> wave = event_sound(ev, sample_rate=16000, n_samples=32000)
    >>> wave.shape, wave.dtype, bool(np.abs(wave).max() <= 1)
    ((32000,), dtype('float32'), True)
"""

from __future__ import annotations

import numpy as np

from .events import COLOUR_PITCH, SHAPE_TIMBRE, Event, beat_times, object_state

__all__ = ["TIMBRES", "background_noise", "clip_audio", "event_sound", "music", "tone"]

# timbre -> partials (frequency ratio, amplitude); "breath" is noise around the fundamental
TIMBRES: dict[str, tuple[tuple[float, float], ...]] = {
    "sine": ((1.0, 1.0),),
    "clarinet": ((1.0, 1.0), (3.0, 0.33), (5.0, 0.2), (7.0, 0.14), (9.0, 0.11)),
    "saw": tuple((float(k), 1.0 / k) for k in range(1, 9)),
    "bell": ((1.0, 1.0), (2.76, 0.6), (5.40, 0.35), (8.93, 0.2)),
    "reed": ((1.0, 0.5), (2.0, 1.0), (3.0, 0.8), (4.0, 0.3), (5.0, 0.5), (6.0, 0.2)),
    "organ": ((1.0, 1.0), (2.0, 0.5), (4.0, 0.35), (8.0, 0.2)),
    "breath": ((1.0, 0.3),),
}


def tone(timbre: str, freq: np.ndarray, sample_rate: int, rng: np.random.Generator | None = None
         ) -> np.ndarray:
    """A tone of ``timbre`` following the instantaneous frequency ``freq`` [S] (Hz), peak 1.

    Partials above 0.45 x the sampling rate are left out (no aliasing).

    Example:
        >>> import numpy as np
        >>> x = tone("sine", np.full(16000, 440.0), 16000)
        >>> spectrum = np.abs(np.fft.rfft(x))
        >>> int(np.argmax(spectrum))  # 1 s of signal: bin = Hz
        440
    """
    if timbre not in TIMBRES:
        raise ValueError(f"timbre: expected one of {tuple(TIMBRES)}, got {timbre!r}")
    freq = np.asarray(freq, np.float64)
    phase = 2 * np.pi * np.cumsum(freq) / sample_rate - 2 * np.pi * freq[0] / sample_rate
    top = float(freq.max())
    out = np.zeros_like(phase)
    for ratio, amp in TIMBRES[timbre]:
        if ratio * top < 0.45 * sample_rate:
            out += amp * np.sin(ratio * phase)
    if timbre == "breath":
        rng = rng if rng is not None else np.random.default_rng(0)
        noise = rng.standard_normal(phase.size)
        # ring-modulating smoothed noise with the carrier gives a band around the fundamental
        kernel = np.ones(8) / 8
        out += np.convolve(noise, kernel, mode="same") * np.sin(phase) * 2.0
    return out / (np.abs(out).max() + 1e-9)


def _decay_train(times, n, sample_rate, tau):
    """Sum of exponential decays starting at ``times`` (seconds)."""
    env = np.zeros(n)
    t = np.arange(n) / sample_rate
    for b in times:
        start = int(np.ceil(b * sample_rate))
        if start < n:
            env[start:] += np.exp(-(t[start:] - b) / tau)
    return env


def _smooth(x, sample_rate, seconds=0.008):
    k = max(1, int(seconds * sample_rate))
    return np.convolve(x, np.ones(k) / k, mode="same")


def event_sound(event: Event, sample_rate: int, n_samples: int,
                rng: np.random.Generator | None = None) -> np.ndarray:
    """The sound of ``event`` (no background noise), float32 [n_samples], peak 0.9 or less.

    ``rng`` only drives noise components (friction, rattle, breath); timing and pitch come from
    the event's parameters, so the rhythm matches the rendered frames.
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    n = int(n_samples)
    t = np.arange(n) / sample_rate
    d = event.duration
    p = event.params_dict
    f0 = COLOUR_PITCH[event.colour]
    timbre = SHAPE_TIMBRE[event.shape]
    freq = np.full(n, f0)
    env = np.full(n, 0.6)
    extra = np.zeros(n)
    m = event.motion
    if m == "bouncing":
        env = _decay_train(beat_times(event), n, sample_rate, tau=0.06)
        knock = rng.standard_normal(n) * _decay_train(beat_times(event), n, sample_rate, 0.004)
        extra = 0.5 * knock
    elif m == "shaking":
        env = 0.4 * _decay_train(beat_times(event), n, sample_rate, tau=0.025)
        extra = 0.8 * rng.standard_normal(n) * env
    elif m == "sliding":
        friction = np.convolve(rng.standard_normal(n), np.ones(24) / 24, mode="same")
        extra = 0.8 * friction / (np.abs(friction).max() + 1e-9) * 0.25
    elif m == "spinning":
        env = 0.35 + 0.3 * np.cos(2 * 2 * np.pi * p["turns"] * t / d)
    elif m in ("growing", "shrinking"):
        rise = t / d if m == "growing" else 1 - t / d
        freq = f0 * 2.0 ** (rise - 0.5)
    elif m == "orbiting":
        freq = f0 * (1 + 0.06 * np.sin(p["phase"] + 2 * np.pi * p["turns"] * t / d))
    elif m == "blinking":
        env = 0.6 * _smooth(object_state(event, t)["visible"], sample_rate)
    wave = tone(timbre, freq, sample_rate, rng) * env + extra
    fade = np.minimum(1.0, np.minimum(t, t[-1] - t) / 0.01)  # 10 ms fades: no clicks at the ends
    wave = wave * fade
    peak = np.abs(wave).max()
    if peak > 0.9:
        wave = wave * (0.9 / peak)
    return wave.astype(np.float32)


def background_noise(rng: np.random.Generator, n_samples: int, level: float) -> np.ndarray:
    """Pink (1/f power) noise with RMS ``level``, float32.

    Example:
        >>> import numpy as np
        >>> x = background_noise(np.random.default_rng(0), 16000, 0.1)
        >>> round(float(np.sqrt(np.mean(x ** 2))), 3)
        0.1
    """
    spec = np.fft.rfft(rng.standard_normal(n_samples))
    f = np.arange(spec.size, dtype=np.float64)
    f[0] = 1.0
    x = np.fft.irfft(spec / np.sqrt(f), n=n_samples)
    return (x * (level / (np.sqrt(np.mean(x**2)) + 1e-12))).astype(np.float32)


def music(rng: np.random.Generator, sample_rate: int, n_samples: int) -> np.ndarray:
    """A few bars of music: plucked pentatonic notes on a half-beat grid, a kick on each beat,
    hi-hats off the beat; tempo and key drawn from ``rng``. float32, peak 0.8.

    Example:
        >>> import numpy as np
        >>> x = music(np.random.default_rng(0), 16000, 32000)
        >>> x.shape, bool(0.7 < np.abs(x).max() <= 0.8)
        ((32000,), True)
    """
    n = int(n_samples)
    t = np.arange(n) / sample_rate
    beat = 60.0 / rng.uniform(90, 150)
    root = rng.uniform(165, 330)
    scale = (0, 2, 4, 7, 9, 12, 14)
    out = np.zeros(n)
    offset = rng.uniform(0, beat)
    starts = np.arange(offset - beat, t[-1], beat / 2)
    for k, s in enumerate(starts):
        i0 = max(0, int(np.ceil(s * sample_rate)))
        if i0 >= n:
            break
        i1 = min(n, i0 + int(1.2 * sample_rate))  # every sound has decayed below 1e-2 by then
        tt = t[i0:i1] - s
        if k % 2 == 0:  # kick: a decaying downward sweep
            f = 50 + 90 * np.exp(-tt / 0.03)
            kick = np.sin(2 * np.pi * np.cumsum(f) / sample_rate) * np.exp(-tt / 0.12)
            out[i0:i1] += 0.9 * kick
        else:  # hi-hat
            out[i0:i1] += 0.15 * rng.standard_normal(tt.size) * np.exp(-tt / 0.015)
        if rng.uniform() < 0.8:
            note = root * 2 ** (scale[int(rng.integers(len(scale)))] / 12)
            pluck = sum(a * np.sin(2 * np.pi * r * note * tt) for r, a in ((1, 1), (2, 0.5),
                                                                           (3, 0.25)))
            out[i0:i1] += 0.5 * pluck * np.exp(-tt / 0.25)
    fade = np.minimum(1.0, np.minimum(t, t[-1] - t) / 0.01)
    out = out * fade
    return (out * (0.8 / (np.abs(out).max() + 1e-9))).astype(np.float32)


def clip_audio(source: np.ndarray, rng: np.random.Generator, noise_level: float) -> np.ndarray:
    """Mix ``source`` with pink background noise of RMS ``noise_level``; the result is scaled
    down if needed so that its peak stays at or below 0.95. float32.

    Example:
        >>> import numpy as np
        >>> x = clip_audio(np.zeros(800, np.float32), np.random.default_rng(0), 0.05)
        >>> round(float(np.sqrt(np.mean(x ** 2))), 3)
        0.05
    """
    out = source.astype(np.float32) + background_noise(rng, source.size, noise_level)
    peak = float(np.abs(out).max())
    return out * (0.95 / peak) if peak > 0.95 else out
