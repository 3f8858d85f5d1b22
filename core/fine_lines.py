"""Fine scratches as the twin draws them (pure: rng in, arrays out).

Shared by the twin, which paints them into its sheets (``twin.surface``), and by
segmentation training, whose recipe option ``drawn_lines`` draws them into copies of
training frames (``models.segmentation.train``): a recording holds few of them (the
100-sheet twin recording trains on 11 frames), and a network learns a rare class from
the number of different defects it sees.
"""

from __future__ import annotations

import cv2
import numpy as np


def fine_scratches(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Severstal's class 2 in the twin's look: two to eight fine, short scratches one or
    two pixels wide at any angle, in a square of 60-180 pixels. Returns the mask (bool)
    and the grey-level change inside it (float32, 30-60 brighter)."""
    size = int(rng.integers(60, 180))
    mask = np.zeros((size, size), np.uint8)
    for _ in range(int(rng.integers(2, 9))):
        p0 = rng.integers(2, size - 2, 2)
        angle, length = rng.uniform(0, np.pi), rng.uniform(15, size * 0.8)
        p1 = (p0 + length * np.array([np.cos(angle), np.sin(angle)])).clip(1, size - 2)
        cv2.line(
            mask, tuple(int(v) for v in p0), tuple(int(v) for v in p1), 1, int(rng.integers(1, 3))
        )
    return mask.astype(bool), np.full(mask.shape, rng.uniform(30, 60), np.float32)
