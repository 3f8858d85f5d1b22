"""A video's range read by several readers at once (``tasks.archives.decode_frames_apart``),
as a GPU worker reads it: the frames of one reader, in order, and a bad frame named
where it is."""

from __future__ import annotations

import threading
import time

import cv2
import numpy as np
import pytest
import torch

from tasks.archives import FrameError, decode_frames, decode_frames_apart
from tasks.inspection import video_readers


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, np.ndarray]:
    frames = np.random.default_rng(0).integers(0, 256, (23, 48, 160), dtype=np.uint8)
    path = tmp_path_factory.mktemp("video") / "v.mkv"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"FFV1"), 10, (160, 48), False)
    for frame in frames:
        writer.write(frame)
    writer.release()
    return str(path), frames


def _ids(start: int, stop: int) -> list[str]:
    return [f"frame_{n:06d}" for n in range(start, stop)]


def _readers_alive() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("read_")]


@pytest.mark.parametrize("readers", [1, 2, 5, 40])
def test_several_readers_give_one_readers_frames_in_order(video, readers: int) -> None:
    path, frames = video
    for start in (0, 6):
        ids = _ids(start, 23)
        one = np.stack(list(decode_frames(path, None, start, ids)))
        apart = np.stack(list(decode_frames_apart(path, start, ids, readers)))
        assert np.array_equal(apart, one) and np.array_equal(apart, frames[start:])


def test_a_frame_past_the_video_is_named_after_every_frame_before_it(video) -> None:
    """The index lists 30 frames, the video holds 23: every reader past the end fails,
    and the first failure in the range's order comes after the 23 frames."""
    path, frames = video
    got = []
    with pytest.raises(FrameError) as failed:
        for frame in decode_frames_apart(path, 0, _ids(0, 30), 4):
            got.append(frame)
    assert failed.value.position == 23 and failed.value.frame_id == "frame_000023"
    assert np.array_equal(np.stack(got), frames)
    deadline = time.monotonic() + 5
    while _readers_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _readers_alive()


def test_readers_stop_when_the_frames_are_no_longer_wanted(video) -> None:
    path, frames = video
    read = decode_frames_apart(path, 0, _ids(0, 23), 3)
    assert np.array_equal(next(read), frames[0])
    read.close()  # a worker's range cancelled: its readers end, none is left waiting
    deadline = time.monotonic() + 5
    while _readers_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _readers_alive()


def test_a_gpu_worker_reads_with_a_reader_per_core_and_a_cpu_worker_with_one() -> None:
    from models.devices import cpu_threads

    assert video_readers(0, torch.device("cpu")) == 1
    assert video_readers(0, torch.device("cuda")) == cpu_threads()
    assert video_readers(3, torch.device("cpu")) == 3
