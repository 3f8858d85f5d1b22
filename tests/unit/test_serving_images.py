"""Frames as the MES sends them: every kind of bad bytes gets its own 4xx and a message
that names the part of the request; good JPEG and PNG decode to the same grey frame."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from serving.errors import ApiError
from serving.images import Limits, check_media_type, decode_frame

LIMITS = Limits(max_bytes=2_000_000, max_pixels=1600 * 256)


@pytest.fixture(scope="module")
def frame() -> np.ndarray:
    rng = np.random.default_rng(0)
    return cv2.GaussianBlur((rng.random((256, 1600)) * 255).astype(np.uint8), (9, 9), 3)


def _encoded(image: np.ndarray, ext: str) -> bytes:
    ok, data = cv2.imencode(ext, image)
    assert ok
    return data.tobytes()


def _refused(data: bytes, limits: Limits = LIMITS, field: str = "body") -> ApiError:
    with pytest.raises(ApiError) as caught:
        decode_frame(data, limits, field)
    assert field in caught.value.message
    return caught.value


def test_png_is_lossless_and_jpeg_close(frame: np.ndarray) -> None:
    assert np.array_equal(decode_frame(_encoded(frame, ".png"), LIMITS), frame)
    jpeg = decode_frame(_encoded(frame, ".jpg"), LIMITS)
    assert jpeg.shape == frame.shape and jpeg.dtype == np.uint8
    assert np.abs(jpeg.astype(int) - frame).mean() < 3


def test_colour_and_16_bit_pictures_become_grey(frame: np.ndarray) -> None:
    colour = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    assert np.array_equal(decode_frame(_encoded(colour, ".png"), LIMITS), frame)
    deep = frame.astype(np.uint16) * 257
    assert np.array_equal(decode_frame(_encoded(deep, ".png"), LIMITS), frame)


@pytest.mark.parametrize("ext", [".jpg", ".png"])
@pytest.mark.parametrize("keep", [0.97, 0.5, 0.05])
def test_a_truncated_image_is_refused_as_truncated(frame, ext: str, keep: float) -> None:
    data = _encoded(frame, ext)
    error = _refused(data[: int(len(data) * keep)], field="file part frame (f.jpg)")
    assert (error.status, error.code) == (422, "truncated_image")


def test_empty_not_an_image_and_too_large_are_told_apart(frame: np.ndarray) -> None:
    assert (_refused(b"").status, _refused(b"").code) == (400, "empty_body")
    error = _refused(b"%PDF-1.7 not a frame")
    assert (error.status, error.code) == (422, "not_an_image")
    assert "25 50 44 46" in error.message  # the bytes it starts with
    big = _encoded(np.zeros((600, 1600), np.uint8), ".png")
    error = _refused(big)
    assert (error.status, error.code) == (413, "image_too_large") and "1600x600" in error.message
    error = _refused(_encoded(frame, ".png"), Limits(max_bytes=4096, max_pixels=10**9))
    assert (error.status, error.code) == (413, "body_too_large")
    # a broken header after a valid signature
    error = _refused(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    assert error.status == 422


@pytest.mark.parametrize("media", ["image/jpeg", "image/png; q=1", "application/octet-stream"])
def test_image_media_types_pass(media: str) -> None:
    check_media_type(media)


@pytest.mark.parametrize("media", [None, "", "text/plain", "application/json", "image/gif"])
def test_other_media_types_are_415(media: str | None) -> None:
    with pytest.raises(ApiError) as caught:
        check_media_type(media)
    assert caught.value.status == 415 and "image/jpeg" in caught.value.message
