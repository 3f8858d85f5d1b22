"""Importing labelled datasets into the warehouse: read the folder, parse, commit one import.

Two formats are recognised by their layout:
  Severstal  ``train.csv`` + ``train_images/``
  NEU-DET    ``images/`` + ``annotations/`` (one Pascal VOC XML per image)

Each folder is one archive. Importing it again replaces its rows (same archive id,
new import), so re-running is idempotent. Every image and label row is either taken
in or written to ``ingest_errors`` with the file, row, field and reason.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

import pyarrow as pa

from core.images import ImageError, ImageInfo, image_info
from core.labels import (
    LabelFileError,
    Parsed,
    parse_severstal_csv,
    parse_voc_boxes,
    read_csv_rows,
)
from warehouse.schema import TABLES
from warehouse.store import Warehouse, new_import_id

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


class SourceError(ValueError):
    """A path that is not a dataset steelsight can import."""


@dataclass(frozen=True)
class ImportSummary:
    archive_id: str
    kind: str
    path: str
    status: str
    n_images: int
    n_labels: int
    n_errors: int


@dataclass(frozen=True)
class ImageFile:
    image_id: str
    path: Path
    sha256: str
    info: ImageInfo | None
    error: str | None


def detect_kind(path: Path) -> str:
    if (path / "train.csv").is_file() and (path / "train_images").is_dir():
        return "severstal"
    if (path / "images").is_dir() and (path / "annotations").is_dir():
        return "neu-det"
    raise SourceError(
        f"{path} is not a dataset steelsight knows: expected a Severstal folder "
        "(train.csv + train_images/) or a NEU-DET folder (images/ + annotations/)"
    )


def archive_id_for(path: Path) -> str:
    """A readable, stable id for a folder: its name plus a hash of its absolute path."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", path.name).strip("-") or "archive"
    return f"{slug}-{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"


def _read_image(path: Path) -> ImageFile:
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    try:
        return ImageFile(path.name, path, digest, image_info(data), None)
    except ImageError as error:
        return ImageFile(path.name, path, digest, None, str(error))


def read_images(folder: Path) -> list[ImageFile]:
    """Every image file in a folder, hashed and checked (decoding runs in threads)."""
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    with ThreadPoolExecutor(max_workers=4) as pool:  # OpenCV decodes without the GIL
        return list(pool.map(_read_image, paths))


def _severstal(path: Path) -> tuple[list[ImageFile], Parsed, list[tuple[str, str]]]:
    images = read_images(path / "train_images")
    shapes = {i.image_id: (i.info.height, i.info.width) for i in images if i.info}
    csv_path = path / "train.csv"
    data = csv_path.read_bytes()
    hashed = [(csv_path.name, hashlib.sha256(data).hexdigest())]
    try:
        parsed = parse_severstal_csv(read_csv_rows(data, str(csv_path)), shapes, str(csv_path))
    except LabelFileError as error:
        parsed = Parsed()
        parsed.error(str(csv_path), None, None, "unreadable_labels", str(error))
    return images, parsed, hashed


def _neu_det(path: Path) -> tuple[list[ImageFile], Parsed, list[tuple[str, str]]]:
    images = read_images(path / "images")
    by_stem = {i.path.stem: i for i in images}
    parsed = Parsed()
    hashed = []
    annotated = set()
    for xml_path in sorted((path / "annotations").glob("*.xml")):
        data = xml_path.read_bytes()
        hashed.append((f"annotations/{xml_path.name}", hashlib.sha256(data).hexdigest()))
        image = by_stem.get(xml_path.stem)  # NEU's <filename> sometimes lacks the extension
        if image is None or image.info is None:
            parsed.error(
                str(xml_path),
                None,
                "filename",
                "missing_image",
                f"no readable image {xml_path.stem}.* in images/ for this annotation",
            )
            continue
        annotated.add(image.image_id)
        try:
            one = parse_voc_boxes(
                data, image.image_id, (image.info.height, image.info.width), str(xml_path)
            )
        except LabelFileError as error:
            parsed.error(str(xml_path), None, None, "unreadable_labels", str(error))
            continue
        parsed.labels += one.labels
        parsed.errors += one.errors
    for image in images:
        if image.info and image.image_id not in annotated:
            parsed.error(
                str(image.path),
                None,
                None,
                "missing_annotation",
                f"no annotations/{image.path.stem}.xml for this image: its boxes are "
                "unknown (the image is registered without labels)",
            )
    return images, parsed, hashed


READERS: dict[str, Callable[[Path], tuple[list[ImageFile], Parsed, list[tuple[str, str]]]]] = {
    "severstal": _severstal,
    "neu-det": _neu_det,
}


def _rows(records: Iterable[dict], **common: object) -> list[dict]:
    return [{**common, **r} for r in records]


def import_label_source(
    path: Path,
    warehouse: Warehouse,
    content_sha256: str | None = None,
    extra: dict | None = None,
) -> ImportSummary:
    """Import one labelled dataset folder as one archive; returns what was taken in.
    ``content_sha256``: the archive's hash when the caller has it (ingest hashes every
    file); by default a hash over the images and label files. ``extra``: more columns of
    the archives row (received_from)."""
    path = Path(path).resolve()
    if not path.is_dir():
        raise SourceError(f"{path} is not a folder")
    kind = detect_kind(path)
    images, parsed, hashed = READERS[kind](path)
    archive_id, import_id = archive_id_for(path), new_import_id()
    ids = {"archive_id": archive_id, "import_id": import_id}

    image_errors = [
        {
            "source": str(i.path),
            "source_row": None,
            "field": None,
            "error_kind": "unreadable_image",
            "reason": i.error,
        }
        for i in images
        if i.error
    ]
    errors = [{**e, "error_index": n} for n, e in enumerate(image_errors + parsed.errors)]
    per_image: dict[str, int] = {}
    labels = []
    for label in parsed.labels:
        index = per_image.get(label["image_id"], 0)
        per_image[label["image_id"]] = index + 1
        labels.append({**label, "label_index": index})
    image_rows = [
        {
            "image_id": i.image_id,
            "path": str(i.path),
            "width": i.info.width,
            "height": i.info.height,
            "channels": i.info.channels,
            "sha256": i.sha256,
        }
        for i in images
        if i.info
    ]
    hashed += [(f"images/{i.image_id}", i.sha256) for i in images]
    content = (
        content_sha256
        or hashlib.sha256("\n".join(f"{n} {h}" for n, h in sorted(hashed)).encode()).hexdigest()
    )

    taken = len(image_rows) + len(labels)
    status = "failed" if not taken else ("partial" if errors else "ok")
    archive = {
        **ids,
        "kind": kind,
        "path": str(path),
        "content_sha256": content,
        "status": status,
        "n_images": len(image_rows),
        "n_labels": len(labels),
        "n_errors": len(errors),
        "imported_at": datetime.now(UTC),
        "steelsight_version": version("steelsight"),
        **(extra or {}),
    }
    warehouse.import_archive(
        archive,
        {
            "images": pa.Table.from_pylist(_rows(image_rows, **ids), TABLES["images"].schema),
            "labels": pa.Table.from_pylist(_rows(labels, **ids), TABLES["labels"].schema),
            "ingest_errors": pa.Table.from_pylist(
                _rows(errors, **ids), TABLES["ingest_errors"].schema
            ),
        },
    )
    log.info(
        "imported %s (%s): %d images, %d labels, %d errors, status %s",
        path,
        kind,
        len(image_rows),
        len(labels),
        len(errors),
        status,
    )
    return ImportSummary(
        archive_id, kind, str(path), status, len(image_rows), len(labels), len(errors)
    )
