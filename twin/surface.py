"""Rolled-steel surface texture and the four Severstal defect classes (pure: rng in, arrays out).

Rows run along the rolling direction (the frame's short axis), columns across the sheet.
In the twin's own look (the default) every defect is drawn as a hard mask plus the
change in grey level inside it: the mask is exactly where the picture changes, so the
ground truth matches the picture. The "severstal" look draws them as real Severstal
defects look and are labelled: outlines drawn around them with a margin, scratches as
bands of fine streaks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from core.fine_lines import fine_scratches
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


# -- the "severstal" look: defects as Severstal's real ones look and are labelled --------
#
# Severstal's labels are outlines drawn by hand around a defect, with a margin, and its
# scratches are bands of fine streaks rather than single lines. Sizes follow the
# connected components of 782 masks of real frames (../shared/data/severstal-rle: a
# Kaggle competitor's predictions, shaped as the labels it learnt from; other frames
# than the 20-image sample), median (10th-90th percentile): pits 53 (19-147)
# rows by 26 (12-58) columns, scratches 161 (28-256+) by 22 (10-77), a third of them
# across the whole frame, patches 104 (33-250) by 137 (38-395); 0.5-0.9 of each
# component's box filled. The label is the outline; the picture changes only inside it,
# fading towards it.


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def _wobble(rng: np.random.Generator, n: int, cell: float) -> np.ndarray:
    """A smooth 1-D curve of ``n`` values, unit variance, varying over ``cell`` values."""
    return smooth_noise(rng, (n, 1), (cell, 1))[:, 0]


def _outline(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A hand-drawn outline: an ellipse filling an (h, w) box, its edge uneven."""
    pad = 6
    yy, xx = np.mgrid[0 : h + 2 * pad, 0 : w + 2 * pad].astype(np.float32)
    radial = ((yy - pad - h / 2) / (h / 2)) ** 2 + ((xx - pad - w / 2) / (w / 2)) ** 2
    edge = smooth_noise(rng, radial.shape, (max(h / 3, 4), max(w / 3, 4))) * 0.15
    return (radial + edge) < 1.0


def _fade(label: np.ndarray, margin: float) -> np.ndarray:
    """0 on the outline and next to it, rising to 1 at ``margin`` pixels further in: where
    a label drawn by hand leaves steel around the defect."""
    inside = cv2.distanceTransform(label.astype(np.uint8), cv2.DIST_L2, 3)
    return np.clip((inside - 1.5) / max(margin, 1.0), 0, 1).astype(np.float32)


