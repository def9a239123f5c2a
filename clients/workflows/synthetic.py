"""Photo-like labelled folders: the "pile of images" a user points ``byol train --data`` at, with labels kept aside
for scoring (issue 18).

Three kinds, ten classes each, any side (64, 128 and 224 px measured):

- ``objects``: one item of a class (ring, crescent, star, cross, triangle, arrow, heart, bolt, tee, double bar) at a
  random position, scale, rotation, aspect and tint, shaded, on a random background (colour gradient + smooth
  colour field + fine grain) with clutter (blobs, strokes) around and over it;
- ``textures``: a procedural texture family (stripes, checks, dots, blobs, speckle, waves, rings, grid, bricks,
  zigzag) with a random frequency, orientation, phase, sharpness and pair of colours, lit unevenly, with occluders;
- ``scenes``: a layout and colour family (sea, beach, forest, sunset, night city, snow, desert, meadow, mountains,
  room) with its horizon, palette and clutter jittered per image.

Why it is hard enough: the class is in a shape or a pattern, not in the pixels' colours or places, so raw pixels
are far from perfect (weighted kNN@20 on a 5,000 / 1,000 split of 6,000 64-px images, chance 0.10: objects 0.2-0.35,
textures ~0.2, scenes ~0.6: ``bench/folder_quality.py`` measures it every run) while a CNN can learn it.

The folder looks like a user's: nested sub-folders that say nothing of the class, one file in three a JPEG (quality
75-95), a few broken files (not an image, a cut JPEG, an empty file). The labels go to ``DIR/labels.csv``
(``path,label``, paths relative to the folder, the layout ``byol probe fit --labels`` reads), never into folder names
the trainer could read. Deterministic: image i is a function of (seed, kind, size, i) alone, so a folder of 1,000 is
the first 1,000 images of a folder of 6,000. Torch-free (numpy + Pillow).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

KINDS = ("objects", "textures", "scenes")
OBJECTS = ("ring", "crescent", "star", "cross", "triangle", "arrow", "heart", "bolt", "tee", "double-bar")
TEXTURES = ("stripes", "checks", "dots", "blobs", "speckle", "waves", "rings", "grid", "bricks", "zigzag")
SCENES = ("sea", "beach", "forest", "sunset", "night-city", "snow", "desert", "meadow", "mountains", "room")
CLASSES = {"objects": OBJECTS, "textures": TEXTURES, "scenes": SCENES}
SUPERSAMPLE = 2  # drawn at twice the side, then reduced: anti-aliased edges, as a camera's are
JPEG_EVERY = 3  # one file in three a JPEG
BROKEN = ("broken/not-an-image.png", "g1/truncated.jpg", "g4/s2/empty.png")
LABELS_CSV = "labels.csv"
SCORING_QUERIES, SCORING_SEED = 1000, 0  # the seeded split every score of a labelled folder uses
POSITION_SPREAD = 0.5
SCENE_CAST = 0.35

Rgb = np.ndarray  # float32 [3] in [0, 1]


@dataclass
class SyntheticFolder:
    """What :func:`make_folder` wrote: the readable files (paths relative to ``root``) with their labels."""

    root: Path
    kind: str
    size: int
    seed: int
    classes: tuple[str, ...]
    paths: list[str]
    labels: list[int]
    broken: tuple[str, ...]

    @property
    def labels_csv(self) -> Path:
        return self.root / LABELS_CSV


def image_rng(seed: int, kind: str, size: int, index: int) -> np.random.Generator:
    """Image ``index``'s own generator: its pixels do not depend on how many images the folder has."""
    return np.random.default_rng([seed, KINDS.index(kind), size, index])


# ---------------------------------------------------------------------------------------------------- shared parts


def _colour(rng: np.random.Generator) -> Rgb:
    return rng.random(3).astype(np.float32)


def _far_colour(rng: np.random.Generator, other: Rgb, distance: float = 0.45) -> Rgb:
    """A random colour at least ``distance`` (RGB, 0-1 units) from ``other``: the item stays visible."""
    for _ in range(20):
        c = _colour(rng)
        if np.linalg.norm(c - other) >= distance:
            return c
    return np.where(other > 0.5, 0.1, 0.9).astype(np.float32)


