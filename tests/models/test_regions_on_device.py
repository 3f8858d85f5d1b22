"""Defect regions cut where the network ran (``models.segmentation.regions``), as a GPU
worker cuts them: run here in torch on the CPU and held to the host's OpenCV path."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from core.postprocess import Thresholds, by_contrast, contrast_offsets
from models.segmentation import regions
from tests.models.test_segmentation_model import lined_frames, small_segmenter


def _masks(rng: np.random.Generator, n: int, shape: tuple[int, int]) -> np.ndarray:
    """Masks of rectangles, lines and specks, some on the frame's edges."""
    h, w = shape
    out = np.zeros((n, h, w), bool)
    for mask in out:
        for _ in range(int(rng.integers(0, 7))):
            y, x = int(rng.integers(0, h)), int(rng.integers(0, w))
            mask[y : y + rng.integers(1, 14), x : x + rng.integers(1, 30)] = True
        mask |= rng.random(shape) < 0.01
    out[1, 0, :] = out[1, :, -1] = True  # the top and right edges
    out[2, :, 5] = True  # one column top to bottom: a run through the column's end
    return out


def test_components_are_opencvs_in_opencvs_order() -> None:
    """The device's labelling splits masks as OpenCV's 8-connected labelling does, and
    its regions sort into OpenCV's numbering by the first 2x2 block they reach; a stack
    is labelled as its masks one by one."""
    rng = np.random.default_rng(0)
    masks = _masks(rng, 24, (45, 71))  # odd sizes: blocks cut by the edge
    labels = regions.components(torch.from_numpy(masks)).numpy()
    several = 0
    for n, mask in enumerate(masks):
        count, theirs = cv2.connectedComponents(mask.view(np.uint8), connectivity=8)
        ours = labels[n]
        assert np.array_equal(ours > 0, mask)
        pairs = set(zip(theirs[mask].tolist(), ours[mask].tolist(), strict=True))
        assert len(pairs) == count - 1 == len({b for _, b in pairs})  # one to one
        ys, xs = np.nonzero(mask)
        block = (ys // 2) * ((mask.shape[1] + 1) // 2) + xs // 2
        first = {b: block[ours[mask] == b].min() for _, b in pairs}
        by_block = sorted(first, key=first.get)
        assert [dict((b, a) for a, b in pairs)[b] for b in by_block] == list(range(1, count))
        # each label names its region's first pixel, counted over the stack
        assert all(int(b) - 1 == n * mask.size + int(np.flatnonzero(ours == b)[0]) for b in first)
        several += count > 2
    assert several > 10
    snake = np.zeros((1, 40, 40), bool)  # a long winding region settles into one label
    snake[0, ::4, :] = True
    snake[0, :, 0] = snake[0, :, -1] = True
    assert len(np.unique(regions.components(torch.from_numpy(snake)).numpy())) == 2


def test_contrast_offsets_and_the_cut_are_the_hosts() -> None:
    """Medians of the 31x31 squares, the frame's edge repeated, equal OpenCV's
    ``medianBlur`` at every pixel; the cut equals ``core.postprocess.by_contrast``."""
    rng = np.random.default_rng(1)
    frame = rng.integers(0, 256, (50, 90), dtype=np.uint8)
    at = tuple(torch.from_numpy(v.ravel()) for v in np.mgrid[0:2, 0:50, 0:90])
    twice = torch.from_numpy(np.stack([frame, frame[::-1].copy()]))
    offsets = regions.median_offsets(twice, at).numpy().reshape(2, 50, 90)
    assert np.array_equal(offsets[0], contrast_offsets(frame))
    assert np.array_equal(offsets[1], contrast_offsets(frame[::-1].copy()))
    frames = (100 + rng.normal(0, 4, (6, 96, 160))).astype(np.uint8)
    frames[:, 10:80, 30:33] = 40  # dark and bright lines, one on the frame's edge
    frames[:, 5:60, 120:122] = 170
    frames[:, 0:3, 60:150] = 60
    masks = _masks(rng, 6, (96, 160))
    masks[:, 20:70, 27:37] = True  # wide bands over the lines
    masks[:, 10:50, 116:126] = True
    cut_any = False
    for contrast, reach in ((12, 3), (25, 6), (12, 0), (0, 3)):  # the six masks at once
        ours = regions.by_contrast(
            torch.from_numpy(frames), torch.from_numpy(masks), contrast, reach
        )
        for n, (frame, mask) in enumerate(zip(frames, masks, strict=True)):
            theirs = by_contrast(frame, mask, contrast, reach)
            assert np.array_equal(ours[n].numpy(), theirs), (n, contrast, reach)
            cut_any |= bool(theirs.sum() < mask.sum())
    assert cut_any
    empty = torch.zeros(1, 96, 160, dtype=torch.bool)
    assert not regions.by_contrast(torch.from_numpy(frames[:1]), empty, 12, 3).any()


@pytest.mark.parametrize("held", ["host", "tensor"])
def test_a_segmenter_cuts_the_same_regions_on_the_device_as_on_the_host(held: str) -> None:
    """``predict`` with its regions cut in torch (a GPU worker's path, run here on the
    CPU) gives the regions the host's OpenCV path gives, in the same order, with the
    same masks and scores within float rounding: pixel thresholds, a class with a
    contrast cut, minimum areas, frames from the host or held as a tensor."""
    segmenter = small_segmenter(seed=3)
    frames, pixel = lined_frames(segmenter, 5)
    segmenter.thresholds = Thresholds((0.0,) * 4, pixel, (0, 16, 0, 8), (0, 15, 0, 0), (0, 3, 0, 0))
    given = frames if held == "host" else torch.from_numpy(frames)
    on_host = segmenter.predict(given, batch_size=2, regions=True)
    segmenter.regions_on_device = True
    on_device = segmenter.predict(given, batch_size=2, regions=True)
    assert len(on_host.defects) > 10 and {d.class_index for d in on_host.defects} == {0, 1, 2, 3}

    def without_score(defects):
        return [(d.frame, d.class_index, d.rle, d.area, d.bbox) for d in defects]

    assert without_score(on_device.defects) == without_score(on_host.defects)
    assert np.allclose(
        [d.score for d in on_device.defects], [d.score for d in on_host.defects], rtol=1e-6
    )
    assert sorted(on_device.shown) == sorted(on_host.shown)
    assert np.array_equal(on_device.masks, on_host.masks)
    assert all(np.array_equal(on_device.frame_masks(n), on_host.masks[n]) for n in range(5))
    assert np.allclose(on_device.scores, on_host.scores, rtol=1e-6)
    assert np.array_equal(on_device.gate, on_host.gate)
    # the plain path (no regions: evaluation, calibration) stays on the host either way
    assert np.array_equal(segmenter.predict(given, batch_size=2).masks, on_host.masks)


def test_nothing_above_the_thresholds_cuts_no_region() -> None:
    """Masks with no pixel at their threshold, or none of the minimum area, give no
    region, no runs and zero areas."""
    t = Thresholds((0.0,) * 2, (0.5, 0.5), (0, 50))
    p = torch.zeros(3, 20, 30)
    p[2, 4:8, 4:8] = 0.9  # class 1: 16 pixels, under its minimum area of 50
    cut = regions.cut(p, [0, 0, 1], t, [None] * 3)
    assert cut.regions == [] and cut.runs == {} and not cut.areas.any()
    assert regions.cut(p[:0], [], t, []).regions == []


def test_a_device_that_cannot_cut_the_regions_leaves_them_to_the_host(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The cut on the device has not run on every GPU: where it fails, from that batch on
    the regions are cut on the host, said once in the log, and the call's regions and
    masks (some from the device's runs, some from the host) are the host's."""
    from models.segmentation import segmenter as module

    segmenter = small_segmenter(seed=3)
    frames, pixel = lined_frames(segmenter, 5)
    segmenter.thresholds = Thresholds((0.0,) * 4, pixel, (0, 16, 0, 8), (0, 15, 0, 0), (0, 3, 0, 0))
    on_host = segmenter.predict(frames, batch_size=2, regions=True)
    calls = []

    def failing_second(*args):
        calls.append(len(calls))
        if len(calls) == 2:
            raise RuntimeError("no kernel for this dtype on this device")
        return regions.cut(*args)

    monkeypatch.setattr(module, "regions_cut", failing_second)
    segmenter.regions_on_device = True
    with caplog.at_level("WARNING", logger=module.__name__):
        mixed = segmenter.predict(frames, batch_size=2, regions=True)
    assert calls == [0, 1] and not segmenter.regions_on_device
    assert [r.message for r in caplog.records].count(
        "defect regions cut on the host from now on: cutting them on cpu failed "
        "(no kernel for this dtype on this device)"
    ) == 1
    assert [(d.frame, d.class_index, d.rle) for d in mixed.defects] == [
        (d.frame, d.class_index, d.rle) for d in on_host.defects
    ]
    assert sorted(mixed.shown) == sorted(on_host.shown)
    assert np.array_equal(mixed.masks, on_host.masks)
