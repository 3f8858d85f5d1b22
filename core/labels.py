"""Parsing labelled datasets into label and error records (pure: text in, records out).

Severstal: ``train.csv`` in the competition's first layout (``ImageId_ClassId,
EncodedPixels``, four rows per image, empty when a class is absent) or its second
(``ImageId,ClassId,EncodedPixels``, only rows with a mask). NEU-DET: one Pascal VOC
XML file per image with its defect boxes, the class in each object's ``name``.

Every input row ends up as a label or as an error naming the row, the field and
what to do: nothing is dropped silently.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from xml.etree.ElementTree import ParseError

from defusedxml import ElementTree
from defusedxml.common import DefusedXmlException

from core.rle import RLEError, parse_runs, runs_area_bbox

# Class lists, by dataset. Severstal's classes are numbered only; names from seed 004.
SEVERSTAL_CLASSES: Mapping[int, str] = MappingProxyType(
    {1: "pits", 2: "fine_scratches", 3: "scratches", 4: "patches"}
)
NEU_CLASSES: Mapping[int, str] = MappingProxyType(
    dict(
        enumerate(
            ("crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches"),
            start=1,
        )
    )
)

# The longest field a label CSV may have: an RLE of a 1600x256 image has at most 204,800
# runs of "start length " (~2 MB); a longer field is that row's error, not the file's.
MAX_FIELD_CHARS = 4 * 1024 * 1024

OLD_HEADER = ["ImageId_ClassId", "EncodedPixels"]
NEW_HEADER = ["ImageId", "ClassId", "EncodedPixels"]


class LabelFileError(ValueError):
    """A whole label file that cannot be read (wrong header, not text, malformed XML)."""


@dataclass
class Parsed:
    """Labels and errors from one label file, as plain records for the warehouse."""

    labels: list[dict] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)

    def error(
        self, source: str, row: int | None, field_: str | None, kind: str, reason: str
    ) -> None:
        self.errors.append(
            {
                "source": source,
                "source_row": row,
                "field": field_,
                "error_kind": kind,
                "reason": reason,
            }
        )


@dataclass(frozen=True)
class UnreadableRow:
    """A CSV record the reader cannot take (a field over MAX_FIELD_CHARS, a stray quote)."""

    line: int
    reason: str


def read_csv_rows(data: bytes, source: str) -> list[list[str] | UnreadableRow]:
    """The file's records; one that cannot be read is an UnreadableRow in its place, so the
    records after it are still read."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise LabelFileError(
            f"{source} is not UTF-8 text ({error}): export it again as CSV"
        ) from None
    if csv.field_size_limit() < MAX_FIELD_CHARS:
        csv.field_size_limit(MAX_FIELD_CHARS)
    reader = csv.reader(io.StringIO(text))
    rows: list[list[str] | UnreadableRow] = []
    while True:
        try:
            rows.append(next(reader))
        except StopIteration:
            return rows
        except csv.Error as error:
            rows.append(UnreadableRow(reader.line_num, f"line {reader.line_num}: {error}"))