def _grid(side: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in image units [0, 1): ``(x, y)`` each ``[side, side]``."""
    t = (np.arange(side, dtype=np.float32) + 0.5) / side
    return np.meshgrid(t, t)


def _smooth_field(rng: np.random.Generator, side: int, cells: int, channels: int = 3) -> np.ndarray:
    """Low-frequency noise in [0, 1] ``[side, side, channels]``: a ``cells``² random grid, bicubic-upsampled."""
    small = (rng.random((cells, cells, channels)) * 255).astype(np.uint8)
    img = Image.fromarray(small if channels == 3 else small[..., 0])
    out = np.asarray(img.resize((side, side), Image.Resampling.BICUBIC), dtype=np.float32) / 255.0
    return out if channels == 3 else out[..., None]


def _gradient(rng: np.random.Generator, side: int) -> np.ndarray:
    """A linear ramp in [0, 1] along a random direction ``[side, side, 1]``."""
    x, y = _grid(side)
    a = rng.uniform(0, 2 * math.pi)
    g = math.cos(a) * (x - 0.5) + math.sin(a) * (y - 0.5)
    return (g / max(float(np.ptp(g)), 1e-6) + 0.5)[..., None]


def _background(rng: np.random.Generator, side: int) -> np.ndarray:
    """Two colours along a gradient, a smooth colour field over them, float ``[side, side, 3]`` in [0, 1]."""
    c0 = _colour(rng)
    c1 = np.clip(c0 + rng.uniform(-0.3, 0.3, 3), 0, 1)
    g = _gradient(rng, side)
    base = c0 * (1 - g) + c1 * g
    field = _smooth_field(rng, side, int(rng.integers(2, 7)))
    return np.clip(base + rng.uniform(0.05, 0.25) * (field - 0.5), 0, 1)


def _clutter(img: Image.Image, rng: np.random.Generator, n: int, scale: float = 0.18) -> Image.Image:
    """``n`` translucent blobs and strokes of random colours (things that are in every class's pictures)."""
    side = img.size[0]
    layer = Image.new("RGBA", img.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    for _ in range(n):
        fill = (*(int(v) for v in rng.integers(0, 256, 3)), int(rng.integers(90, 230)))
        x, y = rng.uniform(0, side, 2)
        r = rng.uniform(0.03, scale) * side
        if rng.random() < 0.5:
            draw.ellipse((x - r, y - r * rng.uniform(0.4, 1.0), x + r, y + r), fill=fill)
        else:
            x1, y1 = x + rng.uniform(-2, 2) * r, y + rng.uniform(-2, 2) * r
            draw.line((x, y, x1, y1), fill=fill, width=max(1, int(r * rng.uniform(0.1, 0.4))))
    return Image.alpha_composite(img.convert("RGBA"), layer).convert("RGB")


def _to_image(x: np.ndarray) -> Image.Image:
    return Image.fromarray((np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8))


def _finish(img: Image.Image, rng: np.random.Generator, size: int) -> np.ndarray:
    """Camera-ish finish: uneven light, reduced to ``size`` (anti-aliasing), a little blur and sensor grain."""
    x = np.asarray(img, dtype=np.float32) / 255.0
    x = x * (rng.uniform(0.65, 1.0) + rng.uniform(0.0, 0.5) * _gradient(rng, x.shape[0]))
    small = _to_image(x).resize((size, size), Image.Resampling.LANCZOS)
    if rng.random() < 0.3:
        small = small.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.9) * size / 64))
    x = np.asarray(small, dtype=np.float32) / 255.0 + rng.normal(0, rng.uniform(0.0, 0.04), (size, size, 3))
    return (np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8)


# ---------------------------------------------------------------------------------------------------- objects


def _star(points: int = 5, inner: float = 0.42) -> list[tuple[float, float]]:
    return [((1 if k % 2 == 0 else inner) * math.sin(math.pi * k / points),
             -(1 if k % 2 == 0 else inner) * math.cos(math.pi * k / points)) for k in range(2 * points)]


def _heart() -> list[tuple[float, float]]:
    t = np.linspace(0, 2 * math.pi, 48, endpoint=False)
    x, y = 16 * np.sin(t) ** 3, 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
    return list(zip((x / 17).tolist(), (-(y + 2) / 17).tolist(), strict=True))


