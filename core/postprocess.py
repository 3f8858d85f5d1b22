"""Post-processing of segmentation outputs into defect masks (pure: arrays in, arrays out).

Per class, in this order: the image-level gate (drop the class when its gate probability
is below the gate threshold), the pixel threshold, then connected components smaller
than the minimum area are removed. Every threshold is chosen on validation data and
stored with the model (``Thresholds``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Thresholds:
    """Per class (in the model's class order): gate probability, pixel probability,
    minimum component area in full-resolution pixels."""

    gate: tuple[float, ...]
    pixel: tuple[float, ...]
    min_area: tuple[int, ...]

    def __post_init__(self) -> None:
        if not len(self.gate) == len(self.pixel) == len(self.min_area):
            raise ValueError("gate, pixel and min_area need one value per class")

    @staticmethod
    def neutral(n_classes: int) -> Thresholds:
        return Thresholds((0.5,) * n_classes, (0.5,) * n_classes, (0,) * n_classes)

    def to_dict(self) -> dict:
        return {k: list(v) for k, v in asdict(self).items()}

    @staticmethod
    def from_dict(d: dict) -> Thresholds:
        return Thresholds(
            tuple(float(x) for x in d["gate"]),
            tuple(float(x) for x in d["pixel"]),
            tuple(int(x) for x in d["min_area"]),
        )


def remove_small_components(mask: np.ndarray, min_area: int) -> np.ndarray:
    """The mask without its 8-connected components of fewer than ``min_area`` pixels."""
    if min_area <= 1 or not mask.any():
        return mask
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    keep = stats[:, cv2.CC_STAT_AREA] >= min_area
    keep[0] = False
    return keep[labels] if n > 1 else mask


def apply_thresholds(
    gate_probs: np.ndarray, pixel_probs: np.ndarray, t: Thresholds, area_scale: float = 1.0
) -> np.ndarray:
    """Masks (N, C, H, W) bool from gate (N, C) and pixel probabilities (N, C, H, W).

    ``area_scale`` is full-resolution pixels per pixel of ``pixel_probs`` (1 at full
    resolution), so that the same stored minimum area applies at any resolution.
    """
    n, c = gate_probs.shape
    masks = np.zeros(pixel_probs.shape, dtype=bool)
    for i in range(n):
        for j in range(c):
            if gate_probs[i, j] < t.gate[j]:
                continue
            mask = pixel_probs[i, j] >= t.pixel[j]
            masks[i, j] = remove_small_components(mask, int(np.ceil(t.min_area[j] / area_scale)))
    return masks
