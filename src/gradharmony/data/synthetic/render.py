"""Frames of the synthetic benchmark: a textured background, static distractor shapes, and the
event's object moving over them (anti-aliased, with a darker half so that rotation shows).

A *scene* (background + distractors) belongs to a whole video, so consecutive clips of a video
share it; it is a JSON-ready dict drawn by :func:`sample_scene` and rendered deterministically
from the seed it holds.

Example:
    >>> import numpy as np
    >>> from gradharmony.data.synthetic.events import sample_event
    >>> rng = np.random.default_rng(0)
    >>> scene = sample_scene(rng)
    >>> ev = sample_event(rng, duration=2.0, motion="spinning")
    >>> frames = render_clip(ev, scene, frames=16, fps=8, size=64)
    >>> frames.shape, frames.dtype
    ((16, 64, 64, 3), dtype('uint8'))
"""

from __future__ import annotations

import numpy as np

from .events import COLOUR_RGB, COLOURS, SHAPES, Event, object_state

__all__ = ["BACKGROUNDS", "OBJECT_RADIUS", "render_background", "render_clip", "sample_scene",
           "shape_distance"]

BACKGROUNDS: tuple[str, ...] = ("stripes", "checker", "clouds", "gradient", "dots")
OBJECT_RADIUS = 0.13  # of the frame size, at scale 1
DISTRACTOR_SCALE = 0.55