# Each item is a list of (polygon in unit coordinates, 255 = paint / 0 = cut out); ellipses are 48-gons.
def _circle(r: float, cx: float = 0.0, cy: float = 0.0) -> list[tuple[float, float]]:
    t = np.linspace(0, 2 * math.pi, 48, endpoint=False)
    return list(zip((cx + r * np.cos(t)).tolist(), (cy + r * np.sin(t)).tolist(), strict=True))


SHAPES: dict[str, list[tuple[list[tuple[float, float]], int]]] = {
    "ring": [(_circle(1.0), 255), (_circle(0.55), 0)],
    "crescent": [(_circle(1.0), 255), (_circle(0.85, 0.45, -0.2), 0)],
    "star": [(_star(), 255)],
    "cross": [([(-.3, -1), (.3, -1), (.3, -.3), (1, -.3), (1, .3), (.3, .3), (.3, 1), (-.3, 1), (-.3, .3), (-1, .3),
                (-1, -.3), (-.3, -.3)], 255)],
    "triangle": [([(0, -1), (.95, .75), (-.95, .75)], 255)],
    "arrow": [([(-1, -.25), (.2, -.25), (.2, -.7), (1, 0), (.2, .7), (.2, .25), (-1, .25)], 255)],
    "heart": [(_heart(), 255)],
    "bolt": [([(.15, -1), (-.6, .1), (-.05, .1), (-.3, 1), (.6, -.2), (.05, -.2), (.4, -1)], 255)],
    "tee": [([(-1, -1), (1, -1), (1, -.55), (.22, -.55), (.22, 1), (-.22, 1), (-.22, -.55), (-1, -.55)], 255)],
    "double-bar": [([(-1, -.75), (1, -.75), (1, -.3), (-1, -.3)], 255), ([(-1, .3), (1, .3), (1, .75), (-1, .75)],
                                                                         255)],
}


def _item_mask(name: str, side: int, rng: np.random.Generator) -> np.ndarray:
    """The item's coverage in [0, 1] ``[side, side]``: random centre, radius 20-40 % of the side, rotation, aspect."""
    r = rng.uniform(0.25, 0.45) * side
    cx, cy = side / 2 + rng.uniform(-1, 1, 2) * (side / 2 - r * 0.8) * POSITION_SPREAD
    angle, aspect = rng.uniform(-0.7, 0.7), rng.uniform(0.8, 1.25)
    ca, sa = math.cos(angle), math.sin(angle)
    mask = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(mask)
    for poly, fill in SHAPES[name]:
        pts = [(cx + r * (ca * px * aspect - sa * py), cy + r * (sa * px * aspect + ca * py)) for px, py in poly]
        draw.polygon(pts, fill=fill)
    return np.asarray(mask, dtype=np.float32)[..., None] / 255.0


def render_object(label: int, side: int, rng: np.random.Generator) -> Image.Image:
    bg = _background(rng, side)
    img = _clutter(_to_image(bg), rng, int(rng.integers(0, 4)))
    under = np.asarray(img, dtype=np.float32) / 255.0
    mask = _item_mask(OBJECTS[label], side, rng)
    tint = _far_colour(rng, (under * mask).sum((0, 1)) / max(float(mask.sum()), 1.0))
    shade = 1 + rng.uniform(0.1, 0.5) * (_gradient(rng, side) - 0.5) + 0.15 * (_smooth_field(rng, side, 8, 1) - .5)
    item = np.clip(tint * shade, 0, 1)
    img = _to_image(under * (1 - mask) + item * mask)
    return _clutter(img, rng, int(rng.integers(0, 2)), scale=0.1)  # a few things in front of it too


# ---------------------------------------------------------------------------------------------------- textures


def _tri(t: np.ndarray) -> np.ndarray:
    """Triangle wave of period 1 in [0, 1]."""
    return 2 * np.abs(t - np.floor(t + 0.5))


