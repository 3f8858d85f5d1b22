"""What real strip-steel frames show that is no defect (pure: rng in, arrays out).

Real frames differ from the twin's default ones in ways issue 3 listed: oil and water
stains, bright splashes and scale flakes, much stronger light across the strip, and the
strip's edge with the dark beyond it. None of those is a defect, so none is labelled.
``distract`` draws them into a grey picture. The twin draws them when its
``surface_effects`` setting asks for it, and segmentation training draws them into crops
when its recipe's ``distractors`` asks for it, so that a model learns what a defect is
not.

Sizes are in the twin's frame pixels (1 mm each); ``scale`` is the picture's pixels per
frame pixel (0.25 for the quarter-scale input of the CPU recipes).
"""

from __future__ import annotations

import cv2
import numpy as np


def smooth_noise(
    rng: np.random.Generator, shape: tuple[int, int], cell: tuple[float, float]
) -> np.ndarray:
    """Unit-variance noise that varies over about ``cell`` = (rows, cols) pixels."""
    h, w = shape
    small = rng.standard_normal(
        (max(2, int(h / cell[0]) + 2), max(2, int(w / cell[1]) + 2)), dtype=np.float32
    )
    big = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    return big / max(float(big.std()), 1e-6)


def _soft(field: np.ndarray, level: float, sharpness: float) -> np.ndarray:
    """0 below ``level``, 1 above, with a soft edge."""
    return 1 / (1 + np.exp(-(field - level) * sharpness))


def stains(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Oil and water stains: pools and drops, round or drawn out either way (never
    only along the rolling direction, where they would pass for scratches), each
    darkening the steel by 15-55 %. Returns the gain (1 where no stain)."""
    cell = (rng.uniform(40, 250) * scale, rng.uniform(40, 250) * scale)
    field = smooth_noise(rng, shape, (max(cell[0], 1.0), max(cell[1], 1.0)))
    shade = _soft(field, rng.uniform(0.5, 1.5), rng.uniform(1.5, 5))
    return (1 - rng.uniform(0.15, 0.55) * shade).astype(np.float32)


def splashes(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Bright splashes and scale flakes: a cluster of irregular spots that saturate the
    camera, centred in the middle half of ``shape`` (so a picture of 960x720 frame pixels
    or more holds the whole cluster). Returns their cover, 0-1."""
    h, w = shape
    cy, cx = rng.uniform(h / 4, 3 * h / 4), rng.uniform(w / 4, 3 * w / 4)
    sy, sx = rng.uniform(30, 120) * scale, rng.uniform(20, 90) * scale
    yy = ((np.arange(h, dtype=np.float32) - cy) / max(sy, 1.0)) ** 2
    xx = ((np.arange(w, dtype=np.float32) - cx) / max(sx, 1.0)) ** 2
    envelope = np.exp(-(yy[:, None] + xx[None, :]))
    cell = max(rng.uniform(8, 24) * scale, 1.0)
    spots = smooth_noise(rng, shape, (cell * rng.uniform(1, 3), cell))
    return (_soft(spots + 2.5 * envelope, rng.uniform(2.4, 3.2), 6) * (envelope > 0.05)).astype(
        np.float32
    )


def splashed(
    rng: np.random.Generator, image: np.ndarray, defects: np.ndarray, scale: float = 1.0
) -> np.ndarray:
    """``image`` with a cluster of ``splashes`` drawn on it, kept a pixel off ``defects``
    (bool) so that no defect is hidden."""
    keep_clear = cv2.dilate(defects.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    cover = splashes(rng, image.shape, scale) * ~keep_clear
    return image * (1 - cover) + rng.uniform(235, 255) * cover


def light(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Light far less even than the twin's: a broad field of up to ±45 % and, at times, a
    bright band of reflected lamp light across the strip. Returns the gain."""
    h, w = shape
    field = smooth_noise(rng, shape, (rng.uniform(150, 600) * scale, rng.uniform(150, 600) * scale))
    gain = 1 + rng.uniform(0.1, 0.45) * np.tanh(field)
    if rng.random() < 0.5:
        rows = np.arange(h, dtype=np.float32)[:, None]
        cols = np.arange(w, dtype=np.float32)[None, :]
        centre = rng.uniform(0, h) + (cols - w / 2) * np.tan(rng.uniform(-0.6, 0.6))
        width = rng.uniform(20, 120) * scale
        gain = gain + rng.uniform(0.2, 0.7) * np.exp(-(((rows - centre) / max(width, 1.0)) ** 2))
    return gain.astype(np.float32)


def edge(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """The strip's edge inside the picture, and the dark beyond it: True off the strip.
    The edge runs along the rolling direction, wavering by a few pixels."""
    h, w = shape
    column = rng.uniform(0.05, 0.95) * w
    waver = smooth_noise(rng, (h, 1), (max(40 * scale, 1.0), 1))[:, 0] * rng.uniform(0, 3) * scale
    cols = np.arange(w, dtype=np.float32)[None, :]
    beyond = cols < (column + waver)[:, None]
    return beyond if rng.random() < 0.5 else beyond[:, ::-1].copy()


EFFECTS = ("stains", "splashes", "light", "edge")


def distract(
    rng: np.random.Generator,
    image: np.ndarray,
    defects: np.ndarray,
    chance: float,
    scale: float = 1.0,
    effects: tuple[str, ...] = EFFECTS,
) -> tuple[np.ndarray, np.ndarray]:
    """``image`` (grey levels 0-255, float32) with each of ``effects`` drawn with
    ``chance``: stains, splashes (never over ``defects``, a bool mask of any class, so
    no defect is hidden), uneven light, and the strip's edge. Returns the new picture
    (float32, unclipped) and where it is off the strip (bool): no defect is there."""
    unknown = set(effects) - set(EFFECTS)
    if unknown:
        raise ValueError(f"unknown effects {sorted(unknown)}: choose from {', '.join(EFFECTS)}")
    shape = image.shape
    out = image.astype(np.float32, copy=True)
    off = np.zeros(shape, bool)
    if "stains" in effects and rng.random() < chance:
        out *= stains(rng, shape, scale)
    if "splashes" in effects and rng.random() < chance:
        out = splashed(rng, out, defects, scale)
    if "light" in effects and rng.random() < chance:
        out *= light(rng, shape, scale)
    if "edge" in effects and rng.random() < chance:
        off = edge(rng, shape, scale)
        dark = rng.uniform(0, 10) + rng.standard_normal(shape, dtype=np.float32) * 2
        out = np.where(off, dark, out)
    return out, off
