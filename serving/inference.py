"""What the models say about a micro-batch of frames: defects, gate, markings, identity.

Pure with respect to the server: arrays and a ``Served`` set in, plain answers out.
Frames of one shape go through the segmenter together; the detector takes any shapes.
"""

from __future__ import annotations

import base64
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from core import drawing
from models.identity.matching import UNKNOWN
from models.identity.pipeline import (
    Markings,
    SurfaceIndex,
    embed,
    find_markings,
    identify_markings,
    kept,
    line_detections,
    on_seam,
)

# BGR colours per class position (overlay): yellow, cyan, magenta, red, then green


@dataclass(frozen=True)
class Served:
    """One consistent set of models and the sheets they can recognise."""

    versions: dict[str, str]  # kind → registered version
    segmenter: object  # models.segmentation.segmenter.Segmenter
    marking: object | None = None  # models.identity.detector.MarkingDetector
    imprint: object | None = None  # models.identity.imprint.ImprintModel
    references: SurfaceIndex = field(default_factory=SurfaceIndex.empty)
    references_key: tuple = ()
    threshold: float = 1.0  # verified correlation that names a sheet (tasks.identify)
    loaded_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    @property
    def identifies(self) -> bool:
        return self.marking is not None and self.imprint is not None

    @property
    def class_ids(self) -> list[int]:
        return sorted(self.segmenter.classes)


@dataclass(frozen=True)
class FrameJob:
    frame: np.ndarray  # (H, W) uint8 grey
    overlay: bool = False
    # the frames just before and after it on the line, when the caller sends them: a
    # marking is then seen as the inspection workers see it (the steel around it across
    # the seam, and the other part of a marking the frame's edge cut)
    before: np.ndarray | None = None
    after: np.ndarray | None = None


@dataclass(frozen=True)
class FrameAnswer:
    width: int
    height: int
    defects: list[dict]
    gate: dict[str, float]
    markings: list[dict]
    identity: dict
    versions: dict[str, str]
    overlay_png: str | None = None  # base64


def inspect_frames(served: Served, jobs: list[FrameJob]) -> list[FrameAnswer]:
    """Every job's answer, in order, from one set of models."""
    by_shape: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, job in enumerate(jobs):
        by_shape[job.frame.shape].append(i)
    segmented: dict[int, tuple] = {}
    for positions in by_shape.values():
        batch = np.stack([jobs[i].frame for i in positions])
        prediction = served.segmenter.predict(batch, batch_size=len(batch), regions=True)
        per_frame: dict[int, list] = defaultdict(list)
        for d in prediction.defects:
            per_frame[d.frame].append(d)
        for n, i in enumerate(positions):
            masks = prediction.frame_masks(n) if jobs[i].overlay else None
            segmented[i] = (prediction.gate[n], per_frame[n], masks)
    markings = _markings(served, jobs)
    names = [served.segmenter.classes[k] for k in served.class_ids]
    answers = []
    for i, job in enumerate(jobs):
        gate, found, masks = segmented[i]
        answers.append(
            FrameAnswer(
                width=int(job.frame.shape[1]),
                height=int(job.frame.shape[0]),
                defects=[_defect(d, served.class_ids, names) for d in found],
                gate={name: round(float(p), 6) for name, p in zip(names, gate, strict=True)},
                markings=markings[i],
                identity=frame_identity(markings[i], served.threshold, served.identifies),
                versions=served.versions,
                overlay_png=_overlay(job.frame, masks) if masks is not None else None,
            )
        )
    return answers


def _defect(d, class_ids: list[int], names: list[str]) -> dict:
    return {
        "class_id": class_ids[d.class_index],
        "class_name": names[d.class_index],
        "rle": d.rle,
        "area": d.area,
        "bbox": list(d.bbox),
        "score": round(float(d.score), 6),
    }


