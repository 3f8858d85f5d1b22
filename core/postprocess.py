"""Post-processing of segmentation outputs into defect masks (pure: arrays in, arrays out).

Per class, in this order: the image-level gate (drop the class when its gate probability
is below the gate threshold), the pixel threshold, where the class has one the frame's
own contrast (``by_contrast``), then connected components smaller than the minimum area
are removed. Every threshold is chosen on validation data and stored with the model
(``Thresholds``).
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
    # Per class, 0 or the grey levels a pixel must stand off its neighbourhood's median
    # to be kept (``by_contrast``), within ``reach`` pixels of the model's mask. Empty:
    # none (models saved before it)
    contrast: tuple[int, ...] = ()
    reach: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        n = len(self.gate)
        for name in ("contrast", "reach"):
            if not getattr(self, name):
                object.__setattr__(self, name, (0,) * n)
        if not n == len(self.pixel) == len(self.min_area) == len(self.contrast) == len(self.reach):
            raise ValueError("gate, pixel, min_area, contrast and reach need one value per class")

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
            tuple(int(x) for x in d.get("contrast", ())),
            tuple(int(x) for x in d.get("reach", ())),
        )


def remove_small_components(mask: np.ndarray, min_area: int) -> np.ndarray:
    """The mask without its 8-connected components of fewer than ``min_area`` pixels."""
    if min_area <= 1 or not mask.any():
        return mask
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    keep = stats[:, cv2.CC_STAT_AREA] >= min_area
    keep[0] = False
    return keep[labels] if n > 1 else mask


# The square whose median is a pixel's neighbourhood in ``by_contrast``: wider than a
# scratch (2-6 px in the twin) or a pit (up to 20 px), so that their own pixels are few
# in it
CONTRAST_WINDOW = 31


def contrast_offsets(frame: np.ndarray) -> np.ndarray:
    """Each pixel's grey level less the median of the ``CONTRAST_WINDOW`` square around
    it (int16), for ``by_contrast`` to cut several masks of one frame."""
    return frame.astype(np.int16) - cv2.medianBlur(np.ascontiguousarray(frame), CONTRAST_WINDOW)


def by_contrast(
    frame: np.ndarray,
    mask: np.ndarray,
    contrast: int,
    reach: int,
    offsets: np.ndarray | None = None,
) -> np.ndarray:
    """The pixels within ``reach`` of ``mask`` that stand ``contrast`` grey levels or more
    off the median of the ``CONTRAST_WINDOW`` square around them, on the side (darker or
    brighter) on which the mask's own pixels of that region mostly lie. A model at a
    quarter of the frame's scale cannot say which pixels a line two pixels wide covers;
    the frame can. ``frame``: grey uint8 (H, W); ``mask``: bool (H, W); ``offsets``: the
    frame's ``contrast_offsets`` where they are known (the same cut: a pixel's square
    lies in the part of the frame worked on here, or meets the frame's edge)."""
    if contrast <= 0:  # most classes: not even the mask's rows are scanned
        return mask
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not len(rows):
        return mask
    pad = reach + CONTRAST_WINDOW // 2
    top, bottom = max(int(rows[0]) - pad, 0), min(int(rows[-1]) + pad + 1, mask.shape[0])
    left, right = max(int(cols[0]) - pad, 0), min(int(cols[-1]) + pad + 1, mask.shape[1])
    if offsets is None:
        off = contrast_offsets(frame[top:bottom, left:right])
    else:
        off = offsets[top:bottom, left:right]
    inside = mask[top:bottom, left:right]
    side = 2 * reach + 1
    near = cv2.dilate(inside.view(np.uint8), np.ones((side, side), np.uint8))
    count, labels = cv2.connectedComponents(near, connectivity=8)
    # each region's side: the sign of its mask's summed residual
    sign = np.sign(np.bincount(labels[inside], weights=off[inside], minlength=count))
    sign[sign == 0] = 1
    kept = (labels > 0) & (sign[labels] * off >= contrast)
    out = np.zeros_like(mask)
    out[top:bottom, left:right] = kept
    return out


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
