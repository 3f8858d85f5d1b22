"""A frame's identity from its markings: the marking nearest a registered sheet decides,
and below the imprint threshold the answer is unknown, with the nearest sheet kept."""

from __future__ import annotations

from serving.inference import frame_identity


def _marking(sheet_id: str, nearest: str | None, similarity: float | None) -> dict:
    return {
        "bbox": [10.0, 20.0, 90.0, 40.0],
        "score": 0.9,
        "sheet_id": sheet_id,
        "nearest_sheet_id": nearest,
        "similarity": similarity,
    }


def test_the_best_marking_names_the_sheet() -> None:
    found = frame_identity(
        [_marking("unknown", "S-2", 0.4), _marking("S-7", "S-7", 0.93)], 0.8, served=True
    )
    assert found["status"] == "identified"
    assert (found["sheet_id"], found["similarity"], found["threshold"]) == ("S-7", 0.93, 0.8)


def test_below_the_threshold_is_unknown_with_the_nearest_kept() -> None:
    found = frame_identity([_marking("unknown", "S-2", 0.4)], 0.8, served=True)
    assert found["status"] == "unknown" and found["nearest_sheet_id"] == "S-2"


def test_no_registered_sheet_no_marking_no_models() -> None:
    assert frame_identity([_marking("unknown", None, None)], 0.8, True)["status"] == "unknown"
    assert frame_identity([], 0.8, served=True)["status"] == "no_marking"
    assert frame_identity([], None, served=False)["status"] == "not_served"
