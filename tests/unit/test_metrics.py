"""Metrics against hand-computed cases, and post-processing on small arrays."""

from __future__ import annotations

import numpy as np
import pytest

from core.metrics import (
    PairCounts,
    best_f1_threshold,
    classification_report,
    kaggle_mean_dice,
    pair_dice,
    segmentation_report,
)
from core.postprocess import (
    Thresholds,
    apply_thresholds,
    by_contrast,
    contrast_offsets,
    remove_small_components,
)


def masks(*pairs: tuple[list[list[int]], list[list[int]]]) -> tuple[np.ndarray, np.ndarray]:
    """(prediction, truth) lists of 2-D masks → arrays (N, 1, H, W)."""
    pred = np.array([p for p, _ in pairs], dtype=bool)[:, None]
    truth = np.array([t for _, t in pairs], dtype=bool)[:, None]
    return pred, truth


EMPTY = [[0, 0], [0, 0]]


def test_empty_prediction_on_empty_truth_scores_one():
    assert kaggle_mean_dice(PairCounts.of(*masks((EMPTY, EMPTY)))) == 1.0


def test_empty_prediction_on_a_defect_scores_zero_and_so_does_a_false_alarm():
    counts = PairCounts.of(*masks((EMPTY, [[1, 0], [0, 0]]), ([[0, 1], [0, 0]], EMPTY)))
    assert pair_dice(counts).ravel().tolist() == [0.0, 0.0]


def test_partial_overlap_is_twice_the_intersection_over_the_sum():
    # prediction 3 pixels, truth 2 pixels, 1 shared: 2 * 1 / (3 + 2) = 0.4
    counts = PairCounts.of(*masks(([[1, 1], [1, 0]], [[1, 0], [0, 1]])))
    assert pair_dice(counts)[0, 0] == pytest.approx(0.4)


def test_mean_is_over_all_image_class_pairs():
    # pairs: 1.0 (empty/empty), 0.4 (partial), 1.0 (identical), 0.0 (missed) -> 0.6
    counts = PairCounts.of(
        *masks(
            (EMPTY, EMPTY),
            ([[1, 1], [1, 0]], [[1, 0], [0, 1]]),
            ([[0, 1], [0, 1]], [[0, 1], [0, 1]]),
            (EMPTY, [[1, 1], [0, 0]]),
        )
    )
    assert kaggle_mean_dice(counts) == pytest.approx(0.6)


def test_segmentation_report_per_class_and_image_level_scores():
    truth = np.zeros((4, 2, 2, 2), bool)
    pred = np.zeros_like(truth)
    truth[0, 0, 0, 0] = pred[0, 0, 0, 0] = True  # class a found
    truth[1, 0, 1, 1] = True  # class a missed
    pred[2, 1, 0, 0] = True  # class b false alarm
    report = segmentation_report(PairCounts.of(pred, truth), {1: "a", 2: "b"})
    a, b = report["per_class"]["a"], report["per_class"]["b"]
    assert (a["precision"], a["recall"], a["dice"]) == (1.0, 0.5, 0.75)
    assert (b["precision"], b["recall"], b["dice"]) == (0.0, 0.0, 0.75)
    assert report["mean_dice"] == pytest.approx(0.75)
    assert report["empty_score"] == pytest.approx(6 / 8)


