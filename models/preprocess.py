"""Turning uint8 pictures (grey, or colour for a classifier of colour pictures) into
network input, identically in training and inference.

The recipe (input size, mean, standard deviation) is stored with each registered model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np

# A picture is in colour when its channels differ by more than this many grey levels on
# average (the most against the least of each pixel): a grey picture stored as colour
# (NEU's JPEGs) differs by 0, and JPEG's chroma noise on a grey one by a level or less.
COLOUR_SPREAD = 2.0


def colourful(rgb: np.ndarray) -> bool:
    """Whether an (H, W, 3) uint8 picture shows colour, not grey stored as colour."""
    spread = rgb.max(axis=2).astype(np.int16) - rgb.min(axis=2)
    return bool(spread.mean() > COLOUR_SPREAD)


def with_channels(images: np.ndarray, channels: int) -> np.ndarray:
    """Pictures (N, H, W) grey or (N, H, W, 3) RGB, uint8, as ``channels`` 1 (grey, (N, H,
    W)) or 3 (RGB, (N, H, W, 3)): grey repeated into three channels, or RGB to grey as
    OpenCV weighs it."""
    if channels not in (1, 3):
        raise ValueError(f"pictures have 1 (grey) or 3 (RGB) channels, not {channels}")
    colour = images.ndim == 4
    if (colour and images.shape[3] != 3) or images.ndim not in (3, 4):
        raise ValueError(f"expected pictures (N, H, W) or (N, H, W, 3), got {images.shape}")
    if colour == (channels == 3):
        return images
    if colour:
        grey = [cv2.cvtColor(np.ascontiguousarray(i), cv2.COLOR_RGB2GRAY) for i in images]
        return np.stack(grey) if grey else np.zeros(images.shape[:3], np.uint8)
    return np.repeat(images[..., None], 3, axis=3)


def fine_detail(images: np.ndarray, height: int, width: int, window: int) -> np.ndarray:
    """What a downscale averages away, kept: grey (N, H, W) uint8 frames → (N, 2, height,
    width) float32, per cell of the smaller grid the most any frame pixel in it stands
    above (channel 0) and below (channel 1) the mean of the ``window`` x ``window`` square
    around it, in grey levels. A bright line one or two pixels wide keeps its full
    contrast here, where averaging to a quarter scale leaves a quarter of it under the
    steel's own texture (docs/benchmarks.md, "Fine detail beside the downscaled frame").
    About 0.5 ms a 1600x256 frame: the mean rounded to whole grey levels, and OpenCV's
    dilate and erode for the most and least over each cell."""
    n, h, w = images.shape
    out = np.empty((n, 2, height, width), np.float32)
    cell = np.ones((-(-h // height), -(-w // width)), np.uint8)  # rounded up
    for i, frame in enumerate(images):
        local = frame.astype(np.int16) - cv2.blur(
            frame, (window, window), borderType=cv2.BORDER_REFLECT
        )
        for c, extreme in enumerate((cv2.dilate, cv2.erode)):
            # each pixel: the most (least) over the cell that starts there, sampled at
            # the cells' corners (whole cells when they tile the frame)
            over = extreme(local, cell, anchor=(0, 0))
            out[i, c] = cv2.resize(over, (width, height), interpolation=cv2.INTER_NEAREST)
        out[i, 1] *= -1
    return out


@dataclass(frozen=True)
class Preprocess:
    height: int
    width: int
    mean: float
    std: float
    # with a window, two more channels of ``fine_detail`` beside the grey (segmentation)
    detail_window: int = 0

    @property
    def channels(self) -> int:
        """Network input channels for grey frames."""
        return 3 if self.detail_window else 1

    def resize(self, images: np.ndarray) -> np.ndarray:
        """(N, H, W[, C]) uint8 → (N, height, width[, C]) uint8, area-averaged."""
        if images.shape[1:3] == (self.height, self.width):
            return images
        size = (self.width, self.height)
        return np.stack([cv2.resize(i, size, interpolation=cv2.INTER_AREA) for i in images])

    def normalise(self, resized: np.ndarray) -> np.ndarray:
        """(N, h, w) uint8 → (N, 1, h, w) float32, zero mean and unit spread; colour
        (N, h, w, C) → (N, C, h, w), the one mean and spread over all channels."""
        x = resized.astype(np.float32)
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if x.ndim == 4 else x[:, None]
        return (x / 255.0 - self.mean) / self.std

    def __call__(self, images: np.ndarray) -> np.ndarray:
        x = self.normalise(self.resize(images))
        if not self.detail_window:
            return x
        detail = fine_detail(images, self.height, self.width, self.detail_window)
        return np.concatenate([x, detail / (255.0 * self.std)], axis=1)

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def fit(images: np.ndarray, height: int, width: int, detail_window: int = 0) -> Preprocess:
        """Mean and spread of the training pictures, measured at the input size."""
        x = images[: min(len(images), 256)].astype(np.float32) / 255.0
        spread = float(max(x.std(), 1e-3))
        return Preprocess(height, width, float(x.mean()), spread, detail_window)
