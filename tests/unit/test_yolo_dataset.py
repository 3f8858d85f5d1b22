"""The marking detector's training folder: pictures of one camera stacked into about
squares at the detector's input size hold the same pictures and boxes as the single
ones."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from tasks.identity import find_pairs, write_yolo_dataset
from twin.config import TwinConfig
from twin.recorder import simulate

ALL = 100_000  # a picture budget no recording here reaches: every picture is written


def _pictures(folder: Path, part: str) -> dict[str, np.ndarray]:
    return {
        p.stem: cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
        for p in (folder / "images" / part).glob("*.png")
    }


def _labels(folder: Path, part: str) -> dict[str, np.ndarray]:
    return {
        p.stem: np.array([line.split()[1:] for line in p.read_text().splitlines()], float).reshape(
            -1, 4
        )
        for p in (folder / "labels" / part).glob("*.txt")
    }


@pytest.fixture(scope="module")
def twin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("twin")
    simulate(TwinConfig(), n_sheets=8, seed=3, out=out)
    return out


def test_stacked_training_pictures_are_the_single_ones_resized_with_their_boxes(
    twin: Path, tmp_path: Path
) -> None:
    pairs = find_pairs(twin)
    single = write_yolo_dataset(pairs, tmp_path / "single", ALL)
    stacked = write_yolo_dataset(pairs, tmp_path / "stacked", ALL, stacked_at=416)

    # validation and holdout are as the detector meets them: single, full size
    assert (
        _pictures(tmp_path / "single", "validation").keys()
        == _pictures(tmp_path / "stacked", "validation").keys()
    )
    assert stacked.holdout.names == single.holdout.names

    alone, together = (
        _pictures(tmp_path / "single", "train"),
        _pictures(tmp_path / "stacked", "train"),
    )
    boxes_alone, boxes_together = (
        _labels(tmp_path / "single", "train"),
        _labels(tmp_path / "stacked", "train"),
    )
    per_stack = {"station": 2, "inspection": 6}  # 640x320 pictures, 1600x256 frames
    expected = 0
    for camera, n in per_stack.items():
        names = sorted(name for name in alone if f"-{camera}-" in name)  # archive order
        assert names, f"the recording has no {camera} pictures in training"
        for start in range(0, len(names), n):
            stack = names[start : start + n]
            expected += 1
            picture = together[stack[0]]  # named after its first picture
            assert max(picture.shape) == 416
            full = np.concatenate([alone[name] for name in stack])
            h, w = full.shape
            r = 416 / max(h, w)
            size = (min(math.ceil(w * r), 416), min(math.ceil(h * r), 416))
            assert np.array_equal(picture, cv2.resize(full, size, interpolation=cv2.INTER_LINEAR))
            # each box moved down with its picture, as a fraction of the stack
            moved = []
            for k, name in enumerate(stack):
                b = boxes_alone[name].copy()
                rows = alone[name].shape[0]
                b[:, 1] = (k * rows + b[:, 1] * rows) / h
                b[:, 3] = b[:, 3] * rows / h
                moved.append(b)
            assert np.allclose(boxes_together[stack[0]], np.concatenate(moved), atol=2e-6)
    assert len(together) == expected == stacked.counts["train"]
    assert (
        sum(len(b) for b in boxes_together.values())
        == sum(len(b) for b in boxes_alone.values())
        > 0
    )


def test_the_picture_budget_counts_stacks(twin: Path, tmp_path: Path) -> None:
    pairs = find_pairs(twin)
    single = write_yolo_dataset(pairs, tmp_path / "single", 10)
    stacked = write_yolo_dataset(pairs, tmp_path / "stacked", 10, stacked_at=416)
    assert single.counts["train"] == 8  # 0.8 of the budget
    assert stacked.counts["train"] <= 8
    # every stack but each camera's last is full: more pictures reach training
    markings = sum(len(b) for b in _labels(tmp_path / "stacked", "train").values())
    assert markings > sum(len(b) for b in _labels(tmp_path / "single", "train").values())


def test_the_largest_marking_of_each_picture_size_is_recorded_from_training_and_validation(
    twin: Path, tmp_path: Path
) -> None:
    single = write_yolo_dataset(find_pairs(twin), tmp_path / "single", ALL)
    seen: dict[str, list[float]] = {}
    for part in ("train", "validation"):
        pictures, labels = _pictures(tmp_path / "single", part), _labels(tmp_path / "single", part)
        for name, boxes in labels.items():
            if len(boxes):
                h, w = pictures[name].shape
                wh = seen.setdefault(f"{h}x{w}", [0.0, 0.0])
                wh[:] = max(wh[0], (boxes[:, 2] * w).max()), max(wh[1], (boxes[:, 3] * h).max())
    # both cameras: the line's frames and the station's pictures, each at its own size
    assert set(single.largest) == set(seen) == {"256x1600", "320x640"}
    for size, (w, h) in single.largest.items():
        assert (w, h) == pytest.approx(seen[size], abs=0.01)
    # stacked, the pictures' own boxes count, at the size the detector meets them
    stacked = write_yolo_dataset(find_pairs(twin), tmp_path / "stacked", ALL, stacked_at=416)
    assert stacked.largest == single.largest
