"""Procedurally generated coloured shapes: the training and test data of the bundled default model.

Every image holds one shape (6 kinds) in one colour (8 kinds) with random size, position,
rotation, a background of two blended colours (kept far from the shape's colour) and Gaussian
pixel noise. Image ``i`` of a set depends only on ``(seed, i)``, so any slice of a set can be
regenerated exactly. Captions read ``"a photo of a {colour} {shape}"``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["COLOURS", "SHAPES", "LABELS", "label_names", "caption", "render", "render_index", "generate",
           "ShapeSet", "CAPTION_TEMPLATE"]

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35), "orange": (245, 140, 20), "yellow": (240, 220, 40), "green": (40, 165, 60),
    "blue": (35, 75, 220), "purple": (135, 50, 175), "white": (245, 245, 245), "black": (20, 20, 20),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "hexagon", "cross")
LABELS: tuple[tuple[str, str], ...] = tuple((c, s) for c in COLOURS for s in SHAPES)  # 48, colour-major
CAPTION_TEMPLATE = "a photo of a {}"
_SUPERSAMPLE = 4
_MIN_CONTRAST = 110.0  # minimum RGB distance between the shape colour and each background colour
RADIUS_RANGE = (0.25, 0.42)  # circumradius, as a fraction of the image side
CENTRE_JITTER = 0.12  # the centre moves up to this fraction of the image side from the middle
ROTATION_DEGREES = 20.0  # shapes turn by up to this many degrees either way from upright


def label_names() -> list[str]:
    """The 48 labels ``"{colour} {shape}"`` in class-id order."""
    return [f"{c} {s}" for c, s in LABELS]


def caption(label_id: int, template: str = CAPTION_TEMPLATE) -> str:
    """The caption of class ``label_id``, e.g. ``"a photo of a red circle"``."""
    return template.format(label_names()[label_id])


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    """Vertices of ``shape`` with circumradius ``r`` around ``(cx, cy)``, rotated by ``angle``."""
    if shape == "square":
        pts = [(r, a) for a in np.arange(4) * math.pi / 2 + math.pi / 4]
    elif shape == "triangle":
        pts = [(r, a) for a in np.arange(3) * 2 * math.pi / 3 - math.pi / 2]
    elif shape == "hexagon":
        pts = [(r, a) for a in np.arange(6) * math.pi / 3]
    elif shape == "star":
        pts = [(r if k % 2 == 0 else 0.42 * r, k * math.pi / 5 - math.pi / 2) for k in range(10)]
    elif shape == "cross":
        w = 0.34 * r
        xy = [(w, r), (w, w), (r, w), (r, -w), (w, -w), (w, -r), (-w, -r), (-w, -w), (-r, -w), (-r, w), (-w, w), (-w, r)]
        pts = [(math.hypot(x, y), math.atan2(y, x)) for x, y in xy]
    else:
        raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")
    return [(cx + d * math.cos(a + angle), cy + d * math.sin(a + angle)) for d, a in pts]


def _background_colour(rng: np.random.Generator, fg: np.ndarray) -> np.ndarray:
    """A random colour at least ``_MIN_CONTRAST`` away from ``fg`` (rejection sampling)."""
    while True:
        c = rng.uniform(0, 255, 3)
        c = 0.55 * c + 0.45 * c.mean()  # muted: pull towards grey
        if np.linalg.norm(c - fg) >= _MIN_CONTRAST:
            return c


def _background(rng: np.random.Generator, fg: np.ndarray, size: int) -> np.ndarray:
    """A linear blend of two contrasting colours along a random direction, ``(size, size, 3)`` float."""
    c0, c1 = _background_colour(rng, fg), _background_colour(rng, fg)
    theta = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1) - 0.5
    t = np.clip((xx * math.cos(theta) + yy * math.sin(theta)) + 0.5, 0, 1)[..., None]  # (H, W, 1)
    return c0 * (1 - t) + c1 * t


def render(colour: str, shape: str, rng: np.random.Generator, size: int = 64) -> Image.Image:
    """One RGB image of a ``colour`` ``shape`` with random geometry, background and noise."""
    fg = np.array(COLOURS[colour], dtype=np.float64) + rng.normal(0, 8, 3)  # slight colour jitter
    fg = np.clip(fg, 0, 255)
    r = rng.uniform(*RADIUS_RANGE) * size  # circumradius
    cx, cy = np.clip(size / 2 + rng.uniform(-CENTRE_JITTER, CENTRE_JITTER, 2) * size, r, size - r)
    angle = math.radians(rng.uniform(-ROTATION_DEGREES, ROTATION_DEGREES))
    noise_sigma = rng.uniform(0, 12)
    bg = _background(rng, fg, size)
    big = size * _SUPERSAMPLE
    mask = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(mask)
    s = _SUPERSAMPLE
    if shape == "circle":
        draw.ellipse([(cx - r) * s, (cy - r) * s, (cx + r) * s, (cy + r) * s], fill=255)
    else:
        draw.polygon([(x * s, y * s) for x, y in _polygon(shape, cx, cy, r, angle)], fill=255)
    alpha = np.asarray(mask.resize((size, size), Image.BOX), dtype=np.float64)[..., None] / 255.0
    img = bg * (1 - alpha) + fg * alpha + rng.normal(0, noise_sigma, (size, size, 3))
    return Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8), "RGB")


def render_index(seed: int, index: int, label_id: int, size: int = 64) -> Image.Image:
    """Image ``index`` of the set drawn with ``seed``, showing class ``label_id``."""
    colour, shape = LABELS[label_id]
    return render(colour, shape, np.random.default_rng([int(seed), int(index)]), size)


def _label_ids(seed: int, n: int) -> np.ndarray:
    """Balanced class ids: each consecutive run of 48 is a permutation of all classes."""
    rng = np.random.default_rng([int(seed), 2**31 - 1])
    rounds = -(-n // len(LABELS))
    return np.concatenate([rng.permutation(len(LABELS)) for _ in range(rounds)])[:n]


@dataclass
class ShapeSet:
    """A generated set: PIL images, their captions and class ids (index into :data:`LABELS`)."""

    images: list
    captions: list
    label_ids: np.ndarray

    def __len__(self) -> int:
        return len(self.images)


def generate(n: int, seed: int = 0, size: int = 64, label_ids: Optional[Sequence[int]] = None,
             template: str = CAPTION_TEMPLATE) -> ShapeSet:
    """``n`` images, colour × shape balanced (unless ``label_ids`` is given), deterministic in ``seed``."""
    ids = np.asarray(label_ids if label_ids is not None else _label_ids(seed, n), dtype=np.int64)
    if len(ids) != n:
        raise ValueError(f"got {len(ids)} label_ids for n={n}")
    images = [render_index(seed, i, int(k), size) for i, k in enumerate(ids)]
    return ShapeSet(images, [caption(int(k), template) for k in ids], ids)