def _pattern(name: str, u: np.ndarray, v: np.ndarray, x: np.ndarray, y: np.ndarray, f: float,
             rng: np.random.Generator) -> np.ndarray:
    """Texture family ``name`` in [0, 1] on rotated coordinates ``u, v`` (image units) at ``f`` cycles per side."""
    s = lambda t: 0.5 + 0.5 * np.sin(2 * math.pi * t)  # noqa: E731
    if name == "stripes":
        return s(f * u)
    if name == "checks":
        return 0.5 + 0.5 * np.sign(np.sin(2 * math.pi * f * u / 2) * np.sin(2 * math.pi * f * v / 2))
    if name == "dots":
        d = np.hypot(f * u % 1 - 0.5, f * v % 1 - 0.5)
        return (d < rng.uniform(0.18, 0.35)).astype(np.float32)
    if name == "blobs":
        return _smooth_field(rng, u.shape[0], max(2, int(f)), 1)[..., 0]
    if name == "speckle":
        side = u.shape[0]
        cells = max(4, min(side // 2, int(f * 3)))
        return _smooth_field(rng, side, cells, 1)[..., 0]
    if name == "waves":
        return s(f * u + rng.uniform(0.3, 0.8) * np.sin(2 * math.pi * rng.uniform(1, 3) * v))
    if name == "rings":
        cx, cy = rng.uniform(-0.3, 1.3, 2)
        return s(f * np.hypot(x - cx, y - cy))
    if name == "grid":
        w = rng.uniform(0.08, 0.2)
        return ((f * u % 1 < w) | (f * v % 1 < w)).astype(np.float32)
    if name == "bricks":
        row = np.floor(f * v)
        w = rng.uniform(0.08, 0.15)
        return ((f * v % 1 < w) | (((f / 2) * u + 0.5 * (row % 2)) % 1 < w / 2)).astype(np.float32)
    if name == "zigzag":
        return s(f * u + rng.uniform(0.4, 1.0) * _tri(f * v / 2))
    raise ValueError(f"unknown texture {name!r}")


def render_texture(label: int, side: int, rng: np.random.Generator) -> Image.Image:
    x, y = _grid(side)
    a = rng.uniform(0, math.pi)
    u, v = math.cos(a) * x + math.sin(a) * y, -math.sin(a) * x + math.cos(a) * y
    u, v = u + rng.random(), v + rng.random()  # random phase
    t = _pattern(TEXTURES[label], u, v, x, y, float(rng.uniform(3, 9)), rng)
    sharp = rng.uniform(1, 8)  # soft sinusoid … nearly binary
    t = 1 / (1 + np.exp(-sharp * (t - 0.5) * 2))
    c0 = _colour(rng)
    c1 = _far_colour(rng, c0, 0.35)
    img = c0 * (1 - t[..., None]) + c1 * t[..., None]
    img = img + rng.uniform(0.0, 0.3) * (_smooth_field(rng, side, int(rng.integers(2, 5))) - 0.5)
    return _clutter(_to_image(img), rng, int(rng.integers(0, 4)), scale=0.15)


# ---------------------------------------------------------------------------------------------------- scenes


def _jitter(rng: np.random.Generator, rgb: tuple[float, float, float], amount: float = 0.2) -> Rgb:
    return np.clip(np.asarray(rgb, np.float32) + rng.uniform(-amount, amount, 3), 0, 1).astype(np.float32)


def _vertical(top: Rgb, bottom: Rgb, y: np.ndarray, y0: float = 0.0, y1: float = 1.0) -> np.ndarray:
    t = np.clip((y - y0) / max(y1 - y0, 1e-6), 0, 1)[..., None]
    return top * (1 - t) + bottom * t


def _below(img: np.ndarray, boundary: np.ndarray, y: np.ndarray, fill: np.ndarray) -> np.ndarray:
    """``fill`` where the pixel is below the per-column ``boundary`` (image units)."""
    m = (y >= boundary[None, :])[..., None]
    return np.where(m, fill, img)


def _polys(side: int, rng: np.random.Generator, img: np.ndarray, n: int, make: Callable, colour: Callable
           ) -> np.ndarray:
    pic = _to_image(img)
    draw = ImageDraw.Draw(pic)
    for _ in range(n):
        draw.polygon([(px * side, py * side) for px, py in make()], fill=tuple(int(c * 255) for c in colour()))
    return np.asarray(pic, dtype=np.float32) / 255.0


def render_scene(label: int, side: int, rng: np.random.Generator) -> Image.Image:
    x, y = _grid(side)
    cols = x[0]
    h = rng.uniform(0.3, 0.7)  # the horizon
    name = SCENES[label]
    sky = _vertical(_jitter(rng, (0.35, 0.55, 0.9)), _jitter(rng, (0.75, 0.85, 0.95)), y, 0, h)
    if name == "sea":
        waves = h + 0.01 * np.sin(2 * math.pi * rng.uniform(2, 6) * cols)
        water = _vertical(_jitter(rng, (0.1, 0.35, 0.6)), _jitter(rng, (0.02, 0.15, 0.35)), y, h, 1)
        water = water * (0.9 + 0.1 * np.sin(2 * math.pi * rng.uniform(15, 30) * y))[..., None]
        img = _below(sky, waves, y, water)
    elif name == "beach":
        shore = h + rng.uniform(0.1, 0.25) + 0.03 * np.sin(2 * math.pi * rng.uniform(1, 3) * cols + rng.random())
        img = _below(_below(sky, np.full_like(cols, h), y, _jitter(rng, (0.15, 0.45, 0.7))), shore, y,
                     _jitter(rng, (0.9, 0.8, 0.55)))
    elif name == "forest":
        img = _below(_vertical(_jitter(rng, (0.5, 0.7, 0.5)), _jitter(rng, (0.2, 0.4, 0.2)), y), np.full_like(
            cols, h + 0.2), y, _jitter(rng, (0.25, 0.2, 0.1)))
        img = _polys(side, rng, img, int(rng.integers(6, 14)), lambda: _trunk(rng),
                     lambda: _jitter(rng, (0.3, 0.2, 0.1), 0.08))
        img = _polys(side, rng, img, int(rng.integers(6, 12)), lambda: _blob(rng, 0.0, 0.5, 0.12),
                     lambda: _jitter(rng, (0.15, 0.45, 0.15), 0.12))
    elif name == "sunset":
        sky = _vertical(_jitter(rng, (0.35, 0.15, 0.45)), _jitter(rng, (1.0, 0.55, 0.2)), y, 0, h + 0.1)
        sx, sy, r = rng.uniform(0.2, 0.8), h - rng.uniform(0.0, 0.1), rng.uniform(0.05, 0.12)
        sky = np.where((np.hypot(x - sx, y - sy) < r)[..., None], _jitter(rng, (1.0, 0.9, 0.5), 0.05), sky)
        hills = h + 0.08 * np.sin(2 * math.pi * rng.uniform(0.5, 2) * cols + rng.random() * 6)
        img = _below(sky, hills, y, _jitter(rng, (0.12, 0.05, 0.12), 0.06))
    elif name == "night-city":
        img = _vertical(_jitter(rng, (0.02, 0.02, 0.12), 0.05), _jitter(rng, (0.1, 0.1, 0.25), 0.08), y)
        img = _polys(side, rng, img, int(rng.integers(5, 10)), lambda: _building(rng, h),
                     lambda: _jitter(rng, (0.08, 0.08, 0.1), 0.05))
        img = _polys(side, rng, img, int(rng.integers(30, 80)), lambda: _window(rng, h),
                     lambda: _jitter(rng, (1.0, 0.85, 0.4), 0.15))
    elif name == "snow":
        img = _below(_vertical(_jitter(rng, (0.7, 0.75, 0.85)), _jitter(rng, (0.9, 0.9, 0.95)), y, 0, h),
                     np.full_like(cols, h), y, _jitter(rng, (0.92, 0.93, 0.97), 0.06))
        img = _polys(side, rng, img, int(rng.integers(2, 8)), lambda: _tree(rng, h),
                     lambda: _jitter(rng, (0.1, 0.2, 0.12), 0.08))
    elif name == "desert":
        dunes = h + 0.06 * np.sin(2 * math.pi * rng.uniform(0.5, 2) * cols + rng.random() * 6)
        sand = _vertical(_jitter(rng, (0.9, 0.7, 0.4)), _jitter(rng, (0.75, 0.5, 0.25)), y, h, 1)
        sand = sand * (0.92 + 0.08 * np.sin(2 * math.pi * (rng.uniform(4, 10) * y + 2 * x)))[..., None]
        img = _below(_vertical(_jitter(rng, (0.55, 0.7, 0.9)), _jitter(rng, (0.9, 0.85, 0.75)), y, 0, h), dunes,
                     y, sand)
    elif name == "meadow":
        img = _below(sky, np.full_like(cols, h), y, _vertical(_jitter(rng, (0.4, 0.7, 0.25)),
                                                             _jitter(rng, (0.2, 0.5, 0.1)), y, h, 1))
        img = _polys(side, rng, img, int(rng.integers(25, 70)), lambda: _blob(rng, h, 1.0, 0.015),
                     lambda: _colour(rng))
    elif name == "mountains":
        img = sky
        for k, shade in enumerate((0.55, 0.4, 0.25)):
            ridge = _ridge(rng, cols, h - 0.2 + 0.15 * k)
            img = _below(img, ridge, y, _jitter(rng, (shade * 0.8, shade * 0.85, shade), 0.06))
    elif name == "room":
        wall = _jitter(rng, (0.8, 0.7, 0.55), 0.2)
        img = _below(np.broadcast_to(wall, (side, side, 3)).copy(), np.full_like(cols, h + 0.15), y,
                     _jitter(rng, (0.45, 0.3, 0.2), 0.15))
        img = _polys(side, rng, img, int(rng.integers(1, 4)), lambda: _frame(rng, h + 0.15), lambda: _colour(rng))
    else:
        raise ValueError(f"unknown scene {name!r}")
    img = img * rng.uniform(1 - SCENE_CAST, 1 + SCENE_CAST, 3)  # white balance and exposure differ photo to photo
    return _clutter(_reframe(_to_image(img), rng), rng, int(rng.integers(0, 4)), scale=0.12)


def _reframe(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A random window of 55-100 % of the side, back to the side: photos of a place are framed differently."""
    side = img.size[0]
    w = rng.uniform(0.55, 1.0) * side
    x0, y0 = rng.uniform(0, side - w, 2)
    return img.resize((side, side), Image.Resampling.BILINEAR, box=(x0, y0, x0 + w, y0 + w))


def _trunk(rng) -> list[tuple[float, float]]:
    x, w = rng.uniform(0, 1), rng.uniform(0.02, 0.06)
    return [(x, 0), (x + w, 0), (x + w * 1.3, 1), (x - w * 0.3, 1)]


def _blob(rng, y0: float, y1: float, r: float) -> list[tuple[float, float]]:
    cx, cy, rr = rng.uniform(0, 1), rng.uniform(y0, y1), r * rng.uniform(0.6, 1.6)
    return [(cx + rr * math.cos(t), cy + rr * math.sin(t) * 0.8) for t in np.linspace(0, 2 * math.pi, 12)]


def _building(rng, h: float) -> list[tuple[float, float]]:
    x, w, top = rng.uniform(-0.1, 1), rng.uniform(0.08, 0.25), rng.uniform(0.1, h + 0.2)
    return [(x, top), (x + w, top), (x + w, 1), (x, 1)]


def _window(rng, h: float) -> list[tuple[float, float]]:
    x, y, s = rng.uniform(0, 1), rng.uniform(0.15, 0.95), rng.uniform(0.01, 0.025)
    return [(x, y), (x + s, y), (x + s, y + s * 1.4), (x, y + s * 1.4)]


def _tree(rng, h: float) -> list[tuple[float, float]]:
    x, base, s = rng.uniform(0, 1), h + rng.uniform(0.0, 0.4), rng.uniform(0.05, 0.15)
    return [(x, base - 2.2 * s), (x + s * 0.7, base), (x - s * 0.7, base)]


def _frame(rng, floor: float) -> list[tuple[float, float]]:
    x, y, w, hh = rng.uniform(0.05, 0.7), rng.uniform(0.05, floor - 0.3), rng.uniform(0.12, 0.3), rng.uniform(
        0.1, 0.25)
    return [(x, y), (x + w, y), (x + w, y + hh), (x, y + hh)]


def _ridge(rng, cols: np.ndarray, level: float) -> np.ndarray:
    peaks = rng.uniform(-0.12, 0.12, int(rng.integers(3, 7)))
    return level + np.interp(cols, np.linspace(0, 1, len(peaks)), peaks)


# ---------------------------------------------------------------------------------------------------- the folder

RENDER: dict[str, Callable[[int, int, np.random.Generator], Image.Image]] = {
    "objects": render_object, "textures": render_texture, "scenes": render_scene}


def render(kind: str, size: int, index: int, seed: int = 0) -> tuple[np.ndarray, int]:
    """Image ``index`` of a folder: ``(uint8 [size, size, 3], label)``; labels cycle through the classes."""
    if kind not in RENDER:
        raise ValueError(f"unknown kind {kind!r}; choose from {', '.join(KINDS)}")
    if size < 16:
        raise ValueError(f"size must be at least 16 px, got {size}")
    rng = image_rng(seed, kind, size, index)
    label = index % len(CLASSES[kind])
    return _finish(RENDER[kind](label, size * SUPERSAMPLE, rng), rng, size), label


def relative_path(index: int, seed: int, jpeg: bool) -> str:
    """Where image ``index`` goes: one or two levels of sub-folders that say nothing of its class."""
    r = np.random.default_rng([seed, 7, index]).integers(0, 1_000_000)
    sub = f"g{r % 6}" + (f"/s{(r // 6) % 4}" if (r // 24) % 3 else "")
    return f"{sub}/img_{index:05d}.{'jpg' if jpeg else 'png'}"


def _write(path: Path, pixels: np.ndarray, jpeg_quality: int | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(pixels)
    if jpeg_quality is None:
        img.save(path, format="PNG")
    else:
        img.save(path, format="JPEG", quality=jpeg_quality)


def write_broken(root: Path, example: Path) -> tuple[str, ...]:
    """The files every stage must skip without a crash: not an image, a JPEG cut short, an empty file."""
    for rel, data in zip(BROKEN, (b"not an image at all", example.read_bytes()[:200], b""), strict=True):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return BROKEN


def make_folder(root: str | Path, kind: str = "objects", size: int = 64, n: int = 6000, seed: int = 0,
                broken: bool = True) -> SyntheticFolder:
    """Write ``n`` images of ``kind`` at ``size`` px under ``root`` (nested, PNG and JPEG), ``root/labels.csv``
    and, with ``broken``, a few unreadable files. Same arguments, same bytes."""
    root = Path(root)
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    paths, labels = [], []
    for i in range(n):
        pixels, label = render(kind, size, i, seed)
        jpeg = i % JPEG_EVERY == 0
        rel = relative_path(i, seed, jpeg)
        quality = int(np.random.default_rng([seed, 11, i]).integers(75, 96)) if jpeg else None
        _write(root / rel, pixels, quality)
        paths.append(rel)
        labels.append(label)
    example = next((p for p in paths if p.endswith(".jpg")), paths[0])
    bad = write_broken(root, root / example) if broken else ()
    write_labels(root, paths, [CLASSES[kind][y] for y in labels])
    return SyntheticFolder(root, kind, size, seed, CLASSES[kind], paths, labels, bad)


def write_labels(root: Path, paths: list[str], names: list[str]) -> Path:
    """``root/labels.csv``: a ``path,label`` header, then one row per readable image, sorted by path."""
    out = root / LABELS_CSV
    with out.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label"])
        w.writerows(sorted(zip(paths, names, strict=True)))
    return out


def read_labels(root: str | Path) -> dict[str, str]:
    """``{relative path: class name}`` from a folder's ``labels.csv`` (or the CSV itself)."""
    path = Path(root)
    path = path / LABELS_CSV if path.is_dir() else path
    with path.open(newline="") as fh:
        rows = list(csv.reader(fh))
    return {r[0]: r[1] for r in rows[1:] if len(r) >= 2}


# ---------------------------------------------------------------------------------------------------- scoring


def labelled(root: str | Path) -> tuple[list[str], np.ndarray, list[str]]:
    """``(relative paths sorted, labels [N], class names sorted)`` from a folder's ``labels.csv``."""
    rows = read_labels(root)
    paths = sorted(rows)
    classes = sorted(set(rows.values()))
    return paths, np.array([classes.index(rows[p]) for p in paths], dtype=np.int64), classes


def scoring_split(n: int, queries: int = SCORING_QUERIES, seed: int = SCORING_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Seeded sorted ``(bank, queries)`` indices of ``n`` labelled images; ``queries`` is capped at a sixth of ``n``
    (small folders). The bench (``bench/folder_quality.py``) and the folder quality test score on it."""
    perm = np.random.default_rng(seed).permutation(n)
    q = min(queries, n // 6)
    return np.sort(perm[q:]), np.sort(perm[:q])


def folder_pixels(root: str | Path, paths: list[str], size: int) -> np.ndarray:
    """uint8 ``[N, size, size, 3]`` of ``paths`` under ``root``, decoded and fitted exactly as ``byol embed-folder``
    reads files (the raw-pixel baseline sees what the encoder saw)."""
    from serving.contract.image import load

    return np.stack([load((Path(root) / p).read_bytes(), size) for p in paths])
