"""Image checks: whole JPEG/PNG files pass with their size; broken ones say what is wrong."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from core.images import ImageError, image_info


def test_real_severstal_frame_reads_with_its_size(shared_data: Path) -> None:
    path = next((shared_data / "severstal-sample" / "train_images").iterdir())
    info = image_info(path.read_bytes())
    assert (info.width, info.height) == (1600, 256)
    assert info.channels in (1, 3)


def test_png_and_grey_images() -> None:
    ok, png = cv2.imencode(".png", np.zeros((7, 5), np.uint8))
    assert ok
    info = image_info(png.tobytes())
    assert (info.width, info.height, info.channels) == (5, 7, 1)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda jpeg, png: b"", "empty"),
        (lambda jpeg, png: jpeg[: len(jpeg) // 2], "JPEG is truncated"),
        (lambda jpeg, png: png[: len(png) - 20], "PNG is truncated"),
        (lambda jpeg, png: b"GIF89a" + jpeg[6:], "not a JPEG or PNG"),
        (lambda jpeg, png: jpeg[:20] + b"\x00" * 400 + b"\xff\xd9", "corrupt"),
    ],
)
def test_broken_images_raise(make, message: str) -> None:
    image = np.random.default_rng(0).integers(0, 255, (32, 48), np.uint8)
    jpeg = cv2.imencode(".jpg", image)[1].tobytes()
    png = cv2.imencode(".png", image)[1].tobytes()
    with pytest.raises(ImageError, match=message):
        image_info(make(jpeg, png))
