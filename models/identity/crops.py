"""Marking crops: the picture the imprint network sees, cut the same way everywhere.

A crop is the marking's box widened by a margin of steel around it (the surface under
and around the paint is part of the imprint), resized to a fixed size. The box comes
from ground truth at training time and from the detector at inspection time; both go
through ``marking_crop`` so the network never sees two conventions.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

CROP_SIZE = (48, 192)  # height, width: a marking is about four times wider than tall
MARGIN = 0.3  # of the box's height, added on every side


def picture_size(image: np.ndarray) -> str:
    """A picture's size as the detector keys what it learnt per size: "HEIGHTxWIDTH"."""
    return f"{image.shape[0]}x{image.shape[1]}"


def widen(box: Sequence[float], margin: float, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """(x_min, y_min, x_max, y_max) grown by ``margin`` of the box height, clipped to the image."""
    x0, y0, x1, y1 = (float(v) for v in box[:4])
    pad = margin * (y1 - y0 + 1)
    h, w = shape
    return (
        int(max(0, np.floor(x0 - pad))),
        int(max(0, np.floor(y0 - pad))),
        int(min(w - 1, np.ceil(x1 + pad))),
        int(min(h - 1, np.ceil(y1 + pad))),
    )


def marking_crop(
    image: np.ndarray,
    box: Sequence[float],
    size: tuple[int, int] = CROP_SIZE,
    margin: float = MARGIN,
) -> np.ndarray:
    """The grey uint8 crop (size) of the marking at ``box`` (inclusive pixel corners)."""
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    x0, y0, x1, y1 = widen(box, margin, image.shape[:2])
    if x1 <= x0 or y1 <= y0:
        raise ValueError(
            f"empty marking box {tuple(box)} in a {image.shape[1]}x{image.shape[0]} image"
        )
    window = image[y0 : y1 + 1, x0 : x1 + 1]
    return cv2.resize(window, (size[1], size[0]), interpolation=cv2.INTER_AREA)


def standardise(crops: np.ndarray) -> np.ndarray:
    """uint8 crops (N, H, W) → float32 (N, H, W, 1), each with zero mean and unit spread;
    light and contrast differ between the station and the line, the pattern does not."""
    x = crops.astype(np.float32)
    mean = x.mean(axis=(1, 2), keepdims=True)
    std = x.std(axis=(1, 2), keepdims=True)
    return ((x - mean) / (std + 4.0))[..., None]