def parse_severstal_csv(
    rows: list[list[str]], image_shapes: Mapping[str, tuple[int, int]], source: str
) -> Parsed:
    """Labels of a Severstal train.csv, checked against the shapes (H, W) of its images."""
    if not rows:
        raise LabelFileError(f"{source} is empty: expected a header {NEW_HEADER} or {OLD_HEADER}")
    if isinstance(rows[0], UnreadableRow):
        raise LabelFileError(f"{source}: the header cannot be read ({rows[0].reason})")
    header = [h.strip() for h in rows[0]]
    if header not in (OLD_HEADER, NEW_HEADER):
        raise LabelFileError(
            f"{source} has header {header}; expected {NEW_HEADER} or {OLD_HEADER} "
            "(the two Severstal layouts)"
        )
    old_layout = header == OLD_HEADER
    parsed = Parsed()
    seen: dict[tuple[str, int], int] = {}
    for row_number, row in enumerate(rows[1:], start=2):
        if isinstance(row, UnreadableRow):
            parsed.error(
                source,
                row_number,
                None,
                "malformed_row",
                f"{row.reason}; fields may have at most {MAX_FIELD_CHARS} characters",
            )
            continue
        if not row:
            continue
        if len(row) != len(header):
            parsed.error(
                source,
                row_number,
                None,
                "malformed_row",
                f"{len(row)} fields, the header has {len(header)}: fix the row's commas",
            )
            continue
        if old_layout:
            image_id, _, class_text = row[0].strip().rpartition("_")
            rle = row[1]
        else:
            image_id, class_text, rle = row[0].strip(), row[1].strip(), row[2]
        if not rle.strip():
            continue  # the first layout's way of saying: no defect of this class
        class_field = "ImageId_ClassId" if old_layout else "ClassId"
        try:
            class_id = int(class_text)
        except ValueError:
            class_id = -1
        if class_id not in SEVERSTAL_CLASSES:
            parsed.error(
                source,
                row_number,
                class_field,
                "unknown_class",
                f"class {class_text!r} is not one of {sorted(SEVERSTAL_CLASSES)}",
            )
            continue
        if (image_id, class_id) in seen:
            parsed.error(
                source,
                row_number,
                class_field,
                "duplicate_label",
                f"{image_id} class {class_id} already has a mask at row "
                f"{seen[image_id, class_id]}: merge the two rows into one",
            )
            continue
        seen[image_id, class_id] = row_number
        shape = image_shapes.get(image_id)
        if shape is None:
            parsed.error(
                source,
                row_number,
                "ImageId",
                "missing_image",
                f"image {image_id!r} is missing or unreadable in train_images/ "
                "(see its own error, if any): add the image or remove the row",
            )
            continue
        try:
            starts, lengths = parse_runs(rle, shape)
        except RLEError as error:
            parsed.error(
                source,
                row_number,
                "EncodedPixels",
                "invalid_rle",
                f"{error}; fix or remove the row",
            )
            continue
        area, box = runs_area_bbox(starts, lengths, shape)
        parsed.labels.append(
            _label(
                image_id,
                class_id,
                SEVERSTAL_CLASSES[class_id],
                "mask",
                rle.strip(),
                area,
                box,
                row_number,
            )
        )
    return parsed


def _label(
    image_id: str,
    class_id: int,
    class_name: str,
    geometry: str,
    rle: str | None,
    area: int,
    box: tuple[int, int, int, int],
    source_row: int,
) -> dict:
    x_min, y_min, x_max, y_max = box
    return {
        "image_id": image_id,
        "class_id": class_id,
        "class_name": class_name,
        "geometry": geometry,
        "rle": rle,
        "area": area,
        "x_min": x_min,
        "y_min": y_min,
        "x_max": x_max,
        "y_max": y_max,
        "source_row": source_row,
    }


def parse_voc_boxes(
    data: bytes, image_id: str, image_shape: tuple[int, int], source: str
) -> Parsed:
    """Box labels of one Pascal VOC XML file for an image of shape (H, W).

    VOC boxes are 1-based and inclusive; they are stored 0-based, like mask boxes.
    """
    try:
        root = ElementTree.fromstring(data)
    except (ParseError, DefusedXmlException) as error:
        raise LabelFileError(f"{source} is not valid XML ({error}): export it again") from None
    if root.tag != "annotation":
        raise LabelFileError(f"{source} is not a Pascal VOC annotation (root <{root.tag}>)")
    height, width = image_shape
    names = {name: class_id for class_id, name in NEU_CLASSES.items()}
    parsed = Parsed()
    for index, obj in enumerate(root.iter("object")):
        name = (obj.findtext("name") or "").strip()
        if name not in names:
            parsed.error(
                source,
                index,
                "name",
                "unknown_class",
                f"object {index} has class {name!r}, not one of {sorted(names)}",
            )
            continue
        try:
            x_min, y_min, x_max, y_max = (
                int(float(obj.findtext(f"bndbox/{k}") or ""))
                for k in ("xmin", "ymin", "xmax", "ymax")
            )
        except ValueError:
            parsed.error(
                source,
                index,
                "bndbox",
                "invalid_box",
                f"object {index} needs integer xmin, ymin, xmax, ymax",
            )
            continue
        if not (1 <= x_min <= x_max <= width and 1 <= y_min <= y_max <= height):
            parsed.error(
                source,
                index,
                "bndbox",
                "invalid_box",
                f"object {index} box ({x_min}, {y_min}, {x_max}, {y_max}) is empty or "
                f"outside the {width}x{height} image (VOC boxes are 1-based)",
            )
            continue
        area = (x_max - x_min + 1) * (y_max - y_min + 1)
        parsed.labels.append(
            _label(
                image_id,
                names[name],
                name,
                "box",
                None,
                area,
                (x_min - 1, y_min - 1, x_max - 1, y_max - 1),
                index,
            )
        )
    return parsed
