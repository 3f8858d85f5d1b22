"""Frames as the MES sends them: JPEG or PNG bytes → a grey uint8 array, or an ApiError
that names what is wrong with the bytes (empty, not an image, truncated, too large)."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, JpegImagePlugin, PngImagePlugin

from serving.errors import ApiError

MEDIA_TYPES = {"image/jpeg": "JPEG", "image/png": "PNG"}
# By signature, not through Image.open: ultralytics replaces Image.open in every process
# that imports it (and its replacement tries to import a HEIF plugin on unknown bytes).
_OPENERS = {
    b"\xff\xd8\xff": JpegImagePlugin.JpegImageFile,
    b"\x89PNG\r\n\x1a\n": PngImagePlugin.PngImageFile,
}
# Some clients label any upload this way; the bytes decide then.
GENERIC_TYPES = {"application/octet-stream"}


@dataclass(frozen=True)
class Limits:
    max_bytes: int
    max_pixels: int


def check_media_type(content_type: str | None, field: str = "body") -> None:
    """415 unless the declared type is JPEG, PNG or a generic byte stream."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media in MEDIA_TYPES or media in GENERIC_TYPES:
        return
    raise ApiError(
        415,
        "unsupported_media_type",
        f"{field} is {media or 'sent without a Content-Type'}: send one frame as image/jpeg "
        "or image/png (raw body), or as a file part of multipart/form-data",
        field,
    )


def decode_frame(data: bytes, limits: Limits, field: str = "body") -> np.ndarray:
    """The grey (H, W) uint8 frame in ``data``; ApiError (4xx) names what is wrong."""
    if not data:
        raise ApiError(
            400, "empty_body", f"{field} is empty: send the frame's JPEG or PNG bytes", field
        )
    if len(data) > limits.max_bytes:
        raise ApiError(
            413,
            "body_too_large",
            f"{field} has {len(data)} bytes, more than the {limits.max_bytes} allowed "
            "(max_image_bytes): send one frame per image",
            field,
        )
    opener = _OPENERS.get(data[:3]) or _OPENERS.get(data[:8])
    if opener is None:
        raise ApiError(
            422,
            "not_an_image",
            f"{field} is not a JPEG or PNG image (its first bytes are {data[:8].hex(' ')})",
            field,
        )
    try:
        image = opener(io.BytesIO(data))
    except (OSError, SyntaxError, ValueError) as error:
        raise ApiError(
            422,
            "undecodable_image",
            f"{field}: the image header cannot be read ({error}): send an unbroken JPEG or PNG",
            field,
        ) from None
    width, height = image.size
    if width * height > limits.max_pixels:
        raise _too_many_pixels(field, (width, height), limits)
    try:
        image.load()
    except (OSError, SyntaxError, ValueError) as error:
        truncated = "truncated" in str(error)
        raise ApiError(
            422,
            "truncated_image" if truncated else "undecodable_image",
            f"{field}: the {image.format} image ({width}x{height}) "
            + (
                "ends before its last pixel: the file is truncated, send it again whole"
                if truncated
                else f"cannot be decoded ({error}): send an unbroken JPEG or PNG"
            ),
            field,
        ) from None
    return _grey(image, field)


def _too_many_pixels(field: str, size: tuple[int, int], limits: Limits) -> ApiError:
    return ApiError(
        413,
        "image_too_large",
        f"{field} has {size[0]}x{size[1]} pixels, more than the {limits.max_pixels} allowed "
        "(max_image_pixels)",
        field,
    )


def _grey(image: Image.Image, field: str) -> np.ndarray:
    if image.mode in ("I;16", "I;16B", "I"):  # 16-bit PNG: keep the top 8 bits
        return (np.asarray(image, dtype=np.uint32) >> 8).clip(0, 255).astype(np.uint8)
    if image.mode not in ("L", "RGB", "RGBA", "P", "LA", "1", "CMYK", "YCbCr"):
        raise ApiError(
            415,
            "unsupported_pixel_format",
            f"{field}: pixel mode {image.mode} is not supported",
            field,
        )
    return np.asarray(image.convert("L"), dtype=np.uint8)
