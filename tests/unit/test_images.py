"""Image checks: whole JPEG/PNG files pass with their size; broken ones say what is wrong."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from core.images import ImageError, image_info
from models.decoding import decode_jpegs


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


def test_jpeg_frames_decode_together_as_opencv_decodes_them_one_by_one() -> None:
    """A batch of JPEG frames decoded where they are used (here the CPU, torchvision's
    libjpeg; nvJPEG on a GPU) are OpenCV's grey frames; a truncated one, or frames of
    two sizes, fail the batch with ImageError."""
    import torch

    rng = np.random.default_rng(0)
    frames = [rng.normal(100, 20, (64, 320)).clip(0, 255).astype(np.uint8) for _ in range(3)]
    jpegs = [cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes() for f in frames]
    decoded = decode_jpegs(jpegs, torch.device("cpu"))
    by_opencv = [cv2.imdecode(np.frombuffer(j, np.uint8), cv2.IMREAD_GRAYSCALE) for j in jpegs]
    assert decoded.dtype == torch.uint8 and np.array_equal(decoded.numpy(), np.stack(by_opencv))
    with pytest.raises(ImageError, match="3 JPEG frames did not decode together"):
        decode_jpegs([*jpegs[:2], jpegs[2][:2000]], torch.device("cpu"))
    other = cv2.imencode(".jpg", frames[0][:, :160])[1].tobytes()
    with pytest.raises(ImageError):
        decode_jpegs([jpegs[0], other], torch.device("cpu"))


def test_a_grey_video_is_read_as_grey_and_a_colour_one_as_before(tmp_path: Path) -> None:
    """``open_video``: a grey FFV1 stream (the twin's) comes as (H, W) frames equal to the
    channel the readers took from OpenCV's BGR, from the start and after a seek; a colour
    stream still comes as BGR."""
    from core.images import open_video

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (6, 64, 320), dtype=np.uint8)
    grey = cv2.VideoWriter(
        str(tmp_path / "g.mkv"), cv2.VideoWriter_fourcc(*"FFV1"), 10, (320, 64), False
    )
    for frame in frames:
        grey.write(frame)
    grey.release()
    for start in (0, 3):
        capture = open_video(tmp_path / "g.mkv")
        capture.set(cv2.CAP_PROP_POS_FRAMES, start)
        read = [capture.read()[1] for _ in range(start, 6)]
        capture.release()
        assert all(f.shape == (64, 320) for f in read)
        assert np.array_equal(np.stack(read), frames[start:])  # FFV1 is lossless
    colour = cv2.VideoWriter(
        str(tmp_path / "c.mkv"), cv2.VideoWriter_fourcc(*"FFV1"), 10, (320, 64)
    )
    colour.write(np.dstack([frames[0]] * 3))
    colour.release()
    capture = open_video(tmp_path / "c.mkv")
    assert capture.read()[1].shape == (64, 320, 3)
    capture.release()
