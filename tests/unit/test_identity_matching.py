"""Detection metrics and open-set matching, on cases worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from core.metrics import box_iou, detection_report, match_detections
from models.identity.matching import (
    UNKNOWN,
    Matches,
    ReferenceIndex,
    choose_threshold,
    identification_report,
    pair_scores,
)


def test_box_iou_of_inclusive_pixel_boxes():
    a = np.array([[0, 0, 9, 9]])
    b = np.array([[0, 0, 9, 9], [5, 0, 14, 9], [20, 20, 29, 29]])
    assert box_iou(a, b)[0].tolist() == pytest.approx([1.0, 50 / 150, 0.0])


def test_ap50_by_hand():
    truth = [np.array([[0, 0, 9, 9]]), np.array([[20, 20, 29, 29]]), np.zeros((0, 4))]
    predicted = [
        np.array([[0, 0, 9, 9, 0.9]]),
        np.array([[50, 50, 59, 59, 0.95], [21, 20, 29, 29, 0.5]]),
        np.array([[1, 1, 5, 5, 0.3]]),
    ]
    # ranked: FP (.95), TP (.9), TP (.5), FP (.3): precision after each 0, 1/2, 2/3, 2/4;
    # interpolated precision is 2/3 over the whole recall range [0, 1]
    report = detection_report(predicted, truth)
    assert report["map50"] == pytest.approx(2 / 3)
    assert report["precision"] == pytest.approx(0.5)
    assert report["recall"] == pytest.approx(1.0)


def test_a_detection_of_an_ignored_box_is_neither_right_nor_wrong():
    """The rest of a marking the frame's edge cut, which the truth does not list: a
    detection of it is left out of the figures, and a detection elsewhere is not."""
    truth = [np.array([[0, 0, 9, 9]])]
    predicted = [np.array([[0, 0, 9, 9, 0.9], [40, 90, 79, 99, 0.8], [50, 50, 59, 59, 0.7]])]
    cut = [np.array([[40, 92, 79, 99]])]
    plain = detection_report(predicted, truth)
    spared = detection_report(predicted, truth, ignore=cut)
    assert plain["precision"] == pytest.approx(1 / 3) and "ignored" not in plain
    assert spared["precision"] == pytest.approx(1 / 2)
    assert (spared["ignored"], spared["detections"], spared["recall"]) == (1, 2, 1.0)
    # a box of the truth is never ignored, even where an ignored box lies on it
    assert detection_report(predicted[:1], truth, ignore=[truth[0]])["ignored"] == 0


def test_a_truth_is_matched_once_by_the_best_scoring_box():
    hit, found = match_detections(
        np.array([[0, 0, 9, 9, 0.6], [0, 0, 9, 8, 0.9]]), np.array([[0, 0, 9, 9]])
    )
    assert hit.tolist() == [-1, 0] and found.tolist() == [True]


def _unit(rng, n, d=16):
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_search_agrees_with_brute_force_across_chunks():
    rng = np.random.default_rng(0)
    refs, queries = _unit(rng, 500), _unit(rng, 300)
    index = ReferenceIndex([f"S{i}" for i in range(500)], refs)
    best, score = index.search(queries, chunk=64)
    sims = queries @ refs.T
    assert best.tolist() == sims.argmax(1).tolist()
    assert np.allclose(score, sims.max(1), atol=1e-6)


def test_below_the_threshold_is_unknown():
    refs = np.eye(3, dtype=np.float32)
    index = ReferenceIndex(["A", "B", "C"], refs)
    queries = np.array([[1, 0.1, 0], [0.5, 0.5, 0.5]], dtype=np.float32)
    matches = index.match(queries, threshold=0.9)
    assert matches.sheet_ids == ["A", UNKNOWN]
    assert matches.nearest[0] == "A"
    assert matches.similarity[1] == pytest.approx(1 / math.sqrt(3), abs=1e-6)


def test_an_empty_registry_answers_unknown():
    matches = ReferenceIndex([], np.zeros((0, 4), np.float32)).match(np.ones((2, 4)), 0.5)
    assert matches.sheet_ids == [UNKNOWN, UNKNOWN]


def test_threshold_grows_with_the_registry_and_never_admits_a_seen_impostor():
    rng = np.random.default_rng(1)
    impostor = rng.normal(0.1, 0.1, 5000)
    genuine = rng.normal(0.9, 0.05, 200)
    small = choose_threshold(genuine, impostor, 0.001, 10)
    large = choose_threshold(genuine, impostor, 0.001, 100_000)
    assert small["threshold"] < large["threshold"]
    assert large["threshold"] >= impostor.max()
    outlier = np.append(impostor, 0.97)
    assert choose_threshold(genuine, outlier, 0.001, 10)["threshold"] >= 0.97


def test_pair_scores_split_genuine_from_impostor():
    q = np.array([[1, 0], [0, 1]], np.float32)
    genuine, impostor = pair_scores(q, ["A", "B"], q, ["A", "B"])
    assert genuine.tolist() == [1.0, 1.0] and impostor.tolist() == [0.0, 0.0]


def test_identification_report_counts_each_outcome():
    from models.identity.matching import Matches

    truth = ["A", "B", "C", "X", "Y"]  # X, Y are not registered
    matches = Matches(
        sheet_ids=["A", "C", UNKNOWN, UNKNOWN, "A"],
        nearest=["A", "C", "C", "B", "A"],
        similarity=np.array([0.9, 0.8, 0.4, 0.3, 0.85], np.float32),
    )
    r = identification_report(truth, {"A", "B", "C"}, matches, 0.5)
    assert r["rank1"] == pytest.approx(2 / 3)  # A right, B nearest C wrong, C nearest C right
    assert r["identified"] == pytest.approx(1 / 3)
    assert r["frr"] == pytest.approx(1 / 3)
    assert r["fpir"] == pytest.approx(1 / 2)
    assert r["wrong_ids"] == 2 and r["far"] == pytest.approx(2 / 5)


def test_a_sheet_is_answered_by_its_best_detection_on_it():
    from tasks.identify import best_per_sheet

    # A: two detections on it (0.5, then 0.9): the better answers. B: one detection,
    # unverified (-inf), still B's answer (unknown), not "nothing on the sheet".
    # a detection between sheets (None) answers for no sheet.
    on_sheet = ["A", "A", "B", None, "C"]
    similarity = np.array([0.5, 0.9, -np.inf, 0.99, 0.2], np.float32)
    assert best_per_sheet(on_sheet, similarity) == {"A": 1, "B": 2, "C": 4}


def test_the_margin_is_the_best_score_a_detection_gave_another_sheet():
    """What ``evaluate identity`` reports as the threshold's margin: the best score of a
    candidate that is not the sheet the detection lies on, named or not; a detection
    between sheets could be either's and does not count."""
    from tasks.identify import best_for_another_sheet

    on_sheet = ["A", "A", "B", None, "C"]
    matches = Matches(
        ["A", UNKNOWN, UNKNOWN, "D", UNKNOWN],
        ["A", "D", "E", "D", UNKNOWN],
        np.array([0.9, 0.25, 0.1, 0.95, -np.inf], np.float32),
    )
    assert best_for_another_sheet(on_sheet, matches) == pytest.approx(0.25)
    assert best_for_another_sheet(on_sheet[:1], matches) is None