def _specks(
    rng: np.random.Generator, where: np.ndarray, count: int, size: tuple[int, int]
) -> np.ndarray:
    """A field (0-1) of ``count`` small round specks of ``size`` radii, centred at
    pixels of ``where``."""
    field = np.zeros(where.shape, np.uint8)
    centres = np.argwhere(where)
    for cy, cx in centres[rng.integers(0, len(centres), count)]:
        axes = (int(rng.integers(*size)), int(rng.integers(*size)))
        cv2.ellipse(field, (int(cx), int(cy)), axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    return cv2.GaussianBlur(field.astype(np.float32), (3, 3), 0)


def pits_outlined(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Class 1: specks of pitting or rolled-in scale over a darker or brighter spot,
    outlined as one blob, taller (along the rolling direction) than wide."""
    h = int(_log_uniform(rng, 16, 150))
    w = int(np.clip(h * rng.uniform(0.3, 1.0), 10, 70))
    label = _outline(rng, h, w)
    fade = _fade(label, min(h, w) * rng.uniform(0.05, 0.15))
    count = max(2, h * w // int(rng.integers(80, 250)))
    inner = fade > 0.5
    specks = _specks(rng, inner if inner.any() else label, count, (1, 4))
    sign = 1.0 if rng.random() < 0.4 else -1.0
    tone = rng.uniform(5, 20) * (1 + 0.5 * smooth_noise(rng, label.shape, (8, 8)))
    delta = sign * fade * (tone + rng.uniform(20, 55) * specks)
    return label, (delta * label).astype(np.float32)


def fine_scratches_outlined(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Class 2: a narrow streak, two to five pixels wide, along the rolling direction,
    outlined as a strip a few pixels wider."""
    h, thickness = int(rng.integers(40, 250)), int(rng.integers(2, 6))
    w = thickness + 2 * int(rng.integers(3, 7))
    lean = np.tan(np.deg2rad(rng.normal(0, 2)))
    width = w + int(abs(lean) * h) + 12
    rows = np.arange(h + 12, dtype=np.float32)
    inside = ((rows >= 6) & (rows < h + 6))[:, None]
    centre = width / 2 + lean * (rows - rows.mean()) + _wobble(rng, rows.size, 40)
    label = inside & (np.abs(np.arange(width)[None, :] - centre[:, None]) < w / 2)
    line = np.zeros(label.shape, np.uint8)
    points = np.stack([centre, rows], 1)[6 : h + 6].round().astype(np.int32)
    cv2.polylines(line, [points], False, 1, thickness)
    streak = cv2.GaussianBlur(line.astype(np.float32), (3, 3), 0)
    sign = -1.0 if rng.random() < 0.5 else 1.0
    along = np.clip(0.7 + 0.3 * _wobble(rng, label.shape[0], 30), 0.2, 1)[:, None]
    delta = sign * rng.uniform(25, 55) * streak * along * _fade(label, 2)
    return label, (delta * label).astype(np.float32)


def scratch_bands(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Class 3: a band of fine streaks along the rolling direction over a darker or
    brighter track, outlined as one band, its edges and width wandering."""
    length = int(_log_uniform(rng, 30, 1500))
    width = _log_uniform(rng, 10, 80)
    lean = np.tan(np.deg2rad(rng.normal(0, 3)))
    side = int(width * 1.4 + abs(lean) * length) + 12
    rows = np.arange(length + 12, dtype=np.float32)
    inner = np.clip(np.minimum(rows - 6, length + 6 - rows) / max(min(20.0, length / 4), 1), 0, 1)
    centre = side / 2 + lean * (rows - rows.mean()) + _wobble(rng, rows.size, 80) * width * 0.1
    half = width / 2 * np.clip(1 + 0.2 * _wobble(rng, rows.size, 60), 0.5, 1.5) * inner**0.5
    cols = np.arange(side, dtype=np.float32)[None, :]
    offset = cols - centre[:, None]
    label = np.abs(offset) < half[:, None]
    streaks = np.zeros(label.shape, np.float32)
    for _ in range(max(1, int(width / rng.uniform(4, 10)))):
        at = rng.uniform(-0.8, 0.8) * width / 2
        strength = rng.uniform(0.5, 1.0) * np.clip(0.8 + 0.4 * _wobble(rng, rows.size, 50), 0.2, 1)
        thickness = rng.uniform(0.8, 2.0)
        streaks = np.maximum(
            streaks, strength[:, None] * np.exp(-(((offset - at) / thickness) ** 2))
        )
    sign = -1.0 if rng.random() < 0.7 else 1.0
    tone = rng.uniform(15, 45) * (1 + 0.3 * smooth_noise(rng, label.shape, (40, 6)))
    delta = sign * _fade(label, width * 0.1) * (tone + rng.uniform(20, 50) * streaks)
    return label, (delta * label).astype(np.float32)


def patches_outlined(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Class 4: a patch as the twin draws it, outlined by hand: the outline a few pixels
    outside its torn edge, its small holes and bays filled."""
    painted, delta = patches(rng)
    margin = int(rng.integers(3, 10))
    ring = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * margin + 1, 2 * margin + 1))
    padded = np.pad(painted.astype(np.uint8), margin + 1)
    label = cv2.morphologyEx(padded, cv2.MORPH_CLOSE, ring, iterations=2)
    label = cv2.dilate(label, ring).astype(bool)
    delta = np.pad(np.where(painted, delta, 0), margin + 1)
    return label, delta.astype(np.float32)


Shape = Callable[[np.random.Generator], tuple[np.ndarray, np.ndarray]]
# Per look: how each class is drawn, and the rows it counts for when a share of frames
# is turned into a count of defects. About the mean rows it spans; for the severstal
# look's scratches less (220 against a mean length near 380), so that a 100-sheet
# recording shows them on the configured share of frames (40.9 % for 41 %; 400 gave
# 29-30 %): short bands often share a frame with others.
LOOKS: dict[str, tuple[dict[int, Shape], dict[int, int]]] = {
    "twin": (
        {1: pits, 2: fine_scratches, 3: scratches, 4: patches},
        {1: 90, 2: 60, 3: 300, 4: 260},
    ),
    "severstal": (
        {1: pits_outlined, 2: fine_scratches_outlined, 3: scratch_bands, 4: patches_outlined},
        {1: 60, 2: 150, 3: 220, 4: 270},
    ),
}


def place_defects(
    rng: np.random.Generator,
    sheet_shape: tuple[int, int],
    class_rates: dict[int, float],
    frame_height: int,
    look: str = "twin",
) -> list[Defect]:
    """Defects for one sheet, so that about ``rate`` of its frames show each class,
    drawn in ``look`` (a key of ``LOOKS``)."""
    shapes, extent_rows = LOOKS[look]
    h, w = sheet_shape
    frames = h / frame_height
    defects = []
    for class_id, rate in sorted(class_rates.items()):
        per_instance = 1 + extent_rows[class_id] / frame_height
        for _ in range(int(rng.poisson(rate * frames / per_instance))):
            mask, delta = shapes[class_id](rng)
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
