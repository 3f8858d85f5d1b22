"""From pictures to what identifies a sheet, the one way every caller goes: detect the
markings, cut each one's crop, embed the crops (matching them is
``ReferenceIndex.match``). Used by register-sheets and evaluate identity
(tasks/identify.py), the inspection workers (tasks/inspection.py) and /v1/inspect
(serving/inference.py), so that batch inspection and the API cannot drift apart."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.identity.crops import marking_crop


@dataclass(frozen=True)
class Markings:
    """The markings found in a list of pictures, one row per marking kept."""

    owners: np.ndarray  # (m,) int64: index of the picture each marking is on
    boxes: np.ndarray  # (m, 5) float32: x_min, y_min, x_max, y_max, score
    crops: np.ndarray  # (m, H, W) uint8: what the imprint network reads
    per_picture: list[np.ndarray]  # every detection of each picture, best first

    def __len__(self) -> int:
        return len(self.owners)


def find_markings(
    detector, imprint, pictures: list[np.ndarray], batch: int = 32, best_only: bool = False
) -> Markings:
    """Detect the markings of ``pictures`` and cut each one's crop. ``best_only`` keeps a
    picture's highest-scoring marking (a station picture shows one sheet). A box that
    leaves no crop (flat on the picture's border) is dropped."""
    per_picture = detector.detect(pictures, batch=batch) if pictures else []
    size = tuple(imprint.crop_size)
    owners, boxes, crops = [], [], []
    for i, rows in enumerate(per_picture):
        for row in rows[:1] if best_only else rows:
            try:
                crops.append(marking_crop(pictures[i], row[:4], size, imprint.margin))
            except ValueError:
                continue
            owners.append(i)
            boxes.append(np.asarray(row[:5], np.float32))
    return Markings(
        np.asarray(owners, np.int64),
        np.stack(boxes) if boxes else np.zeros((0, 5), np.float32),
        np.stack(crops) if crops else np.zeros((0, *size), np.uint8),
        per_picture,
    )


def embed(imprint, crops: np.ndarray) -> np.ndarray:
    """L2-normalised embeddings (m, D) of the crops; (0, D) for none."""
    if not len(crops):
        return np.zeros((0, int(imprint.config()["dim"])), np.float32)
    return imprint.embed(crops)
