"""Turning grey uint8 pictures into network input, identically in training and inference.

The recipe (input size, mean, standard deviation) is stored with each registered model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Preprocess:
    height: int
    width: int
    mean: float
    std: float

    def resize(self, images: np.ndarray) -> np.ndarray:
        """(N, H, W) uint8 → (N, height, width) uint8, area-averaged."""
        if images.shape[1:] == (self.height, self.width):
            return images
        size = (self.width, self.height)
        return np.stack([cv2.resize(i, size, interpolation=cv2.INTER_AREA) for i in images])

    def normalise(self, resized: np.ndarray) -> np.ndarray:
        """(N, h, w) uint8 → (N, 1, h, w) float32, zero mean and unit spread."""
        x = resized.astype(np.float32)[:, None]
        return (x / 255.0 - self.mean) / self.std

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.normalise(self.resize(images))

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def fit(images: np.ndarray, height: int, width: int) -> Preprocess:
        """Mean and spread of the training pictures, measured at the input size."""
        x = images[: min(len(images), 256)].astype(np.float32) / 255.0
        return Preprocess(height, width, float(x.mean()), float(max(x.std(), 1e-3)))
