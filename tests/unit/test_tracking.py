"""Sheet tracking from frames, against the twin's ground truth of where each sheet lies."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from core.tracking import EDGE_BLOCK, frame_profile, track_sheets
from tasks.archives import read_frames
from twin.config import TwinConfig
from twin.recorder import simulate


def _truth(archive: Path, numbers: dict[str, int], height: int) -> list[tuple[int, int, int, int]]:
    """(first line, last line, x_min, x_max) of every sheet, in order."""
    spans: dict[str, list[int]] = {}
    with (archive / "ground_truth" / "sheets.csv").open(newline="") as f:
        for r in csv.DictReader(f):
            line = numbers[r["frame_id"]] * height
            s = spans.setdefault(r["sheet_id"], [10**12, -1, int(r["x_min"]), int(r["x_max"])])
            s[0] = min(s[0], line + int(r["first_row"]))
            s[1] = max(s[1], line + int(r["last_row"]))
    return sorted(tuple(s) for s in spans.values())


def _track(archive: Path, height: int):
    with (archive / "frame_index.csv").open(newline="") as f:
        numbers = {r["frame_id"]: int(r["frame_number"]) for r in csv.DictReader(f)}
    lines, contrast, edges = [], [], []
    for frame_id, frame in read_frames(archive):
        c, e = frame_profile(frame)
        lines.append(numbers[frame_id] * height)
        contrast.append(c)
        edges.append(e)
    sheets = track_sheets(np.array(lines), np.stack(contrast), np.stack(edges), 500, 50)
    return sheets, _truth(archive, numbers, height)


def _check(sheet, truth) -> None:
    first, last, x_min, x_max = truth
    assert abs(sheet.first_line - first) < EDGE_BLOCK
    assert abs(sheet.last_line - last) < EDGE_BLOCK
    assert abs(sheet.x_min - x_min) <= 2 and abs(sheet.x_max - x_max) <= 2


def test_tracked_sheets_are_the_twins_sheets(tmp_path: Path) -> None:
    config = TwinConfig(distortion=1.0)
    recording = simulate(config, 8, seed=31, out=tmp_path)
    sheets, truth = _track(recording.inspection, config.frame_height)
    assert len(sheets) == len(truth) == 8
    for sheet, one in zip(sheets, truth, strict=True):
        _check(sheet, one)
        assert sheet.complete
    assert [s.index for s in sheets] == list(range(8))


def test_dropped_frames_end_a_sheet_instead_of_joining_two(tmp_path: Path) -> None:
    config = TwinConfig(faults=("dropped-frames",), distortion=1.0)
    recording = simulate(config, 8, seed=31, out=tmp_path)
    sheets, truth = _track(recording.inspection, config.frame_height)
    complete = [s for s in sheets if s.complete]
    cut = [s for s in sheets if not s.complete]
    assert cut, "the dropped frames should cut at least one sheet"
    # every sheet seen whole is found whole, exactly; no tracked sheet spans two
    whole = [t for t in truth if any(abs(s.first_line - t[0]) < EDGE_BLOCK for s in complete)]
    assert len(whole) == len(complete) >= 5
    for sheet, one in zip(complete, whole, strict=True):
        _check(sheet, one)
    for sheet in sheets:
        inside = [t for t in truth if t[0] - EDGE_BLOCK <= sheet.first_line <= t[1]]
        assert len(inside) == 1 and sheet.last_line <= inside[0][1] + EDGE_BLOCK


def test_an_empty_table_has_no_sheets_and_a_short_bright_run_is_not_one() -> None:
    frame = np.full((256, 400), 20, np.uint8)
    c, e = frame_profile(frame)
    assert (c < 8).all()
    steel = frame.copy()
    steel[:, 50:350] = 110
    c2, e2 = frame_profile(steel)
    assert (c2 > 50).all() and (abs(e2[:, 0] - 50) <= 1).all() and (abs(e2[:, 1] - 349) <= 1).all()
    lines = np.arange(6) * 256
    contrast = np.stack([c, c2, c, c, c2, c2])  # one frame of steel is shorter than 500 lines
    edges = np.stack([e, e2, e, e, e2, e2])
    sheets = track_sheets(lines, contrast, edges, min_length=500, min_gap=50)
    assert [(s.first_line, s.last_line, s.complete) for s in sheets] == [(1024, 1535, False)]