def shape_distance(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Signed distance-like field of ``shape`` in object units (radius 1): < 0 inside.

    ``u`` points right and ``v`` down in the object's own (rotated) frame.

    Example:
        >>> import numpy as np
        >>> d = shape_distance("circle", np.array([0.0, 2.0]), np.array([0.0, 0.0]))
        >>> d.tolist()
        [-1.0, 1.0]
    """
    au, av = np.abs(u), np.abs(v)
    if shape == "circle":
        return np.hypot(u, v) - 1.0
    if shape == "square":
        return np.maximum(au, av) - 0.78
    if shape == "diamond":  # a rhombus, taller than wide
        return (au / 0.68 + av) * 0.6 - 0.6
    if shape == "triangle":  # apex up (v points down)
        normals = ((0.0, 1.0), (0.866, -0.5), (-0.866, -0.5))
        return np.max(np.stack([a * u + b * v for a, b in normals]), axis=0) - 0.5
    if shape == "cross":
        return np.minimum(np.maximum(au - 0.3, av - 1.0), np.maximum(av - 0.3, au - 1.0))
    if shape == "ring":
        return np.abs(np.hypot(u, v) - 0.72) - 0.28
    if shape == "bar":
        return np.maximum(au - 1.05, av - 0.32)
    raise ValueError(f"shape: expected one of {SHAPES}, got {shape!r}")


def _draw(canvas, shape, rgb, x, y, scale, angle, size, alpha=1.0):
    """Composite one object per frame onto ``canvas`` [T, H, W, 3] (in place).

    ``x, y, scale, angle, alpha`` are arrays [T] (or scalars)."""
    t = canvas.shape[0]
    x, y, scale, angle, alpha = (np.broadcast_to(np.asarray(a, np.float32), (t,))
                                 for a in (x, y, scale, angle, alpha))
    radius = OBJECT_RADIUS * size * scale  # pixels
    grid = (np.arange(size, dtype=np.float32) + 0.5)
    dx = grid[None, None, :] - (x * size)[:, None, None]
    dy = grid[None, :, None] - (y * size)[:, None, None]
    c, s = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    r = radius[:, None, None]
    u = (c * dx + s * dy) / r
    v = (-s * dx + c * dy) / r
    cover = np.clip(0.5 - shape_distance(shape, u, v) * r, 0.0, 1.0) * alpha[:, None, None]
    shade = np.where(u < -0.2, 0.62, 1.0).astype(np.float32)
    colour = np.asarray(rgb, np.float32) / 255.0
    cover = cover[..., None]
    canvas *= 1.0 - cover
    canvas += cover * shade[..., None] * colour


def sample_scene(rng: np.random.Generator, n_distractors: tuple[int, int] = (1, 3)) -> dict:
    """Draw a video's scene: background kind, seed and tint, and static distractor shapes.

    Example:
        >>> s = sample_scene(np.random.default_rng(0))
        >>> sorted(s), s["background"]["kind"] in BACKGROUNDS
        (['background', 'distractors'], True)
    """
    tint = rng.uniform(0.15, 0.5, size=3)
    background = {
        "kind": BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))],
        "seed": int(rng.integers(2**31)),
        "tint": [float(v) for v in tint],
    }
    distractors = []
    for _ in range(int(rng.integers(n_distractors[0], n_distractors[1] + 1))):
        distractors.append({
            "shape": SHAPES[int(rng.integers(len(SHAPES)))],
            "colour": COLOURS[int(rng.integers(len(COLOURS)))],
            "x": float(rng.uniform(0.1, 0.9)),
            "y": float(rng.uniform(0.1, 0.9)),
            "angle": float(rng.uniform(0, 2 * np.pi)),
            "scale": float(DISTRACTOR_SCALE * rng.uniform(0.8, 1.2)),
        })
    return {"background": background, "distractors": distractors}


def render_background(background: dict, size: int) -> np.ndarray:
    """The background texture [size, size, 3] float32 in [0, 1] (deterministic from its seed).

    Example:
        >>> bg = render_background({"kind": "checker", "seed": 1, "tint": [0.3, 0.3, 0.3]}, 32)
        >>> bg.shape, bool(bg.min() >= 0 and bg.max() <= 1)
        ((32, 32, 3), True)
    """
    kind = background["kind"]
    rng = np.random.default_rng(background["seed"])
    tint = np.asarray(background["tint"], np.float32)
    yy, xx = (np.mgrid[0:size, 0:size].astype(np.float32) + 0.5) / size
    if kind == "stripes":
        a = rng.uniform(0, np.pi)
        pattern = np.sin(2 * np.pi * rng.uniform(3, 6) * (np.cos(a) * xx + np.sin(a) * yy))
    elif kind == "checker":
        n = rng.uniform(4, 8)
        pattern = np.where((np.floor(xx * n) + np.floor(yy * n)) % 2 == 0, 1.0, -1.0)
    elif kind == "clouds":
        coarse = rng.normal(size=(6, 6)).astype(np.float32)
        idx = np.minimum((np.arange(size) * 5.0 / max(size - 1, 1)), 5.0)
        lo = np.floor(idx).astype(int)
        hi = np.minimum(lo + 1, 5)
        w = (idx - lo)[:, None]
        rows = coarse[lo] * (1 - w) + coarse[hi] * w          # [size, 6]
        pattern = rows[:, lo] * (1 - w.T) + rows[:, hi] * w.T  # [size, size]
        pattern = pattern / (np.abs(pattern).max() + 1e-6)
    elif kind == "gradient":
        a = rng.uniform(0, 2 * np.pi)
        pattern = 2 * ((np.cos(a) * xx + np.sin(a) * yy) % 1.0) - 1
    elif kind == "dots":
        n = rng.uniform(5, 8)
        fx, fy = (xx * n) % 1.0 - 0.5, (yy * n) % 1.0 - 0.5
        pattern = np.where(np.hypot(fx, fy) < 0.2, 1.0, -0.3)
    else:
        raise ValueError(f"background kind: expected one of {BACKGROUNDS}, got {kind!r}")
    contrast = rng.uniform(0.06, 0.12)
    second = rng.uniform(0.1, 0.45, size=3).astype(np.float32)
    mix = (pattern.astype(np.float32) * 0.5 + 0.5)[..., None]
    out = tint * (1 - mix) + second * mix
    out = out + contrast * pattern.astype(np.float32)[..., None]
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def render_clip(
    event: Event | None,
    scene: dict,
    frames: int,
    fps: float,
    size: int,
    *,
    contrast: float = 1.0,
    brightness: float = 1.0,
) -> np.ndarray:
    """Render ``frames`` frames (frame ``i`` at ``t = i / fps``) of ``event`` in ``scene``.

    Args:
        event: the moving object, or ``None`` for the scene alone.
        scene: from :func:`sample_scene`.
        frames, fps, size: clip length, rate and square frame size in pixels.
        contrast: opacity of the event's object (1 = opaque; lower makes it harder to see).
        brightness: multiplies the object's colour (small per-clip variation).

    Returns:
        ``uint8 [frames, size, size, 3]``.
    """
    if frames < 1 or size < 8 or fps <= 0:
        raise ValueError(f"render_clip: need frames >= 1, size >= 8, fps > 0; "
                         f"got frames={frames}, size={size}, fps={fps}")
    canvas = np.repeat(render_background(scene["background"], size)[None], frames, axis=0)
    for d in scene["distractors"]:
        rgb = COLOUR_RGB[d["colour"]]
        _draw(canvas[:1], d["shape"], rgb, d["x"], d["y"], d["scale"], d["angle"], size)
    canvas[1:] = canvas[:1]
    if event is not None:
        st = object_state(event, np.arange(frames) / fps)
        rgb = np.clip(np.asarray(COLOUR_RGB[event.colour], np.float32) * brightness, 0, 255)
        _draw(canvas, event.shape, rgb, st["x"], st["y"], st["scale"], st["angle"], size,
              alpha=st["visible"] * contrast)
    return np.round(np.clip(canvas, 0.0, 1.0) * 255.0).astype(np.uint8)
