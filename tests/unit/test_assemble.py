"""The pure steps of turning workers' results into the frames, defects and sheets tables,
on a tiny made-up recording: 4 frames of 100 lines, one line per millimetre, two sheets
(lines 20-180 and 230-390), markings and defects placed by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core.grading import DEFAULT_GRADES
from core.tracking import EDGE_BLOCK, TrackedSheet
from models.identity.pipeline import Verdict
from models.segmentation.segmenter import Defect
from tasks.inspection import (
    ChunkResult,
    ModelRefs,
    Recording,
    _SheetsByLine,
    assemble,
    frame_rows,
    identify_sheets,
    place_defects,
    sheet_rows,
    stitch,
)

CLASSES = ["pits", "fine_scratches", "scratches", "patches"]
SHEETS = [TrackedSheet(0, 20, 180, True, 5, 44), TrackedSheet(1, 230, 390, False, None, None)]


def _recording() -> Recording:
    return Recording(
        "arc",
        Path("/nowhere"),
        [f"f{i}" for i in range(4)],
        [0, 1, 2, 3],
        [None] * 4,
        frame_step_lines=100.0,
        mm_per_px=1.0,
        frame_height=100,
        frame_width=50,
        video=None,
        frames_dir="/nowhere",
    )


def _chunk(start: int, boxes=(), verdicts=(), defects=(), steel_blocks=(0, 0)) -> ChunkResult:
    """Two frames; ``steel_blocks``: profile blocks per frame that see steel."""
    blocks = 100 // EDGE_BLOCK
    contrast = np.zeros((2, blocks), np.float32)
    for k, n in enumerate(steel_blocks):
        contrast[k, :n] = 50.0
    return ChunkResult(
        start=start,
        n_frames=2,
        classes=CLASSES,
        contrast=contrast,
        edges=np.zeros((2, blocks, 2), np.int16),
        gate=np.full((2, 4), 0.1 * (start + 1), np.float32),
        defects=list(defects),
        boxes=np.array(boxes, np.float32).reshape(-1, 6),
        verdicts=list(verdicts),
    )


def _results() -> list[ChunkResult]:
    # given out of order, as Dask returns them
    later = _chunk(
        2,
        boxes=[[0, 0, 0, 40, 10, 0.9]],  # frame 2, lines 200-210: on the table
        verdicts=[Verdict("H2", "H2", 0.9)],  # identified, but not on a sheet
        defects=[Defect(0, 3, "1 5", 5, (0, 0, 4, 10), 0.7)],  # line 205: on the table
        steel_blocks=(0, 12),
    )
    first = _chunk(
        0,
        boxes=[
            [0, 0, 10, 40, 30, 0.9],  # frame 0, centre line 20: sheet 0
            [1, 0, 50, 40, 70, 0.8],  # frame 1, centre line 160: sheet 0
        ],
        verdicts=[Verdict("H1", "H1", 0.62), Verdict("H1", "H1", 0.8)],
        defects=[
            Defect(1, 2, "1 10", 10, (10, 40, 20, 60), 0.9),  # frame 1, centre line 150
            Defect(1, 0, "5 2", 2, (30, 44, 31, 46), 0.6),
        ],
        steel_blocks=(10, 12),
    )
    return [later, first]


@pytest.fixture
def steps():
    rec = _recording()
    results = _results()
    line = stitch(rec, results)
    on_line = _SheetsByLine(SHEETS)
    return rec, results, line, on_line


def test_stitch_lays_ranges_end_to_end_in_recording_order(steps) -> None:
    _, _, line, _ = steps
    assert line.positions == [0, 1, 2, 3]
    assert line.first_lines.tolist() == [0, 100, 200, 300]
    assert line.gate[:, 0].tolist() == pytest.approx([0.1, 0.1, 0.3, 0.3])
    assert line.classes == CLASSES


def test_each_sheet_takes_its_best_marking_and_the_table_none(steps) -> None:
    _, results, line, on_line = steps
    marks = identify_sheets(SHEETS, on_line, line, results)
    one = marks.identities[0]
    assert (one.sheet_id, one.nearest, one.similarity) == ("H1", "H1", pytest.approx(0.8))
    assert one.agreeing == 2  # both its markings verified as H1
    assert marks.identities[1].sheet_id == "unknown" and marks.identities[1].nearest is None
    assert marks.on_sheet == {0: 2, 1: 0}  # the marking on the table counts for no sheet
    assert marks.per_frame == {0: 1, 1: 1, 2: 1}
    # the best verified marking decides, also when it is below the threshold: unknown,
    # the nearest sheet kept for the record, and none agreeing
    for r in results:
        r.verdicts = [Verdict("unknown", "H1", 0.2) for _ in r.verdicts]
    strict = identify_sheets(SHEETS, on_line, line, results)
    assert (strict.identities[0].sheet_id, strict.identities[0].nearest) == ("unknown", "H1")
    assert strict.identities[0].agreeing == 0
    # nothing identified (no registered sheets): markings are counted, nobody is named
    for r in results:
        r.verdicts = []
    blind = identify_sheets(SHEETS, on_line, line, results)
    assert blind.on_sheet == {0: 2, 1: 0} and blind.identities[0].sheet_id == "unknown"
    assert blind.identities[0].agreeing is None


def test_defects_are_placed_on_the_sheet_under_their_centre_in_mm(steps) -> None:
    rec, results, line, on_line = steps
    marks = identify_sheets(SHEETS, on_line, line, results)
    placed = place_defects(rec, line, results, on_line, marks.identities, "7")
    by_frame = [
        (r["frame_id"], r["class_name"], r["sheet_index"], r["sheet_id"]) for r in placed.rows
    ]
    assert by_frame == [
        ("f1", "scratches", 0, "H1"),
        ("f1", "pits", 0, "H1"),
        ("f2", "patches", None, None),
    ]
    scratch = placed.rows[0]
    assert scratch["x_mm"] == pytest.approx(150 - 20)  # from the sheet's head
    assert scratch["y_mm"] == pytest.approx(15 - 5)  # from its left edge
    assert scratch["defect_index"] == 0 and placed.rows[1]["defect_index"] == 1
    assert placed.rows[2]["x_mm"] is None and placed.rows[2]["model_version"] == "7"
    assert sorted(placed.per_frame) == [1, 2]


def test_frames_and_sheets_rows_count_grade_and_measure(steps) -> None:
    rec, results, line, on_line = steps
    marks = identify_sheets(SHEETS, on_line, line, results)
    placed = place_defects(rec, line, results, on_line, marks.identities, "7")
    frames, frames_of = frame_rows(rec, line, on_line, placed, marks, "{}")
    assert [f["sheet_index"] for f in frames] == [0, 0, 1, 1]
    assert [f["steel_rows"] for f in frames] == [80, 96, 0, 96]
    assert [f["n_defects"] for f in frames] == [0, 2, 1, 0]
    assert [f["n_markings"] for f in frames] == [1, 1, 1, 0]
    assert frames_of == {0: [0, 1], 1: [2, 3]}
    sheets = sheet_rows(rec, SHEETS, placed, marks, frames_of, list(DEFAULT_GRADES), "{}")
    first, second = sheets
    assert first["defect_counts"] == [("scratches", 1), ("pits", 1)]
    assert first["defect_area_ratio"] == pytest.approx(12 / (161 * 40))
    assert first["grade"] == "B"  # 0.19 % of the sheet: over A's 0.05 %, within B's 0.5 %
    assert (first["length_mm"], first["width_mm"], first["n_markings"]) == (161, 40, 2)
    assert (first["first_frame"], first["last_frame"]) == (0, 1)
    assert second["n_defects"] == 0 and second["grade"] == "A" and second["width_mm"] is None


def test_assemble_is_the_steps_in_order(steps) -> None:
    """assemble tracks its own sheets from the profiles; on these it finds none (the
    made-up edges are flat), so the tables are the frames alone."""
    rec, results, *_ = steps
    refs = ModelRefs("sqlite://", "7")
    done = assemble(rec, results, refs, list(DEFAULT_GRADES), "imp")
    assert done.n_frames == 4 and done.frames.num_rows == 4
    assert set(done.frames["archive_id"].to_pylist()) == {"arc"}
    assert set(done.frames["import_id"].to_pylist()) == {"imp"}
    assert done.sheets.num_rows == 0 and done.defects.num_rows == 3
    assert done.defects["sheet_index"].to_pylist() == [None, None, None]
