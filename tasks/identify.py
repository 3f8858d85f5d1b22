"""Identifying sheets from their marking imprint: register the marking station's sheets
in the warehouse, find markings in inspection frames, identify them, and score it all
against the recorder's ground truth.

Data flows one way: pictures → detector boxes → paint crops and embeddings, and the
steel around each marking → either reference rows (station) or verdicts against those
rows (inspection), through models.identity.pipeline.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pyarrow as pa

from core.metrics import detection_report, match_detections
from models.data import unit_hash
from models.identity import surface
from models.identity.crops import marking_crop
from models.identity.matching import UNKNOWN, Matches, choose_threshold, identification_report
from models.identity.pipeline import (
    NO_NEIGHBOUR,
    PassIdentifier,
    SurfaceIndex,
    Verdict,
    embed,
    kept,
)
from models.identity.pipeline import find_markings as find_pictures_markings
from models.identity.pipeline import references as station_imprints
from tasks.archives import content_hash, read_frames, read_manifest
from tasks.identity import (
    ArchivePair,
    csv_rows,
    cut_parts,
    marking_boxes,
    sheets_at,
    station_pictures,
)
from tasks.labels import archive_id_for
from warehouse import queries
from warehouse.schema import TABLES
from warehouse.store import Warehouse, new_import_id

log = logging.getLogger(__name__)
BATCH = 32  # pictures per detector call
TARGET_FAR = 0.001  # wrong IDs per query the calibration of a pair aims at


@dataclass(frozen=True)
class Models:
    """The two identity models and their registered versions."""

    detector: object  # models.identity.detector.MarkingDetector
    imprint: object  # models.identity.imprint.ImprintModel
    detector_version: str
    imprint_version: str


def _batches(items: Iterable, size: int) -> Iterator[list]:
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


@dataclass
class Found:
    """Markings found in a stream of pictures: one row per detection."""

    frame_ids: list[str] = field(default_factory=list)
    boxes: list[np.ndarray] = field(default_factory=list)  # (5,) x0, y0, x1, y1, score
    crops: list[np.ndarray] = field(default_factory=list)
    per_frame: dict[str, np.ndarray] = field(default_factory=dict)  # all detections per frame
    pictures: int = 0
    surfaces: list[surface.Surface] = field(default_factory=list)  # station: per row

    def add(self, frame_id: str, box: np.ndarray, crop: np.ndarray, picture: np.ndarray) -> None:
        """A station picture's detection: one row per surface imprint it registers (a
        second where the text's angle is in doubt, ``pipeline.references``)."""
        for imprinted in station_imprints(picture, box):
            self.frame_ids.append(frame_id)
            self.boxes.append(box)
            self.crops.append(crop)
            self.surfaces.append(imprinted)


def station_found(pictures: Iterable[tuple[str, np.ndarray]], models: Models) -> Found:
    """The markings each (frame_id, station picture) registers (its best; when the
    detector is unsure of it, its next ones too), their crops and surface imprints."""
    found = Found()
    for batch in _batches(pictures, BATCH):
        images = [image for _, image in batch]
        marks = find_pictures_markings(models.detector, models.imprint, images, BATCH, station=True)
        names = [frame_id for frame_id, _ in batch]
        found.pictures += len(batch)
        found.per_frame.update(zip(names, marks.per_picture, strict=True))
        for owner, box, crop in zip(marks.owners, marks.boxes, marks.crops, strict=True):
            found.add(names[owner], box, crop, images[owner])
    return found


def _embed(found: Found, models: Models) -> np.ndarray:
    return embed(models.imprint, np.asarray(found.crops, np.uint8))


@dataclass(frozen=True)
class Registered:
    archive_id: str
    sheets: int  # station pictures read
    registered: int  # sheets with a reference
    references: int  # rows of sheet_references
    errors: int
    seconds: float
    sheet_ids: frozenset[str]  # the sheets offered for registration (after leave_out)