def test_a_box_is_placed_on_the_sheet_it_lies_on(tmp_path):
    """Where evaluate identity places a detection: the twin's sheet under the box's
    centre, as inspect places it on a tracked sheet, also for a box that reaches above
    its frame (a marking found across the seam) and none for a box between sheets."""
    from tasks.identity import csv_rows, marking_boxes, sheets_at
    from twin.config import TwinConfig
    from twin.recorder import simulate

    recording = simulate(TwinConfig(), 4, seed=5, out=tmp_path).inspection
    height = TwinConfig().frame_height
    order = [r["frame_id"] for r in csv_rows(recording / "frame_index.csv")]
    listed = [(f, m) for f, ms in marking_boxes(recording).items() for m in ms]
    frame_ids = [f for f, _ in listed]
    boxes = [np.array(m["box"], float) for _, m in listed]
    assert sheets_at(recording, frame_ids, boxes) == [m["sheet_id"] for _, m in listed]
    # the same boxes from the frame below, reaching above its top
    lower = [order[order.index(f) + 1] for f in frame_ids]
    raised = [b - [0, height, 0, height] for b in boxes]
    assert sheets_at(recording, lower, raised) == [m["sheet_id"] for _, m in listed]
    # rows above the first sheet's head, in the frame it enters
    first = csv_rows(recording / "ground_truth" / "sheets.csv")[0]
    head = int(first["first_row"])
    assert head >= 2
    assert sheets_at(recording, [first["frame_id"]], [np.array([100, 0, 300, head - 2])]) == [None]
