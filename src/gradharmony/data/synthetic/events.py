"""The vocabulary of the synthetic benchmark: objects (shape x colour), motions, and events.

An *event* is one object doing one motion for the length of a clip. Its parameters (period,
phase, direction, ...) are drawn once, here, and shared by the renderer (:mod:`.render`) and
the sound synthesiser (:mod:`.sound`), which is what keeps picture and sound in sync: the
click of a bounce falls exactly on the frame where the object touches the floor.

Object -> sound: the shape sets the timbre, the colour the pitch. Motion -> rhythm: see
:data:`MOTIONS` and :mod:`.sound`.

Example:
    >>> import numpy as np
    >>> ev = sample_event(np.random.default_rng(0), duration=2.0, shape="ring", motion="bouncing")
    >>> ev.shape, ev.motion, ev.colour in COLOURS
    ('ring', 'bouncing', True)
    >>> Event.from_dict(ev.to_dict()) == ev
    True
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

__all__ = [
    "COLOURS",
    "COLOUR_PITCH",
    "COLOUR_RGB",
    "Event",
    "beat_times",
    "object_state",
    "MOTIONS",
    "SHAPES",
    "SHAPE_TIMBRE",
    "sample_event",
    "sample_motion_params",
]

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross", "ring", "bar")
COLOURS: tuple[str, ...] = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "white")
MOTIONS: tuple[str, ...] = (
    "bouncing",   # hops on a floor; a knock at each contact
    "sliding",    # crosses the frame; a steady tone with friction noise
    "spinning",   # rotates in place; tremolo locked to the rotation
    "growing",    # scales up; a rising pitch sweep
    "shrinking",  # scales down; a falling sweep
    "orbiting",   # moves on a circle; vibrato locked to the orbit
    "shaking",    # jitters left-right; a rattle at each direction change
    "blinking",   # switches on and off; the tone is gated with it
)

COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (240, 225, 40),
    "green": (40, 185, 60),
    "cyan": (40, 215, 215),
    "blue": (45, 85, 225),
    "purple": (155, 60, 205),
    "white": (245, 245, 245),
}
# colour -> fundamental (Hz): minor thirds from G3, so neighbours are easy to tell apart
COLOUR_PITCH: dict[str, float] = {
    c: float(196.0 * 2 ** (3 * i / 12)) for i, c in enumerate(COLOURS)
}
SHAPE_TIMBRE: dict[str, str] = {
    "circle": "sine",
    "square": "clarinet",
    "triangle": "saw",
    "diamond": "bell",
    "cross": "reed",
    "ring": "organ",
    "bar": "breath",
}


@dataclass(frozen=True)
class Event:
    """One object (``shape``, ``colour``) doing one ``motion`` for ``duration`` seconds.

    ``params`` holds the motion's drawn parameters (positions in frame units, 0..1 from the
    top-left corner; times in seconds) as a sorted tuple of (name, value) pairs, so events are
    hashable and compare by value. ``params_dict`` gives them as a dict.
    """

    shape: str
    colour: str
    motion: str
    duration: float
    params: tuple[tuple[str, float], ...] = field(default=())

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"event shape: expected one of {SHAPES}, got {self.shape!r}")
        if self.colour not in COLOURS:
            raise ValueError(f"event colour: expected one of {COLOURS}, got {self.colour!r}")
        if self.motion not in MOTIONS:
            raise ValueError(f"event motion: expected one of {MOTIONS}, got {self.motion!r}")

    @property
    def params_dict(self) -> dict[str, float]:
        return dict(self.params)

    def to_dict(self) -> dict:
        """JSON-ready form (``params`` as a dict)."""
        out = asdict(self)
        out["params"] = dict(self.params)
        return out

    @classmethod
    def from_dict(cls, d: dict) -> Event:
        params = tuple(sorted((str(k), float(v)) for k, v in d.get("params", {}).items()))
        return cls(d["shape"], d["colour"], d["motion"], float(d["duration"]), params)


def sample_motion_params(rng: np.random.Generator, motion: str, duration: float) -> dict:
    """Draw the parameters of ``motion`` for a clip of ``duration`` seconds.

    Every motion has a centre ``cx, cy`` and a base ``scale``; the rest depends on the motion
    (``period``/``phase`` of bounces, blinks and shakes, ``turns`` of spins and orbits, ...).

    Example:
        >>> p = sample_motion_params(np.random.default_rng(1), "bouncing", 2.0)
        >>> sorted(p)
        ['angle', 'cx', 'cy', 'drift', 'height', 'period', 'phase', 'scale']
    """
    if motion not in MOTIONS:
        raise ValueError(f"motion: expected one of {MOTIONS}, got {motion!r}")
    u = rng.uniform
    p = {
        "cx": u(0.35, 0.65),
        "cy": u(0.35, 0.65),
        "scale": u(0.85, 1.15),
        "angle": u(0.0, 2 * np.pi),
    }
    if motion == "bouncing":
        p.update(period=u(0.45, 0.75), height=u(0.25, 0.4), drift=u(-0.06, 0.06))
        p["phase"] = u(0.0, p["period"])
        p["cy"] = u(0.72, 0.8)  # the floor
    elif motion == "sliding":
        p.update(direction=float(rng.choice([-1.0, 1.0])), span=u(0.45, 0.6))
    elif motion in ("spinning", "orbiting"):
        p.update(turns=u(1.0, 2.2) * float(rng.choice([-1.0, 1.0])))
        if motion == "orbiting":
            p.update(radius=u(0.15, 0.22), phase=u(0.0, 2 * np.pi))
    elif motion in ("growing", "shrinking"):
        small, large = u(0.45, 0.6), u(1.35, 1.6)
        if motion == "shrinking":
            small, large = large, small
        p.update(start=small, end=large)
    elif motion == "shaking":
        p.update(period=u(0.35, 0.5), amplitude=u(0.04, 0.07))
        p["phase"] = u(0.0, p["period"])
    elif motion == "blinking":
        p.update(period=u(0.7, 1.1))
        p["phase"] = u(0.0, p["period"])
    return {k: float(v) for k, v in p.items()}


def sample_event(
    rng: np.random.Generator,
    duration: float,
    shape: str | None = None,
    colour: str | None = None,
    motion: str | None = None,
) -> Event:
    """Draw an event; fixed ``shape``/``colour``/``motion`` are kept, the others drawn uniformly.

    Example:
        >>> ev = sample_event(np.random.default_rng(0), 2.0, motion="spinning")
        >>> ev.motion, ev.duration
        ('spinning', 2.0)
    """
    shape = shape or SHAPES[int(rng.integers(len(SHAPES)))]
    colour = colour or COLOURS[int(rng.integers(len(COLOURS)))]
    motion = motion or MOTIONS[int(rng.integers(len(MOTIONS)))]
    params = sample_motion_params(rng, motion, duration)
    return Event(shape, colour, motion, float(duration), tuple(sorted(params.items())))


def object_state(event: Event, t: np.ndarray) -> dict[str, np.ndarray]:
    """Where the object is at times ``t`` (seconds): centre ``x, y`` (frame units), ``scale``,
    ``angle`` (radians) and ``visible`` (0/1), each an array shaped like ``t``.

    Example:
        >>> ev = sample_event(np.random.default_rng(0), 2.0, motion="bouncing")
        >>> t = np.array(beat_times(ev))
        >>> bool(np.allclose(object_state(ev, t)["y"], ev.params_dict["cy"]))  # on the floor
        True
    """
    p = event.params_dict
    t = np.asarray(t, dtype=np.float64)
    d = event.duration
    x = np.full_like(t, p["cx"])
    y = np.full_like(t, p["cy"])
    scale = np.full_like(t, p["scale"])
    angle = np.full_like(t, p["angle"])
    visible = np.ones_like(t)
    m = event.motion
    if m == "bouncing":
        x = x + p["drift"] * (t - d / 2)
        y = y - p["height"] * np.abs(np.sin(np.pi * (t + p["phase"]) / p["period"]))
    elif m == "sliding":
        x = x + p["direction"] * p["span"] * (t / d - 0.5)
    elif m == "spinning":
        angle = angle + 2 * np.pi * p["turns"] * t / d
    elif m in ("growing", "shrinking"):
        scale = scale * (p["start"] + (p["end"] - p["start"]) * t / d)
    elif m == "orbiting":
        a = p["phase"] + 2 * np.pi * p["turns"] * t / d
        x = x + p["radius"] * np.cos(a)
        y = y + p["radius"] * np.sin(a)
    elif m == "shaking":
        x = x + p["amplitude"] * np.where(((t + p["phase"]) / p["period"]) % 1.0 < 0.5, 1, -1)
    elif m == "blinking":
        visible = (((t + p["phase"]) / p["period"]) % 1.0 < 0.5).astype(np.float64)
    return {"x": x, "y": y, "scale": scale, "angle": angle, "visible": visible}


def beat_times(event: Event) -> list[float]:
    """The instants (seconds, within the clip) where the motion makes a discrete sound: floor
    contacts of a bounce, direction changes of a shake; empty for the other motions.

    Example:
        >>> ev = Event("circle", "red", "bouncing", 2.0,
        ...            (("angle", 0.0), ("cx", 0.5), ("cy", 0.8), ("drift", 0.0),
        ...             ("height", 0.3), ("period", 0.5), ("phase", 0.1), ("scale", 1.0)))
        >>> [round(b, 2) for b in beat_times(ev)]
        [0.4, 0.9, 1.4, 1.9]
    """
    p = event.params_dict
    if event.motion == "bouncing":
        step = p["period"]
    elif event.motion == "shaking":
        step = p["period"] / 2
    else:
        return []
    first = (-p["phase"]) % step
    return [float(b) for b in np.arange(first, event.duration, step)]
