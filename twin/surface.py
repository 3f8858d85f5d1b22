"""Rolled-steel surface texture and the four Severstal defect classes (pure: rng in, arrays out).

Rows run along the rolling direction (the frame's short axis), columns across the sheet.
Every defect is drawn as a hard mask plus the change in grey level inside it: the mask
is exactly where the picture changes, so the ground truth matches the picture.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from core.steel_look import smooth_noise

CLASS_IDS = (1, 2, 3, 4)


def steel_surface(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Grey levels (float32) of a clean sheet: streaks along the rolling direction,
    mottled scale, roll marks repeating with the roll's circumference, fine grain."""
    h = shape[0]
    base = rng.uniform(80, 125)
    streaks = smooth_noise(rng, shape, (rng.uniform(80, 300), rng.uniform(1.5, 4))) * rng.uniform(
        3, 8
    )
    mottle = smooth_noise(rng, shape, (48, 48)) * rng.uniform(4, 10)
    scale = smooth_noise(rng, shape, (20, 14))
    scale_spots = np.where(scale > 1.8, -rng.uniform(8, 22), 0).astype(np.float32)
    period = rng.uniform(300, 800)
    rows = np.arange(h, dtype=np.float32)[:, None]
    roll_marks = np.cos(2 * np.pi * rows / period + rng.uniform(0, 6.3)) * rng.uniform(1, 4)
    grain = rng.standard_normal(shape, dtype=np.float32) * rng.uniform(2, 5)
    return (base + streaks + mottle + scale_spots + roll_marks + grain).astype(np.float32)


@dataclass(frozen=True)
class Defect:
    """One defect drawn in a window of the sheet: (top, left) and local mask and change."""

    class_id: int
    top: int
    left: int
    mask: np.ndarray  # bool (h, w)
    delta: np.ndarray  # float32 (h, w), grey-level change inside the mask


def _window(size: tuple[int, int]) -> np.ndarray:
    return np.zeros(size, np.uint8)


def pits(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Class 1: a group of small round pits or rolled-in scale grains."""
    radius = int(rng.integers(20, 90))
    mask = _window((2 * radius + 16, 2 * radius + 16))
    for _ in range(int(rng.integers(6, 40))):
        cy, cx = rng.normal(radius + 8, radius / 2, 2).clip(6, 2 * radius + 9).astype(int)
        axes = (int(rng.integers(2, 10)), int(rng.integers(2, 10)))
        cv2.ellipse(mask, (int(cx), int(cy)), axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    bright = rng.random() < 0.5  # rolled-in scale shines, pits are dark
    amplitude = rng.uniform(45, 90) if bright else -rng.uniform(35, 60)
    return mask.astype(bool), np.full(mask.shape, amplitude, np.float32)


def fine_scratches(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Class 2: one to three fine, short scratches at any angle."""
    size = int(rng.integers(60, 180))
    mask = _window((size, size))
    for _ in range(int(rng.integers(2, 9))):
        p0 = rng.integers(2, size - 2, 2)
        angle, length = rng.uniform(0, np.pi), rng.uniform(15, size * 0.8)
        p1 = (p0 + length * np.array([np.cos(angle), np.sin(angle)])).clip(1, size - 2)
        cv2.line(
            mask, tuple(int(v) for v in p0), tuple(int(v) for v in p1), 1, int(rng.integers(1, 3))
        )
    return mask.astype(bool), np.full(mask.shape, rng.uniform(30, 60), np.float32)


def scratches(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Class 3: a group of scratches and lines, mostly along the rolling direction, any length."""
    length = int(np.exp(rng.uniform(np.log(60), np.log(1500))))
    lines = int(rng.integers(1, 9))
    band = int(rng.integers(10, 60)) * lines
    lean = np.tan(np.deg2rad(rng.normal(0, 5)))
    width = band + int(abs(lean) * length) + 24
    mask = _window((length + 16, width))
    for _ in range(lines):
        thickness = int(rng.integers(2, 7))
        extent = int(length * rng.uniform(0.4, 1.0))
        y0 = int(rng.integers(6, length - extent + 7))
        points = int(max(2, extent // 60))
        ys = np.linspace(y0, y0 + extent, points)
        x0 = rng.uniform(10, band + 10) + (width - band - 24 if lean < 0 else 0)
        xs = x0 + lean * (ys - ys[0]) + rng.normal(0, 1.0, points).cumsum().clip(-3, 3)
        polyline = np.stack([xs, ys], 1).round().astype(np.int32)
        cv2.polylines(mask, [polyline], False, 1, thickness)
    amplitude = -rng.uniform(25, 55) if rng.random() < 0.7 else rng.uniform(30, 60)
    return mask.astype(bool), np.full(mask.shape, amplitude, np.float32)


def patches(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Class 4: a large patch or rolling film with torn, uneven edges and its own texture."""
    h, w = int(rng.integers(100, 420)), int(rng.integers(120, 640))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    radial = ((yy - h / 2) / (h / 2)) ** 2 + ((xx - w / 2) / (w / 2)) ** 2
    torn = smooth_noise(rng, (h, w), (18, 18)) * 0.35 + smooth_noise(rng, (h, w), (5, 5)) * 0.12
    mask = (radial + torn) < 0.8
    texture = smooth_noise(rng, (h, w), (6, 6)) * rng.uniform(5, 12)
    amplitude = -rng.uniform(25, 50) if rng.random() < 0.8 else rng.uniform(25, 45)
    return mask, (amplitude + texture).astype(np.float32)


SHAPES: dict[int, Callable[[np.random.Generator], tuple[np.ndarray, np.ndarray]]] = {
    1: pits,
    2: fine_scratches,
    3: scratches,
    4: patches,
}
# Mean rows a defect of each class spans, to turn a share of frames into a count.
MEAN_EXTENT_ROWS = {1: 90, 2: 60, 3: 300, 4: 260}


def place_defects(
    rng: np.random.Generator,
    sheet_shape: tuple[int, int],
    class_rates: dict[int, float],
    frame_height: int,
) -> list[Defect]:
    """Defects for one sheet, so that about ``rate`` of its frames show each class."""
    h, w = sheet_shape
    frames = h / frame_height
    defects = []
    for class_id, rate in sorted(class_rates.items()):
        per_instance = 1 + MEAN_EXTENT_ROWS[class_id] / frame_height
        for _ in range(int(rng.poisson(rate * frames / per_instance))):
            mask, delta = SHAPES[class_id](rng)
            mh, mw = mask.shape
            if mh >= h - 20 or mw >= w - 20:
                mask, delta = mask[: h - 20, : w - 20], delta[: h - 20, : w - 20]
                mh, mw = mask.shape
            top = int(rng.integers(10, h - mh - 9))
            left = int(rng.integers(10, w - mw - 9))
            defects.append(Defect(class_id, top, left, mask, delta))
    return defects


def paint_defects(surface: np.ndarray, defects: list[Defect]) -> dict[int, np.ndarray]:
    """Draw the defects into the surface (in place); returns a bool mask per class."""
    masks = {c: np.zeros(surface.shape, bool) for c in CLASS_IDS}
    for d in defects:
        window = (slice(d.top, d.top + d.mask.shape[0]), slice(d.left, d.left + d.mask.shape[1]))
        surface[window] += np.where(d.mask, d.delta, 0)
        masks[d.class_id][window] |= d.mask
    return masks
