"""How an inspected twin recording compares with the ground truth the twin wrote beside it.

Sheets: each tracked sheet is paired with the true sheet it overlaps most along the
line (at least half of the shorter of the two); a paired sheet is identified right
when its sheet_id is the true one, and wrong when it is another registered ID.

Defects, per class, as connected regions (8-connectivity) per frame: a true defect is
found when predicted defects of its class on its frame cover at least ``COVER`` of its
pixels; a predicted defect is right when at least ``COVER`` of its pixels lie on true
defects of its class. Recall and precision count regions, so a long scratch counts
once per frame it crosses, on both sides.
"""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np

from core.labels import SEVERSTAL_CLASSES
from core.rle import rle_decode
from tasks.identity import true_sheets
from warehouse import queries
from warehouse.store import Warehouse

COVER = 0.25


def _rows(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def compare_sheets(found: list[dict], truth: list[tuple[str, int, int]], registered: set[str]):
    paired = right = wrong = unknown = 0
    for t_id, t0, t1 in truth:
        best, overlap = None, 0
        for s in found:
            o = min(t1, s["last_line"]) - max(t0, s["first_line"]) + 1
            if o > overlap:
                best, overlap = s, o
        shorter = min(t1 - t0 + 1, best["last_line"] - best["first_line"] + 1) if best else 0
        if best is None or overlap < 0.5 * shorter:
            continue
        paired += 1
        if best["sheet_id"] == t_id:
            right += 1
        elif best["sheet_id"] == "unknown":
            unknown += 1
        else:
            wrong += 1
    n = len(truth)
    return {
        "true_sheets": n,
        "tracked_sheets": len(found),
        "paired": paired,
        "registered": sum(t[0] in registered for t in truth),
        "identified_right": right,
        "identified_wrong": wrong,
        "unknown": unknown,
        "identification_accuracy": right / n if n else float("nan"),
    }


def _regions(mask: np.ndarray) -> list[np.ndarray]:
    n, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    return [labels == k for k in range(1, n)]


def compare_defects(
    truth_rows: list[dict], predicted: list[dict], classes: dict[int, str], shape: tuple[int, int]
) -> dict:
    """Per class: true regions, found, predicted regions, right; recall and precision."""
    truth: dict[tuple[str, int], np.ndarray] = {}
    for r in truth_rows:
        key = (r["ImageId"], int(r["ClassId"]))
        mask = rle_decode(r["EncodedPixels"], shape).astype(bool)
        truth[key] = truth.get(key, np.zeros(shape, bool)) | mask
    pred: dict[tuple[str, int], list[np.ndarray]] = {}
    for d in predicted:
        pred.setdefault((d["frame_id"], int(d["class_id"])), []).append(
            rle_decode(d["rle"], shape).astype(bool)
        )
    report = {}
    for class_id, name in sorted(classes.items()):
        n_true = found = n_pred = right = 0
        for (frame, c), mask in truth.items():
            if c != class_id:
                continue
            union = np.zeros(shape, bool)
            for p in pred.get((frame, c), []):
                union |= p
            for region in _regions(mask):
                n_true += 1
                found += (region & union).sum() >= COVER * region.sum()
        for (frame, c), masks in pred.items():
            if c != class_id:
                continue
            true_mask = truth.get((frame, c), np.zeros(shape, bool))
            for p in masks:
                n_pred += 1
                right += (p & true_mask).sum() >= COVER * p.sum()
        report[name] = {
            "true": n_true,
            "found": int(found),
            "predicted": n_pred,
            "right": int(right),
            "recall": found / n_true if n_true else None,
            "precision": right / n_pred if n_pred else None,
        }
    return report


def against_twin(warehouse: Warehouse, archive_id: str) -> dict:
    """Compare an inspected twin recording's committed rows with its ground truth."""
    found = queries.archive_path(warehouse, archive_id)
    if found is None:
        raise ValueError(f"no archive {archive_id} in the warehouse")
    path = Path(found)
    if not (path / "ground_truth").is_dir():
        raise ValueError(f"{path} has no ground_truth/: only twin recordings can be compared")
    from tasks.archives import read_manifest

    manifest = read_manifest(path)
    found = queries.sheet_spans(warehouse, archive_id)
    registered = queries.registered_sheet_ids(warehouse)
    predicted = queries.archive_defects(warehouse, archive_id)
    classes = dict(SEVERSTAL_CLASSES)  # the twin draws Severstal's classes
    classes.update({int(d["class_id"]): d["class_name"] for d in predicted})
    shape = (manifest.frame_height, manifest.frame_width)
    return {
        "archive_id": archive_id,
        "sheets": compare_sheets(found, true_sheets(path), registered),
        "defects": compare_defects(
            _rows(path / "ground_truth" / "defects.csv"), predicted, classes, shape
        ),
    }