def station_markings(
    station: Path,
    models: Models,
    leave_out: float = 0.0,
    ground_truth: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[Found, dict[str, dict]]:
    """The marking of every station picture (its best detection, or with ``ground_truth``
    the box the recorder wrote) and the station's sheets.csv rows by frame id.
    ``leave_out`` skips that share of sheets (by a stable hash), for open-set tests;
    ``progress(pictures read, pictures)`` as they are read."""
    rows = {r["frame_id"]: r for r in csv_rows(station / "sheets.csv")}
    kept = (
        (frame_id, image)
        for frame_id, sheet_id, image in station_pictures(station)
        if unit_hash(sheet_id) >= leave_out
    )
    if progress is not None:
        kept = _counted(kept, lambda n: progress(n, len(rows)))
    if not ground_truth:
        return station_found(kept, models), rows
    truth = marking_boxes(station)
    found = Found()
    for frame_id, image in kept:
        found.pictures += 1
        boxes = np.array([[*m["box"], 1.0] for m in truth.get(frame_id, [])], np.float32)
        found.per_frame[frame_id] = boxes.reshape(-1, 5)
        for box in boxes[:1]:
            crop = marking_crop(image, box[:4], models.imprint.crop_size, models.imprint.margin)
            found.add(frame_id, box, crop, image)
    return found, rows


def register_station(
    station: Path,
    models: Models,
    warehouse: Warehouse,
    leave_out: float = 0.0,
    ground_truth: bool = False,
    archive: dict | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Registered:
    """Take every station picture's marking imprint (the steel around it, its paint's
    embedding) and store it with its sheet ID in ``sheet_references`` (one import of the
    station archive: re-running replaces it); one row per box the picture registers, its
    best and, where the detector was unsure of that, its next ones (``station_boxes``).
    A picture where no marking is found goes to ``ingest_errors`` with the reason.
    ``archive``: the station's archives row when ingest registered it (its id, hash and
    origin are kept)."""
    started = time.perf_counter()
    station = Path(station).resolve()
    found, rows = station_markings(station, models, leave_out, ground_truth, progress)
    embeddings = _embed(found, models)
    archive_id = archive["archive_id"] if archive else archive_id_for(station)
    import_id = new_import_id()
    ids = {"archive_id": archive_id, "import_id": import_id}
    references = [
        {
            **ids,
            "sheet_id": rows[frame_id]["sheet_id"],
            "frame_id": frame_id,
            "captured_at": datetime.fromisoformat(rows[frame_id]["timestamp"]),
            "x_min": round(box[0]),
            "y_min": round(box[1]),
            "x_max": round(box[2]),
            "y_max": round(box[3]),
            "detection_score": float(box[4]),
            "box_rank": rank,
            "embedding": embedding.tolist(),
            "surface_format": surface.FORMAT,
            "surface_angle": imprinted.angle,
            "surface_descriptor": imprinted.descriptor.ravel().tolist(),
            "surface_template": imprinted.template.astype(np.float16).tobytes(),
            "model_version": models.imprint_version,
            "detector_version": "ground-truth" if ground_truth else models.detector_version,
        }
        for frame_id, rank, box, embedding, imprinted in zip(
            found.frame_ids,
            _ranks(found.frame_ids),
            found.boxes,
            embeddings,
            found.surfaces,
            strict=True,
        )
    ]
    seen = set(found.frame_ids)
    missing = [f for f in found.per_frame if f not in seen]
    errors = [
        {
            **ids,
            "error_index": n,
            "source": str(station / "frames" / f"{frame_id}.jpg"),
            "source_row": None,
            "field": None,
            "error_kind": "no_marking_found",
            "reason": f"no marking found on sheet {rows[frame_id]['sheet_id']}'s station "
            "picture: the sheet cannot be identified later; check the picture and the "
            "station's camera",
        }
        for n, frame_id in enumerate(missing)
    ]
    status = "failed" if not references else ("partial" if errors else "ok")
    warehouse.import_archive(
        {
            **ids,
            "kind": "marking-station",
            "path": str(station),
            "content_sha256": archive["content_sha256"] if archive else content_hash(station),
            "received_from": archive.get("received_from") if archive else None,
            "inspected_with": registration_key(models.detector_version, models.imprint_version),
            "status": status,
            "n_images": found.pictures,
            "n_labels": len(references),
            "n_errors": len(errors),
            "imported_at": datetime.now(UTC),
            "steelsight_version": version("steelsight"),
        },
        {
            "sheet_references": pa.Table.from_pylist(references, TABLES["sheet_references"].schema),
            "ingest_errors": pa.Table.from_pylist(errors, TABLES["ingest_errors"].schema),
        },
    )
    seconds = time.perf_counter() - started
    log.info(
        "registered %d sheets of %s (%d references; %d without a marking found) in %.1f s",
        len(seen),
        station,
        len(references),
        len(errors),
        seconds,
    )
    offered = frozenset(rows[f]["sheet_id"] for f in found.per_frame)
    return Registered(
        archive_id, found.pictures, len(seen), len(references), len(errors), seconds, offered
    )


def _ranks(frame_ids: Sequence[str]) -> list[int]:
    """Each row's rank among its picture's (its detections come best first, each with
    its imprints, the surer angle first)."""
    seen: dict[str, int] = {}
    ranks = []
    for frame_id in frame_ids:
        ranks.append(seen.get(frame_id, 0))
        seen[frame_id] = ranks[-1] + 1
    return ranks


def registration_key(marking: str, imprint: str) -> str:
    """What the archives table records as a station's ``inspected_with``: the identity
    models' versions and the surface imprint's layout. A station registered under
    another key is registered again by the next inspect, so an upgrade that changes the
    layout (whose old rows are not searched) needs nothing from the user."""
    return json.dumps(
        {"marking": marking, "imprint": imprint, "surface": surface.FORMAT}, sort_keys=True
    )


def reference_index(
    warehouse: Warehouse,
    imprint_version: str,
    archive_id: str | None = None,
    span: tuple[datetime, datetime] | None = None,
) -> SurfaceIndex:
    """Every sheet registered with this imprint version and today's surface layout (of
    one station archive when ``archive_id`` is given; pictured within ``span`` when
    given, ``registration_span``), ready to search and verify."""
    table = queries.sheet_references(warehouse, imprint_version, surface.FORMAT, archive_id, span)
    if not table.num_rows:
        return SurfaceIndex.empty()
    n = table.num_rows
    descriptors = pa.compute.list_flatten(table["surface_descriptor"]).to_numpy()
    templates = b"".join(table["surface_template"].to_pylist())
    paint = pa.compute.list_flatten(table["embedding"]).to_numpy()
    return SurfaceIndex(
        table["sheet_id"].to_pylist(),
        descriptors.reshape(n, *surface.DESCRIPTOR_SHAPE).astype(np.float32),
        np.frombuffer(templates, np.float16).reshape(n, *surface.TEMPLATE_SHAPE),
        paint.reshape(n, -1).astype(np.float32) if len(paint) else None,
    )


def reference_sheets(
    warehouse: Warehouse, imprint_version: str, span: tuple[datetime, datetime] | None = None
) -> list[str]:
    """The sheet ids ``reference_index`` would hold, in its order, without reading their
    imprints (to tell whether an index already loaded is still the one wanted)."""
    table = queries.sheet_references(
        warehouse, imprint_version, surface.FORMAT, span=span, ids_only=True
    )
    return table["sheet_id"].to_pylist()


# How far the marking station's clock may run behind the inspection camera's.
CLOCK_SLACK = timedelta(minutes=15)


def registration_span(
    seen: Iterable[datetime | None], hours: float
) -> tuple[datetime, datetime] | None:
    """When the sheets of a recording whose frames were taken at ``seen`` can have been
    registered: from ``hours`` before its first frame (settings.identity_window_hours)
    to ``CLOCK_SLACK`` after its last. None, the whole registry, when ``hours`` is 0 or
    no frame has a time. A time without a zone is taken as UTC, as ingest does."""
    times = [t if t.tzinfo else t.replace(tzinfo=UTC) for t in seen if t is not None]
    if not hours or not times:
        return None
    return min(times) - timedelta(hours=hours), max(times) + CLOCK_SLACK


def threshold_of(settings) -> float:
    """The verified correlation an answer needs: settings' identity_threshold, else the
    calibrated default (models.identity.surface.VERIFY_THRESHOLD)."""
    chosen = settings.identity_threshold
    return surface.VERIFY_THRESHOLD if chosen is None else float(chosen)


def inspection_verdicts(
    frames: Iterable[tuple[str, np.ndarray]],
    models: Models,
    index: SurfaceIndex,
    threshold: float,
) -> tuple[Found, list[Verdict], float]:
    """Every marking the detector finds in consecutive (frame_id, frame) pairs of one
    recording, and its verdict (seen with its frame's neighbours, as the inspection
    workers see it); the seconds spent identifying (not detecting)."""
    found, verdicts, seconds = Found(), [], 0.0
    identifier = PassIdentifier(models.imprint, index, threshold)
    above = NO_NEIGHBOUR  # the frame before the batch and its markings: the seam above it
    for batch in _batches(frames, BATCH):
        images = [image for _, image in batch]
        marks = find_pictures_markings(
            models.detector,
            models.imprint,
            images,
            BATCH,
            weak=True,
            follows=[True] * len(images),
            previous=above,
        )
        above = (images[-1], marks.per_picture[-1])
        names = [frame_id for frame_id, _ in batch]
        found.pictures += len(batch)
        found.per_frame.update(zip(names, marks.per_picture, strict=True))
        for owner, box in zip(marks.owners, marks.boxes, strict=True):
            found.frame_ids.append(names[owner])
            found.boxes.append(box)
        started = time.perf_counter()
        verdicts += identifier.add(images, marks)
        seconds += time.perf_counter() - started
    started = time.perf_counter()
    verdicts += identifier.finish()
    seconds += time.perf_counter() - started
    # the markings as inspection keeps them: weak detections only when they verified
    keep = kept(found.boxes, verdicts, models.detector.conf)
    found.frame_ids = [f for f, k in zip(found.frame_ids, keep, strict=True) if k]
    found.boxes = [b for b, k in zip(found.boxes, keep, strict=True) if k]
    verdicts = [v for v, k in zip(verdicts, keep, strict=True) if k]
    found.per_frame = {f: np.zeros((0, 5), np.float32) for f in found.per_frame}
    for frame_id, box in zip(found.frame_ids, found.boxes, strict=True):
        found.per_frame[frame_id] = np.vstack([found.per_frame[frame_id], box[None, :5]])
    return found, verdicts, seconds


def evaluate_identity(
    pair: ArchivePair,
    models: Models,
    warehouse: Warehouse,
    threshold: float,
    leave_out: float = 0.0,
    progress=None,
) -> dict:
    """Register the pair's station, identify every marking the detector finds in the
    inspection frames, and score it against the ground truth.

    Per sheet, the answer is that of the best verified detection on it (where the twin
    drew the sheet), as the inspect flow gives it from the sheets it tracks.
    """
    registered = register_station(pair.station, models, warehouse, leave_out)
    # the registry of this pair's station only, so the figures do not depend on what
    # else the warehouse holds
    index = reference_index(warehouse, models.imprint_version, registered.archive_id)
    if not len(index):
        raise ValueError(f"no sheet of {pair.station} could be registered: no marking found")

    truth = marking_boxes(pair.inspection)
    started = time.perf_counter()
    found, verdicts, identify_s = inspection_verdicts(
        _counted(read_frames(pair.inspection), progress), models, index, threshold
    )
    matches = Matches(
        [v.sheet_id for v in verdicts],
        [v.nearest or UNKNOWN for v in verdicts],
        np.array([-np.inf if v.similarity is None else v.similarity for v in verdicts], np.float32),
    )
    seconds = time.perf_counter() - started
    # the sheet each detection lies on, as inspect places it (before the boxes are cut
    # to their frames: a marking found across a seam lies partly in the frame above)
    on_sheet = sheets_at(pair.inspection, found.frame_ids, found.boxes)
    # a marking found across a seam reaches above its frame: scored as the part in its
    # own frame, as the twin lists it (or as the cut part beside a listed one)
    height = read_manifest(pair.inspection).frame_height
    found.boxes = [_within(box, height) for box in found.boxes]
    found.per_frame = {f: _within(rows, height) for f, rows in found.per_frame.items()}

    # which ground-truth marking each detection is (IoU >= 0.5), per frame; and which
    # unlisted part of a marking the frame's edge cut
    cut = cut_parts(pair.inspection, truth)
    detected = list(zip(found.frame_ids, found.boxes, strict=True))
    truth_of = [_hit(box, truth.get(f, [])) for f, box in detected]
    part_of = [_hit(box, cut.get(f, [])) for f, box in detected]
    frame_ids = list(found.per_frame)
    listed = [_boxes(truth.get(f, [])) for f in frame_ids]
    detection = detection_report(
        [found.per_frame[f] for f in frame_ids],
        listed,
        ignore=[_boxes(cut.get(f, [])) for f in frame_ids],
    )
    # as scored before the cut parts were known: each of them a false detection
    detection["precision_cut_parts_counted"] = detection_report(
        [found.per_frame[f] for f in frame_ids], listed
    )["precision"]

    # per sheet, as inspect answers: the best verified of every detection on the sheet,
    # whatever it boxed (a marking, part of one, or some other mark on the steel), for
    # each sheet whose marking the camera saw or that a detection lies on; a sheet with
    # no detection on it is a query answered unknown
    best = best_per_sheet(on_sheet, matches.similarity)
    seen_sheets = sorted({m["sheet_id"] for ms in truth.values() for m in ms} | set(best))
    answered = _per_sheet(matches, best, seen_sheets)
    per_sheet = identification_report(seen_sheets, registered.sheet_ids, answered, threshold)
    per_sheet["sheets"] = len(seen_sheets)
    per_sheet["wrong"] = [  # every sheet given another's ID: what to look at first
        {
            "sheet_id": sheet,
            "answer": matches.sheet_ids[i],
            "similarity": float(matches.similarity[i]),
        }
        for sheet, i in best.items()
        if matches.sheet_ids[i] not in (sheet, UNKNOWN)
    ]
    # every registered sheet not named: what to look at next
    per_sheet["not_identified"] = [
        s
        for s, a in zip(seen_sheets, answered.sheet_ids, strict=True)
        if s in registered.sheet_ids and a != s
    ]
    boxed = set(truth_of) | set(part_of)
    per_sheet["marking_not_detected"] = sum(s not in boxed for s in seen_sheets)
    # per detection: those that are a listed marking (the twin lists a marking in a frame
    # when at least half of it is inside); the rest are mostly the smaller part of a
    # marking the frame's edge cut, whose truth is not listed: counted apart
    listed = [i for i, t in enumerate(truth_of) if t is not None]
    per_detection = identification_report(
        [truth_of[i] for i in listed],
        registered.sheet_ids,
        Matches(
            [matches.sheet_ids[i] for i in listed],
            [matches.nearest[i] for i in listed],
            matches.similarity[listed],
        ),
        threshold,
    )
    # what threshold this pair asks for: every verified candidate of a listed marking,
    # the right sheet's score genuine, the others impostors
    genuine = [v for i in listed for s, v in verdicts[i].verified if s == truth_of[i]]
    impostor = [v for i in listed for s, v in verdicts[i].verified if s != truth_of[i]]
    candidates = max((len(verdicts[i].verified) for i in listed), default=0)
    calibration = (
        choose_threshold(np.array(genuine), np.array(impostor), TARGET_FAR, candidates)
        if genuine and impostor
        else None
    )
    unlisted = [i for i, t in enumerate(truth_of) if t is None]
    per_detection["unlisted_detections"] = len(unlisted)
    per_detection["unlisted_given_an_id"] = sum(matches.sheet_ids[i] != UNKNOWN for i in unlisted)
    # every detection, listed or not, that names a sheet other than the one it lies on:
    # a wrong answer the per-sheet figures would hide behind a better one on that sheet
    per_detection["another_sheet_named"] = sum(
        sheet is not None and matches.sheet_ids[i] not in (sheet, UNKNOWN)
        for i, sheet in enumerate(on_sheet)
    )
    # the margin the threshold keeps
    per_detection["best_for_another_sheet"] = best_for_another_sheet(on_sheet, matches)
    # the cut parts among them: the sheet is known, so an ID given is right or wrong
    parts = [i for i in unlisted if part_of[i] is not None]
    per_detection["cut_parts"] = {
        "detections": len(parts),
        "identified_right": sum(matches.sheet_ids[i] == part_of[i] for i in parts),
        "identified_wrong": sum(matches.sheet_ids[i] not in (part_of[i], UNKNOWN) for i in parts),
    }
    return {
        "data": {"station": str(pair.station), "inspection": str(pair.inspection)},
        "models": {"marking": models.detector_version, "imprint": models.imprint_version},
        "registered_sheets": index.sheets,
        "station": {
            "pictures": registered.sheets,
            "references": registered.references,
            "no_marking_found": registered.errors,
            "seconds": round(registered.seconds, 2),
        },
        "per_sheet": per_sheet,
        "per_detection": per_detection,
        "calibration": calibration,
        "detection": detection,
        "frames": found.pictures,
        "seconds": round(seconds, 2),
        "frames_per_s": found.pictures / seconds if seconds else float("nan"),
        "sheets_per_s": len(seen_sheets) / seconds if seconds else float("nan"),
        "identify_ms_per_marking": identify_s / len(verdicts) * 1000 if verdicts else float("nan"),
    }


def _within(boxes: np.ndarray, height: int) -> np.ndarray:
    """Boxes (..., >=4) with their rows cut to a frame of ``height`` rows."""
    out = np.array(boxes, np.float32, copy=True)
    out[..., [1, 3]] = np.clip(out[..., [1, 3]], 0, height - 1)
    return out


def _boxes(markings: list[dict]) -> np.ndarray:
    return np.array([m["box"] for m in markings], np.float64).reshape(-1, 4)


def _hit(box: np.ndarray, markings: list[dict]) -> str | None:
    """The sheet of the marking ``box`` detects (IoU >= 0.5), if any."""
    hit, _ = match_detections(box[None], _boxes(markings))
    return markings[hit[0]]["sheet_id"] if hit[0] >= 0 else None


def best_per_sheet(on_sheet: Sequence[str | None], similarity: np.ndarray) -> dict[str, int]:
    """Per sheet, the detection whose verdict answers for it: the highest similarity
    among every detection that lies on it (``on_sheet``; None: on no sheet), as inspect
    answers from all the markings found on a sheet."""
    best: dict[str, int] = {}
    for i, sheet in enumerate(on_sheet):
        if sheet is not None and (sheet not in best or similarity[i] > similarity[best[sheet]]):
            best[sheet] = i
    return best


def best_for_another_sheet(on_sheet: Sequence[str | None], matches: Matches) -> float | None:
    """The highest verified score a detection on a sheet (``on_sheet``) gave a registered
    sheet other than that one, whether or not it reached the threshold; None when there
    was none. A detection on no sheet (between two) may be either's marking: left out."""
    return max(
        (
            float(matches.similarity[i])
            for i, sheet in enumerate(on_sheet)
            if sheet is not None and matches.nearest[i] not in (sheet, UNKNOWN)
        ),
        default=None,
    )


def _per_sheet(matches: Matches, best: dict[str, int], sheets: list[str]) -> Matches:
    """One answer per sheet: its chosen detection's, or unknown when it had none."""
    picked = [best.get(s) for s in sheets]
    return Matches(
        [UNKNOWN if i is None else matches.sheet_ids[i] for i in picked],
        [UNKNOWN if i is None else matches.nearest[i] for i in picked],
        np.array([-np.inf if i is None else matches.similarity[i] for i in picked], np.float32),
    )


def _counted(frames: Iterable, progress) -> Iterator:
    for n, item in enumerate(frames, 1):
        if progress:
            progress(n)
        yield item


def load_models(settings, marking: str = "champion", imprint: str = "champion") -> Models:
    """The registered detector and imprint model (alias or version) with their versions."""
    from models import registry

    client = registry.connect(settings)

    def resolved(kind: str, ref: str) -> str:
        return str(registry.version_of(client, kind, ref))

    marking_version, imprint_version = resolved("marking", marking), resolved("imprint", imprint)
    return Models(
        registry.load_model(settings, "marking", marking_version),
        registry.load_model(settings, "imprint", imprint_version),
        marking_version,
        imprint_version,
    )