def _markings(served: Served, jobs: list[FrameJob]) -> list[list[dict]]:
    """Per frame, each detected marking and who its sheet is: seen with the frames
    before and after it when the job has them, as the inspection workers see it
    (``identify_markings``), else from the frame alone."""
    frames = [job.frame for job in jobs]
    if not served.identifies:
        return [[] for _ in frames]
    out: list[list[dict]] = [[] for _ in frames]
    if not len(served.references):
        marks = find_markings(served.marking, served.imprint, frames, batch=len(frames))
        for i, row in zip(marks.owners, marks.boxes, strict=True):
            out[i].append(_marking(row, UNKNOWN, None, None))
        return out
    # as the inspection workers do: weak detections too, kept when they verify; a frame
    # sent with the one before it is also looked at across the seam between them, as
    # the workers look at the seam above every frame (a marking it cuts is the lower
    # frame's), with the frame before's detections
    pictures, follows, slot = [], [], []
    for job in jobs:
        if job.before is not None:
            pictures.append(job.before)
            follows.append(False)
        slot.append(len(pictures))
        pictures.append(job.frame)
        follows.append(job.before is not None and job.before.shape == job.frame.shape)
    marks = find_markings(
        served.marking, served.imprint, pictures, len(pictures), weak=True, follows=follows
    )
    job_of = {p: i for i, p in enumerate(slot)}
    ours = np.array([int(o) in job_of for o in marks.owners], bool).reshape(-1)
    owners = np.array([job_of.get(int(o), -1) for o in marks.owners], np.int64)[ours]
    boxes, crops = marks.boxes[ours], marks.crops[ours]
    paint = embed(served.imprint, crops)
    cut = {
        int(i) for i, box in zip(owners, boxes, strict=True) if on_seam(box, jobs[i].frame.shape[0])
    }
    below = _detections_after(served, jobs, cut, [marks.per_picture[k] for k in slot])
    verdicts: list = [None] * len(boxes)
    for i, job in enumerate(jobs):
        mine = np.flatnonzero(owners == i)
        if not len(mine):
            continue
        above = marks.per_picture[slot[i] - 1] if job.before is not None else None
        one = Markings(
            np.zeros(len(mine), np.int64),
            boxes[mine],
            crops[mine],
            [marks.per_picture[slot[i]]],
            marks.weak[ours][mine],
            marks.second[ours][mine],
            marks.faint[ours][mine],
        )
        found = identify_markings(
            one,
            [job.frame],
            served.references,
            served.threshold,
            job.before,
            job.after,
            paint[mine],
            edge_markings=(above, below.get(i)),
        )
        for n, verdict in zip(mine, found, strict=True):
            verdicts[n] = verdict
    keep = kept(boxes, verdicts, served.marking.conf)
    for i, row, verdict, k in zip(owners, boxes, verdicts, keep, strict=True):
        if k:
            out[i].append(_marking(row, verdict.sheet_id, verdict.nearest, verdict.similarity))
    return out


def _detections_after(
    served: Served, jobs: list[FrameJob], cut: set[int], rows: list[np.ndarray]
) -> dict[int, np.ndarray]:
    """The detections of the frames sent after the jobs ``cut`` (those with a marking on
    the frame's edge: no other marking looks at them), found as the workers find the
    next frame's: with the markings across the seam above it (the job's frame and its
    detections ``rows[i]`` above)."""
    found = {}
    for i in sorted(cut):
        after = jobs[i].after
        if after is not None:
            follows = [after.shape == jobs[i].frame.shape]
            (found[i],) = line_detections(
                served.marking,
                [after],
                1,
                weak=True,
                follows=follows,
                previous=(jobs[i].frame, rows[i]),
            )
    return found


def _marking(row: np.ndarray, sheet_id: str, nearest: str | None, similarity) -> dict:
    return {
        "bbox": [round(float(v), 1) for v in row[:4]],
        "score": round(float(row[4]), 6),
        "sheet_id": sheet_id,
        "nearest_sheet_id": nearest,
        "similarity": None if similarity is None else round(float(similarity), 6),
    }


def frame_identity(markings: list[dict], threshold: float | None, served: bool) -> dict:
    """The frame's sheet: the marking nearest a registered sheet decides; ``unknown``
    when that marking is below the imprint threshold."""
    if not served:
        return {"status": "not_served", "sheet_id": None, "similarity": None}
    if not markings:
        return {"status": "no_marking", "sheet_id": None, "similarity": None}
    best = max(markings, key=lambda m: -1.0 if m["similarity"] is None else m["similarity"])
    known = best["sheet_id"] != UNKNOWN
    return {
        "status": "identified" if known else "unknown",
        "sheet_id": best["sheet_id"],
        "nearest_sheet_id": best["nearest_sheet_id"],
        "similarity": best["similarity"],
        "threshold": threshold,
        "bbox": best["bbox"],
    }


def _overlay(frame: np.ndarray, masks: np.ndarray) -> str:
    """The frame with each class's mask tinted and outlined, as base64 PNG."""
    return base64.b64encode(drawing.png(drawing.overlay(frame, masks))).decode("ascii")


def warm_up(served: Served) -> None:
    """One frame through every model, so the first request does not pay for set-up."""
    h, w = served.segmenter.frame_shape
    inspect_frames(served, [FrameJob(np.full((h, w), 128, np.uint8))])


def warm_up_batches(served: Served, batch_frames: int) -> None:
    """On a GPU, every model at every batch size up to ``batch_frames`` (the
    micro-batcher forms any of them), for the thread that serves the batches to run
    (``MicroBatcher.on_inference_thread``): torch keeps cuDNN's plans per thread and per
    shape. On an H200 this took the serving core's p99 at concurrency 8 from 55.6 to
    9.3 ms (docs/benchmarks.md, "The inference thread warmed"). Nothing on a CPU."""
    if served.segmenter.device.type != "cuda":
        return
    h, w = served.segmenter.frame_shape
    frame = np.full((h, w), 128, np.uint8)
    for n in range(1, batch_frames + 1):
        inspect_frames(served, [FrameJob(frame)] * n)
