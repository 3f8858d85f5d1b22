"""The sheet's marking: its ID stencilled near the head, and how each pass degrades it.

Text is drawn with OpenCV's built-in Hershey fonts (nothing to download). The paint is
an alpha layer; the marking station and the inspection camera each see it through their
own wiping, blur, lighting, contrast and noise (seed 000's list of what a line does).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from core.steel_look import smooth_noise

FONTS = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_TRIPLEX)


def sheet_id(heat: int, sheet_number: int) -> str:
    """The L2 system's sheet ID: heat number and the sheet's number within the heat."""
    return f"H{heat:06d}-{sheet_number:02d}"


@dataclass(frozen=True)
class MarkingLayer:
    """Paint of one marking: alpha in [0, 1] and the paint's grey level."""

    alpha: np.ndarray  # float32 (h, w)
    paint: float


def render_marking(rng: np.random.Generator, text: str, char_height_px: int) -> MarkingLayer:
    """The marking's paint, tightly cropped with a small margin."""
    font = FONTS[int(rng.integers(len(FONTS)))]
    scale = char_height_px / 22.0  # Hershey glyphs are about 22 px high at scale 1
    thickness = max(2, int(char_height_px / rng.uniform(6, 9)))
    (tw, th), base = cv2.getTextSize(text, font, scale, thickness)
    margin = thickness + 4
    canvas = np.zeros((th + base + 2 * margin, tw + 2 * margin), np.uint8)
    cv2.putText(canvas, text, (margin, margin + th), font, scale, 255, thickness, cv2.LINE_AA)
    alpha = cv2.GaussianBlur(canvas.astype(np.float32) / 255, (0, 0), rng.uniform(0.6, 1.4))
    paint = rng.uniform(200, 245) if rng.random() < 0.8 else rng.uniform(15, 40)  # white or black
    return MarkingLayer(alpha.clip(0, 1), paint)


def wiped(rng: np.random.Generator, alpha: np.ndarray, amount: float) -> np.ndarray:
    """The paint after cleaning and handling: ``amount`` of it rubbed away in blotches,
    and sometimes a swipe band across it."""
    if amount <= 0:
        return alpha
    h, w = alpha.shape
    blotches = smooth_noise(rng, (h, w), (10, 10))
    keep = (blotches > np.quantile(blotches, min(amount, 0.95))).astype(np.float32)
    keep = cv2.GaussianBlur(keep, (0, 0), 1.5)
    if rng.random() < amount:
        centre, spread = rng.uniform(0, h), h * rng.uniform(0.1, 0.3)
        band = np.exp(-(((np.arange(h, dtype=np.float32) - centre) / spread) ** 2))[:, None]
        keep *= 1 - band * rng.uniform(0.3, 0.8)
    return (alpha * keep).astype(np.float32)


def apply_marking(
    surface: np.ndarray, layer: MarkingLayer, alpha: np.ndarray, top: int, left: int
) -> None:
    """Paint the marking into the surface (in place) at (top, left)."""
    h, w = alpha.shape
    window = surface[top : top + h, left : left + w]
    window *= 1 - alpha
    window += alpha * layer.paint
