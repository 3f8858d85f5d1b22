"""Reading a line's identity data: the marking station's pictures and the inspection
camera's frames, with the marking boxes and sheet IDs the recorder wrote beside them.

A recording comes as a pair of archives written by one run of the line (the twin names
them ``<line>-station-s<seed>`` and ``<line>-inspection-s<seed>``): the station's picture
of each sheet with its L2 sheet ID (``sheets.csv``) and the inspection camera's frames.
Ground-truth marking boxes are in each archive's ``ground_truth/markings.csv``.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from models.data import split_by_group, unit_hash
from models.identity.crops import marking_crop, picture_size
from tasks.archives import ArchiveError, read_frames, read_manifest


class IdentityDataError(ValueError):
    """A folder that does not hold a marking-station + inspection archive pair."""


@dataclass(frozen=True)
class ArchivePair:
    station: Path
    inspection: Path

    @property
    def name(self) -> str:
        return self.inspection.name.replace("-inspection-", "-")


def _role(archive: Path) -> str | None:
    try:
        return read_manifest(archive).camera_role
    except ArchiveError:
        return None


def find_pairs(path: Path) -> list[ArchivePair]:
    """The archive pairs at ``path``: one archive of a pair (its sibling is found by
    name), or a folder holding pairs."""
    path = Path(path).resolve()
    if not path.is_dir():
        raise IdentityDataError(f"{path} is not a folder")
    role = _role(path)
    if role is not None:
        other = (
            re.sub(r"-station-(s\d+)$", r"-inspection-\1", path.name)
            if role == "marking-station"
            else re.sub(r"-inspection-(s\d+)$", r"-station-\1", path.name)
        )
        sibling = path.with_name(other)
        if other == path.name or _role(sibling) is None:
            raise IdentityDataError(
                f"{path} is a {role} archive, but its pair {sibling} is missing: pass the "
                "folder holding both the station and the inspection archive"
            )
        pair = (path, sibling) if role == "marking-station" else (sibling, path)
        return [ArchivePair(*pair)]
    pairs = []
    for station in sorted(path.iterdir()):
        if station.is_dir() and _role(station) == "marking-station":
            pairs += find_pairs(station)
    if not pairs:
        raise IdentityDataError(
            f"{path} holds no marking-station archive with its inspection archive "
            "(e.g. line-1-station-s0 and line-1-inspection-s0 from `steelsight simulate`)"
        )
    return pairs


def csv_rows(path: Path) -> list[dict]:
    try:
        with path.open(newline="") as f:
            return list(csv.DictReader(f))
    except FileNotFoundError:
        raise IdentityDataError(f"{path} is missing") from None


def _box(row: dict) -> tuple[int, int, int, int]:
    return tuple(int(row[k]) for k in ("x_min", "y_min", "x_max", "y_max"))  # type: ignore[return-value]


def station_pictures(station: Path) -> Iterator[tuple[str, str, np.ndarray]]:
    """(frame_id, sheet_id, grey picture) for every picture the station took."""
    manifest = read_manifest(station)
    folder = station / manifest.files.frames
    for row in csv_rows(station / manifest.files.sheets):
        path = folder / f"{row['frame_id']}.jpg"
        image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if image is None:
            raise ArchiveError(f"{path}: cannot be read as an image")
        yield row["frame_id"], row["sheet_id"], image


def marking_boxes(archive: Path) -> dict[str, list[dict]]:
    """Ground-truth markings per frame id: sheet_id, box, and the visible share."""
    boxes: dict[str, list[dict]] = {}
    for row in csv_rows(archive / "ground_truth" / "markings.csv"):
        boxes.setdefault(row["frame_id"], []).append(
            {
                "sheet_id": row["sheet_id"],
                "box": _box(row),
                "visible": float(row.get("visible") or 1.0),
            }
        )
    return boxes


def true_sheets(archive: Path) -> list[tuple[str, int, int]]:
    """(sheet_id, first line, last line) of every sheet the twin drew on a recording, in
    order (lines: rows of the recording from its first frame's top, ground_truth/sheets.csv)."""
    return _sheet_spans(archive, _frame_lines(archive))


def _sheet_spans(archive: Path, lines: dict[str, float]) -> list[tuple[str, int, int]]:
    """``true_sheets`` from the frames' top lines (``_frame_lines``)."""
    spans: dict[str, list[int]] = {}
    for r in csv_rows(archive / "ground_truth" / "sheets.csv"):
        line = round(lines[r["frame_id"]])
        s = spans.setdefault(r["sheet_id"], [10**12, -1])
        s[0] = min(s[0], line + int(r["first_row"]))
        s[1] = max(s[1], line + int(r["last_row"]))
    return sorted(((k, a, b) for k, (a, b) in spans.items()), key=lambda t: t[1])


def sheets_at(archive: Path, frame_ids: list[str], boxes: list[np.ndarray]) -> list[str | None]:
    """The twin's sheet each box of a frame lies on (the line of its centre; a box may
    reach outside its frame), None between sheets: where inspect places a marking on
    the sheets it tracks."""
    lines = _frame_lines(archive)
    sheets = _sheet_spans(archive, lines)  # the frame index read once
    starts = np.array([first for _, first, _ in sheets])
    out: list[str | None] = []
    for frame_id, box in zip(frame_ids, boxes, strict=True):
        line = lines[frame_id] + (float(box[1]) + float(box[3])) / 2
        i = int(np.searchsorted(starts, line, side="right")) - 1
        out.append(sheets[i][0] if i >= 0 and line <= sheets[i][2] else None)
    return out


def _frame_lines(archive: Path) -> dict[str, float]:
    """Each frame's top line on the recording, by frame id."""
    manifest = read_manifest(archive)
    return {
        r["frame_id"]: int(r["frame_number"]) * manifest.frame_step_lines
        for r in csv_rows(archive / manifest.files.frame_index)
    }


def cut_parts(archive: Path, truth: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """Per frame id, the markings (sheet_id, box) the frame's edge cut that ``truth`` does not
    list (the twin lists a marking in a frame when at least half of it is inside): the
    rest of a listed marking that touches the frame's top or bottom edge, in the frame
    before or after it. Only when the recording's frames abut (the frame step equals
    the frame height; otherwise where the rest lies is not known): none else. A detector
    that finds such a part is right, and the other part identifies the sheet with it
    (``models.identity.pipeline.across_seams``), so scoring leaves these boxes out."""
    manifest = read_manifest(archive)
    height = manifest.frame_height
    if abs(manifest.frame_step_lines - height) > 0.5:
        return {}
    order = [row["frame_id"] for row in csv_rows(archive / manifest.files.frame_index)]
    parts: dict[str, list[dict]] = {}
    for k, frame_id in enumerate(order):
        for m in truth.get(frame_id, []):
            x0, y0, x1, y1 = m["box"]
            if m["visible"] >= 1.0:
                continue
            rest = round((y1 - y0 + 1) / m["visible"]) - (y1 - y0 + 1)
            if rest <= 0:
                continue
            if y0 <= 0 and k > 0:
                where, box = order[k - 1], (x0, height - rest, x1, height - 1)
            elif y1 >= height - 1 and k + 1 < len(order):
                where, box = order[k + 1], (x0, 0, x1, rest - 1)
            else:
                continue
            parts.setdefault(where, []).append({"sheet_id": m["sheet_id"], "box": box})
    return parts


@dataclass
class Observations:
    """Marking crops with who they are: the imprint network's training and test data."""

    crops: np.ndarray  # uint8 (N, H, W)
    sheet_ids: list[str]
    sources: list[str]  # "station" or "inspection"
    frame_ids: list[str]
    visible: np.ndarray  # float32 (N,): share of the marking inside the frame

    def __len__(self) -> int:
        return len(self.sheet_ids)

    def subset(self, index) -> Observations:
        index = np.asarray(index, dtype=np.int64)
        return Observations(
            self.crops[index],
            [self.sheet_ids[i] for i in index],
            [self.sources[i] for i in index],
            [self.frame_ids[i] for i in index],
            self.visible[index],
        )

    def where(self, source: str) -> Observations:
        return self.subset([i for i, s in enumerate(self.sources) if s == source])

    @staticmethod
    def concat(parts: list[Observations]) -> Observations:
        return Observations(
            np.concatenate([p.crops for p in parts]),
            [s for p in parts for s in p.sheet_ids],
            [s for p in parts for s in p.sources],
            [f for p in parts for f in p.frame_ids],
            np.concatenate([p.visible for p in parts]),
        )

    def splits(self) -> dict[str, np.ndarray]:
        """Fixed split by sheet: a sheet's station and inspection crops stay together."""
        return split_by_group(self.sheet_ids, holdout=0.1, validation=0.1)


def ground_truth_observations(pair: ArchivePair) -> Observations:
    """Every labelled marking of a pair, cropped at its ground-truth box."""
    crops, sheets, sources, frames, visible = [], [], [], [], []
    station_boxes = marking_boxes(pair.station)
    for frame_id, sheet_id, image in station_pictures(pair.station):
        for marking in station_boxes.get(frame_id, []):
            crops.append(marking_crop(image, marking["box"]))
            sheets.append(sheet_id)
            sources.append("station")
            frames.append(frame_id)
            visible.append(1.0)
    inspection_boxes = marking_boxes(pair.inspection)
    for frame_id, image in read_frames(pair.inspection):
        for marking in inspection_boxes.get(frame_id, []):
            crops.append(marking_crop(image, marking["box"]))
            sheets.append(marking["sheet_id"])
            sources.append("inspection")
            frames.append(frame_id)
            visible.append(marking["visible"])
    if not crops:
        raise IdentityDataError(f"{pair.station} and {pair.inspection} hold no labelled marking")
    return Observations(
        np.stack(crops), sheets, sources, frames, np.asarray(visible, dtype=np.float32)
    )


def load_observations(path: Path) -> Observations:
    return Observations.concat([ground_truth_observations(p) for p in find_pairs(path)])


@dataclass
class DetectionData:
    """Pictures with their marking boxes, held in memory (the holdout of a detector)."""

    names: list[str]
    images: list[np.ndarray]
    boxes: list[np.ndarray]  # per image (k, 4): x_min, y_min, x_max, y_max

    def __len__(self) -> int:
        return len(self.names)


@dataclass
class YoloDataset:
    root: Path
    yaml: Path
    counts: dict[str, int]
    holdout: DetectionData
    # per picture size ("HEIGHTxWIDTH"), the widest and the tallest marking box (pixels,
    # as its label gives them) of the training and validation pictures: the detector
    # drops boxes far larger (models.identity.detector.marking_sized)
    largest: dict[str, tuple[float, float]] = field(default_factory=dict)


def _yolo_lines(boxes: np.ndarray, shape: tuple[int, int]) -> str:
    h, w = shape
    return "".join(
        f"0 {(x0 + x1 + 1) / 2 / w:.6f} {(y0 + y1 + 1) / 2 / h:.6f} "
        f"{(x1 - x0 + 1) / w:.6f} {(y1 - y0 + 1) / h:.6f}\n"
        for x0, y0, x1, y1 in boxes
    )


def _pictures(
    pair: ArchivePair, keep: set[str]
) -> Iterator[tuple[str, Path, np.ndarray, np.ndarray]]:
    """(name, camera's archive, grey picture, boxes) of the pair's pictures whose names
    are in ``keep``."""
    station_boxes = marking_boxes(pair.station)
    for frame_id, _, image in station_pictures(pair.station):
        name = f"{pair.name}-station-{frame_id}"
        if name in keep:
            boxes = station_boxes.get(frame_id, [])
            yield name, pair.station, image, np.array([m["box"] for m in boxes])
    inspection_boxes = marking_boxes(pair.inspection)
    for frame_id, image in read_frames(pair.inspection):
        name = f"{pair.name}-inspection-{frame_id}"
        if name in keep:
            boxes = inspection_boxes.get(frame_id, [])
            yield name, pair.inspection, image, np.array([m["box"] for m in boxes])


def _within(index: list[int], cost: dict[int, float], budget: float) -> list[int]:
    """The first of ``index`` whose costs add up to ``budget`` at most."""
    out, spent = [], 0.0
    for i in index:
        if spent + cost[i] > budget + 1e-9:
            break
        out.append(i)
        spent += cost[i]
    return out


def _write_stack(
    out: Path, stack: list[tuple[str, np.ndarray, np.ndarray]], longer_side: int
) -> None:
    """Pictures of one camera stacked top to bottom as one training picture (named
    after the first), its longer side resized to ``longer_side`` as Ultralytics resizes
    what it loads (linear), and its boxes moved down with their picture."""
    offsets = np.cumsum([0] + [image.shape[0] for _, image, _ in stack[:-1]])
    image = np.concatenate([image for _, image, _ in stack], axis=0)
    boxes = np.concatenate(
        [b + np.array([0, dy, 0, dy]) for (_, _, b), dy in zip(stack, offsets, strict=True)]
    )
    lines = _yolo_lines(boxes, image.shape)  # fractions of the picture: the resize keeps them
    h, w = image.shape
    r = longer_side / max(h, w)
    if r != 1:
        size = (min(math.ceil(w * r), longer_side), min(math.ceil(h * r), longer_side))
        image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
    name = stack[0][0]
    cv2.imwrite(str(out / "images" / "train" / f"{name}.png"), image)
    (out / "labels" / "train" / f"{name}.txt").write_text(lines)


def _catalogue(pairs: list[ArchivePair]) -> tuple[list[str], list[str], list[bool], list[int]]:
    """Every picture's name, split group (its sheet, or itself when empty), whether it
    shows a marking, and how many of its camera's pictures stacked top to bottom make
    about a square (``_per_stack``); read from the CSVs and manifests, without decoding
    any picture."""
    names, groups, positive, stacks = [], [], [], []
    for pair in pairs:
        per_stack = _per_stack(pair.station)
        for row in csv_rows(pair.station / "sheets.csv"):
            names.append(f"{pair.name}-station-{row['frame_id']}")
            groups.append(f"{pair.name}/{row['sheet_id']}")
            positive.append(True)
            stacks.append(per_stack)
        boxes = marking_boxes(pair.inspection)
        per_stack = _per_stack(pair.inspection)
        for row in csv_rows(pair.inspection / "frame_index.csv"):
            name = f"{pair.name}-inspection-{row['frame_id']}"
            found = boxes.get(row["frame_id"], [])
            names.append(name)
            groups.append(f"{pair.name}/{found[0]['sheet_id']}" if found else name)
            positive.append(bool(found))
            stacks.append(per_stack)
    return names, groups, positive, stacks


def _per_stack(folder: Path) -> int:
    """How many of a camera's pictures, stacked top to bottom, make a picture about as
    tall as it is wide: a line frame (1600x256) six, a station picture (640x320) two."""
    manifest = read_manifest(folder)
    return max(1, manifest.frame_width // max(manifest.frame_height, 1))


def write_yolo_dataset(
    pairs: list[ArchivePair],
    out: Path,
    max_images: int,
    negative_share: float = 0.2,
    stacked_at: int | None = None,
) -> YoloDataset:
    """A YOLO dataset folder (images/, labels/, data.yaml) from archive pairs: pictures
    with markings and a share of empty frames, split by sheet; the holdout stays in memory.

    At most ``max_images`` pictures go to training and validation, chosen by a stable
    hash, so the same archives give the same dataset.

    ``stacked_at``: the training pictures of one camera are stacked top to bottom, as
    many as make about a square (six line frames, two station pictures), and written
    with their longer side at this size (the detector's input). Letterboxed alone, a
    line frame fills a sixth of the square input and the rest is padding; stacked, each
    training step sees up to six times the markings at the same cost, at the scale the
    detector sees them on the line. ``max_images`` then counts the stacked pictures.
    Validation pictures stay single, as the detector meets them.
    """
    names, groups, positive, stacks = _catalogue(pairs)
    split = split_by_group(groups, holdout=0.1, validation=0.1)
    order = {name: i for i, name in enumerate(names)}
    chosen: dict[str, str] = {}
    for part, index in split.items():
        budget = max(8, int(max_images * (0.1 if part != "train" else 0.8)))
        cost = {i: 1 / stacks[i] if stacked_at and part == "train" else 1.0 for i in index}
        pos = sorted((i for i in index if positive[i]), key=lambda i: unit_hash(names[i]))
        neg = sorted((i for i in index if not positive[i]), key=lambda i: unit_hash(names[i]))
        n_neg = _within(neg, cost, budget * negative_share)
        for i in _within(pos, cost, budget - sum(cost[i] for i in n_neg)) + n_neg:
            chosen[names[i]] = part
    holdout = DetectionData([], [], [])
    counts = {"train": 0, "validation": 0, "holdout": 0}
    for part in ("train", "validation"):
        (out / "images" / part).mkdir(parents=True, exist_ok=True)
        (out / "labels" / part).mkdir(parents=True, exist_ok=True)
    stacks_of: dict[Path, list[tuple[str, np.ndarray, np.ndarray]]] = {}
    largest: dict[str, tuple[float, float]] = {}
    for pair in pairs:
        for name, camera, image, boxes in _pictures(pair, set(chosen)):
            part = chosen[name]
            if part != "holdout" and len(boxes):
                size = picture_size(image)
                w, h = largest.get(size, (0.0, 0.0))
                sides = np.reshape(boxes, (-1, 4)).astype(np.float64)  # inclusive pixels
                largest[size] = (
                    max(w, float((sides[:, 2] - sides[:, 0]).max()) + 1),
                    max(h, float((sides[:, 3] - sides[:, 1]).max()) + 1),
                )
            if part == "holdout":
                counts[part] += 1
                holdout.names.append(name)
                holdout.images.append(image)
                holdout.boxes.append(boxes.reshape(-1, 4))
                continue
            if part == "train" and stacked_at:
                stack = stacks_of.setdefault(camera, [])
                stack.append((name, image, boxes.reshape(-1, 4)))
                if len(stack) == stacks[order[name]]:
                    _write_stack(out, stacks_of.pop(camera), stacked_at)
                    counts[part] += 1
                continue
            counts[part] += 1
            cv2.imwrite(str(out / "images" / part / f"{name}.png"), image)
            (out / "labels" / part / f"{name}.txt").write_text(_yolo_lines(boxes, image.shape))
    for stack in stacks_of.values():  # each camera's last, shorter stack
        _write_stack(out, stack, stacked_at)
        counts["train"] += 1
    ordered = sorted(range(len(holdout)), key=lambda i: order[holdout.names[i]])
    holdout = DetectionData(
        [holdout.names[i] for i in ordered],
        [holdout.images[i] for i in ordered],
        [holdout.boxes[i] for i in ordered],
    )
    yaml = out / "data.yaml"
    yaml.write_text(
        f"path: {out.resolve()}\ntrain: images/train\nval: images/validation\n"
        "names:\n  0: marking\n"
    )
    return YoloDataset(out, yaml, counts, holdout, largest)