def test_classification_report_confusion_and_per_class():
    truth = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 1, 1, 1, 2, 0])
    report = classification_report(truth, pred, ["x", "y", "z"])
    assert report["confusion"]["matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert report["accuracy"] == pytest.approx(4 / 6)
    assert report["per_class"]["y"]["precision"] == pytest.approx(2 / 3)
    assert report["per_class"]["z"]["recall"] == pytest.approx(0.5)


def test_best_f1_threshold_separates_when_it_can():
    scores = np.array([0.1, 0.2, 0.35, 0.8, 0.9])
    positive = np.array([0, 0, 0, 1, 1], bool)
    threshold, f1 = best_f1_threshold(scores, positive)
    assert f1 == 1.0 and 0.35 < threshold <= 0.8


def test_best_f1_threshold_without_positives_never_fires():
    scores = np.array([0.2, 0.7])
    threshold, _ = best_f1_threshold(scores, np.zeros(2, bool))
    assert threshold > scores.max()


def test_small_components_are_removed_and_large_ones_kept():
    mask = np.zeros((10, 10), bool)
    mask[0, 0] = True  # 1 pixel
    mask[5:8, 5:8] = True  # 9 pixels
    kept = remove_small_components(mask, 5)
    assert not kept[0, 0] and kept[5:8, 5:8].all() and kept.sum() == 9


def test_gate_drops_a_class_and_area_scales_with_resolution():
    probs = np.zeros((1, 2, 4, 4), np.float32)
    probs[0, :, :2, :2] = 0.9  # a 4-pixel blob in both classes
    gate = np.array([[0.2, 0.9]])
    t = Thresholds(gate=(0.5, 0.5), pixel=(0.5, 0.5), min_area=(0, 16))
    # at quarter resolution (area_scale 4) the 4-pixel blob is 16 full-resolution pixels
    out = apply_thresholds(gate, probs, t, area_scale=4.0)
    assert not out[0, 0].any()  # gated off
    assert out[0, 1].sum() == 4
    assert not apply_thresholds(gate, probs, t, area_scale=1.0)[0, 1].any()


def test_a_coarse_mask_is_cut_to_the_lines_the_frame_shows_on_each_ones_side() -> None:
    """``by_contrast`` keeps, near the mask, the pixels standing off their neighbourhood
    on the side of each region's own pixels: a dark line and a bright one, each under a
    band four times as wide, come back as the lines; a contrast of 0 changes nothing."""
    rng = np.random.default_rng(0)
    frame = (100 + rng.normal(0, 2, (128, 256))).clip(0, 255).astype(np.uint8)
    frame[:, 60:62] = 60  # a dark line two pixels wide
    frame[:, 180:183] = 150  # a bright one, three wide
    frame[:, 120:122] = 60  # a dark line no mask is near
    truth = np.zeros(frame.shape, bool)
    truth[:, 60:62] = truth[:, 180:183] = True
    coarse = np.zeros(frame.shape, bool)
    coarse[:, 56:66] = coarse[:, 176:186] = True
    cut = by_contrast(frame, coarse, 15, 3)
    assert np.array_equal(cut, truth)
    assert np.array_equal(by_contrast(frame, coarse, 15, 3, contrast_offsets(frame)), truth)
    assert by_contrast(frame, coarse, 0, 3) is coarse
    # the reach: a mask over one column of the line and two beside it
    beside = np.zeros(frame.shape, bool)
    beside[:, 61:64] = True
    assert np.array_equal(np.flatnonzero(by_contrast(frame, beside, 15, 0).any(axis=0)), [61])
    assert np.array_equal(np.flatnonzero(by_contrast(frame, beside, 15, 1).any(axis=0)), [60, 61])


def test_thresholds_saved_before_the_contrast_load_without_it() -> None:
    old = {"gate": [0.5, 0.4], "pixel": [0.5, 0.6], "min_area": [0, 32]}
    t = Thresholds.from_dict(old)
    assert t.contrast == (0, 0) and t.reach == (0, 0)
    cut = Thresholds((0.5, 0.4), (0.5, 0.6), (0, 32), (0, 15), (0, 6))
    assert Thresholds.from_dict(cut.to_dict()) == cut
    with pytest.raises(ValueError, match="one value per class"):
        Thresholds((0.5, 0.4), (0.5, 0.6), (0, 32), (15,), (6,))


def test_the_cut_is_the_same_from_the_whole_frames_offsets() -> None:
    """Offsets of the whole frame, worked out once, cut every mask as the mask's own
    part of the frame does, at the frame's edges too."""
    rng = np.random.default_rng(1)
    frame = rng.integers(0, 256, (96, 200), dtype=np.uint8)
    offsets = contrast_offsets(frame)
    for _ in range(20):
        mask = np.zeros(frame.shape, bool)
        top, left = rng.integers(0, 90), rng.integers(0, 190)
        mask[top : top + rng.integers(1, 20), left : left + rng.integers(1, 30)] = True
        for reach in (0, 3, 6):
            own = by_contrast(frame, mask, 20, reach)
            assert np.array_equal(own, by_contrast(frame, mask, 20, reach, offsets))
