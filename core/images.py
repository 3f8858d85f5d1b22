"""Checking that bytes are a whole, decodable image, and reading its size; opening videos."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

_JPEG = b"\xff\xd8\xff"
_PNG = b"\x89PNG\r\n\x1a\n"


class ImageError(ValueError):
    """Bytes that are not a whole image; the message says what is wrong."""


@dataclass(frozen=True)
class ImageInfo:
    width: int
    height: int
    channels: int


def image_info(data: bytes) -> ImageInfo:
    """Size and channels of a JPEG or PNG, after checking it is complete and decodes.

    A truncated JPEG decodes in OpenCV with only a warning (the missing part comes out
    grey), so completeness is checked from the end-of-image marker first.
    """
    if not data:
        raise ImageError("the file is empty: copy it again from the recorder")
    if data.startswith(_JPEG):
        if not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
            raise ImageError("the JPEG is truncated (no end-of-image marker): copy it again")
    elif data.startswith(_PNG):
        if b"IEND" not in data[-16:]:
            raise ImageError("the PNG is truncated (no IEND chunk): copy it again")
    else:
        raise ImageError(f"not a JPEG or PNG image (starts with {data[:8]!r})")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ImageError("the image data is corrupt and does not decode")
    channels = 1 if image.ndim == 2 else int(image.shape[2])
    return ImageInfo(width=int(image.shape[1]), height=int(image.shape[0]), channels=channels)


GREY_STREAMS = (b"Y800", b"GREY")  # FFmpeg's 8-bit grey pixel formats, as OpenCV names them


def open_video(path: str | Path, threads: int | None = None) -> cv2.VideoCapture:
    """OpenCV's capture of a video file. A grey stream's frames come as they are stored,
    (H, W) uint8, without OpenCV's conversion to BGR (three equal channels, of which
    the readers kept one): the twin's FFV1 then decodes about 9 % faster on one core
    (docs/benchmarks.md, "Grey video read as grey"). Other streams come as BGR, as
    before. ``threads``: the decoder's threads (None: FFmpeg's choice, by the cores)."""
    params = [] if threads is None else [cv2.CAP_PROP_N_THREADS, threads]
    capture = cv2.VideoCapture(str(path), cv2.CAP_ANY, params)
    pixels = int(capture.get(cv2.CAP_PROP_CODEC_PIXEL_FORMAT)) & 0xFFFFFFFF
    if pixels.to_bytes(4, "little") in GREY_STREAMS:
        capture.set(cv2.CAP_PROP_CONVERT_RGB, 0)
    return capture
