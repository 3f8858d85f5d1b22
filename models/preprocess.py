"""Turning uint8 pictures (grey, or colour for a classifier of colour pictures) into
network input, identically in training and inference.

The recipe (input size, mean, standard deviation) is stored with each registered model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

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

    def on_device(self, images: torch.Tensor) -> torch.Tensor:
        """``__call__`` for grey frames already on a device (a GPU worker's, decoded
        there or copied there as uint8): (N, H, W) uint8 tensor → (N, channels, height,
        width) float32 on the same device, equal to ``__call__``'s: OpenCV's area resize
        (rounded half to even) and blur redone in torch. On a GPU worker this work
        then takes none of its CPU cores (the fine detail alone costs about 0.5 ms of
        a core per frame there)."""
        if images.ndim != 3 or images.dtype != torch.uint8:
            raise ValueError(
                f"expected grey uint8 frames (N, H, W), got {images.dtype} {tuple(images.shape)}"
            )
        frames = images[:, None].float()
        if images.shape[1] < self.height or images.shape[2] < self.width:  # enlarged: rare
            resized = torch.from_numpy(self.resize(images.cpu().numpy())).to(images.device)
            resized = resized[:, None].float()
        else:
            resized = torch.round(_area_resized(frames, self.height, self.width))
        x = (resized / 255.0 - self.mean) / self.std
        if not self.detail_window:
            return x
        detail = _fine_detail_on_device(frames, self.height, self.width, self.detail_window)
        return torch.cat([x, detail / (255.0 * self.std)], dim=1)

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def fit(images: np.ndarray, height: int, width: int, detail_window: int = 0) -> Preprocess:
        """Mean and spread of the training pictures, measured at the input size."""
        x = images[: min(len(images), 256)].astype(np.float32) / 255.0
        spread = float(max(x.std(), 1e-3))
        return Preprocess(height, width, float(x.mean()), spread, detail_window)


def _area_resized(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """OpenCV's INTER_AREA on (N, 1, H, W) float frames, before its rounding: a block
    mean where the sizes divide, else each output pixel the mean of the frame pixels
    its cell covers, weighted by the part covered (two small matrix products). Not for
    an enlargement (``on_device`` does that one on the host, as ``resize``)."""
    h, w = frames.shape[2:]
    if (h, w) == (height, width):
        return frames
    if h % height == 0 and w % width == 0:
        return F.avg_pool2d(frames, (h // height, w // width))
    rows = _area_weights(h, height, frames.device)
    cols = _area_weights(w, width, frames.device)
    return rows @ frames @ cols.T


def _area_weights(size: int, out: int, device: torch.device) -> torch.Tensor:
    """(out, size): output cell i covers [i·s, (i+1)·s) of the input, s = size / out;
    each input pixel weighs the part of it inside, over s."""
    s = size / out
    start = torch.arange(out, dtype=torch.float64)[:, None] * s
    k = torch.arange(size, dtype=torch.float64)[None]
    covered = (torch.minimum(k + 1, start + s) - torch.maximum(k, start)).clamp(min=0)
    return (covered / s).float().to(device)


def _fine_detail_on_device(frames: torch.Tensor, height: int, width: int, window: int):
    """``fine_detail`` on (N, 1, H, W) float frames of whole grey levels, on their device:
    the window's mean with OpenCV's BORDER_REFLECT (the edge pixel repeated), rounded
    half up (an odd window's mean, the recipes' 15, never falls on a half; an even
    one's can, and OpenCV then rounds it either way); the most and least over each cell
    from the pixel at its corner, a cell's pixels past the frame's edge left out, as
    OpenCV's dilate and erode leave them."""
    h, w = frames.shape[2:]
    r = window // 2

    def reflected(n: int) -> torch.Tensor:  # BORDER_REFLECT: fedcba|abcdefgh|hgfedcb
        i = torch.arange(-r, n + window - 1 - r, device=frames.device)
        i = torch.where(i < 0, -i - 1, i)
        return torch.where(i >= n, 2 * n - 1 - i, i).remainder(n)

    padded = frames[:, :, reflected(h)][:, :, :, reflected(w)]
    local = frames - torch.floor(F.avg_pool2d(padded, window, stride=1) + 0.5)
    ch, cw = -(-h // height), -(-w // width)  # cells rounded up, as ``fine_detail``'s
    # INTER_NEAREST's picks: output row i reads frame row floor(i · h / height)
    pick_rows = (torch.arange(height, device=frames.device) * h) // height
    pick_cols = (torch.arange(width, device=frames.device) * w) // width
    out = []
    for sign in (1.0, -1.0):  # the most above, then the least (the most below, negated)
        edged = F.pad(sign * local, (0, cw - 1, 0, ch - 1), value=float("-inf"))
        most = F.max_pool2d(edged, (ch, cw), stride=1)
        out.append(most[:, 0][:, pick_rows][:, :, pick_cols])
    return torch.stack(out, dim=1)
