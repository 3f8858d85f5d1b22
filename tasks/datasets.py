"""Loading labelled data for training and evaluation, from any folder steelsight knows.

Segmentation: a Severstal folder (train.csv + train_images/) or a twin inspection archive
(manifest.json, frames, ground_truth/defects.csv in the Severstal layout). Classification:
a NEU-DET folder (images/ + annotations/, the class from each image's boxes) or a folder
of class folders (``<class>/*.jpg``, seed 002's layout). Labels go through the same
parsers as the warehouse import; a row that is bad there is skipped here with a warning
naming it, and the rest is used.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import cv2
import numpy as np

from core.labels import (
    NEU_CLASSES,
    SEVERSTAL_CLASSES,
    LabelFileError,
    parse_severstal_csv,
    read_csv_rows,
)
from models.data import ClassificationData, SegmentationData, digest_ids
from models.preprocess import colourful, with_channels
from tasks.archives import ArchiveError, frames_following, read_frames, read_manifest
from tasks.identity import find_pairs, load_observations, write_yolo_dataset
from tasks.labels import READERS as LABEL_READERS
from tasks.labels import SourceError

log = logging.getLogger(__name__)
TWIN_SPLIT_BLOCK = 8  # consecutive frames (about 2 m of line) that share a split
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}


def dataset_kind(path: Path) -> str:
    """severstal, twin, neu-det or class-folders."""
    if not path.is_dir():
        raise SourceError(f"{path} is not a folder")
    if (path / "manifest.json").is_file() and (path / "ground_truth" / "defects.csv").is_file():
        return "twin"
    if (path / "train.csv").is_file() and (path / "train_images").is_dir():
        return "severstal"
    if (path / "images").is_dir() and (path / "annotations").is_dir():
        return "neu-det"
    subfolders = [p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if subfolders and all(
        any(f.suffix.lower() in IMAGE_SUFFIXES for f in p.iterdir()) for p in subfolders
    ):
        return "class-folders"
    raise SourceError(
        f"{path} is not a dataset steelsight knows: expected a Severstal folder (train.csv + "
        "train_images/), a twin inspection archive (manifest.json + ground_truth/defects.csv), "
        "a NEU-DET folder (images/ + annotations/) or one folder of images per class"
    )


def _warn_errors(errors: list[dict]) -> None:
    for e in errors[:10]:
        log.warning("skipped %s row %s: %s", e["source"], e["source_row"], e["reason"])
    if len(errors) > 10:
        log.warning(
            "... and %d more label errors (steelsight import-labels lists them)", len(errors) - 10
        )


def _rles_by_image(labels: list[dict]) -> dict[str, dict[int, str]]:
    out: dict[str, dict[int, str]] = {}
    for label in labels:
        out.setdefault(label["image_id"], {})[label["class_id"]] = label["rle"]
    return out


def _severstal(path: Path) -> SegmentationData:
    images, parsed, _ = LABEL_READERS["severstal"](path)
    _warn_errors(parsed.errors)
    readable = [i for i in images if i.info is not None]
    shapes = Counter((i.info.height, i.info.width) for i in readable)
    if len(shapes) > 1:
        raise SourceError(f"{path}: images of several sizes {dict(shapes)}; one size per dataset")
    rles = _rles_by_image(parsed.labels)
    pixels = np.stack([cv2.imread(str(i.path), cv2.IMREAD_GRAYSCALE) for i in readable])
    ids = [i.image_id for i in readable]
    return SegmentationData(
        str(path), ids, pixels, [rles.get(i, {}) for i in ids], SEVERSTAL_CLASSES
    )


def _twin(path: Path) -> SegmentationData:
    ids, frames = [], []
    try:
        for frame_id, frame in read_frames(path):
            ids.append(frame_id)
            frames.append(frame)
    except ArchiveError as error:
        if not frames:
            raise SourceError(str(error)) from None
        log.warning("%s; training on the %d frames before it", error, len(frames))
    pixels = np.stack(frames)
    shape = pixels.shape[1:]
    csv_path = path / "ground_truth" / "defects.csv"
    try:
        rows = read_csv_rows(csv_path.read_bytes(), str(csv_path))
        parsed = parse_severstal_csv(rows, dict.fromkeys(ids, shape), str(csv_path))
    except LabelFileError as error:
        raise SourceError(str(error)) from None
    _warn_errors(parsed.errors)
    rles = _rles_by_image(parsed.labels)
    name = read_manifest(path).camera_id
    groups = [f"{name}:{int(i.rsplit('_', 1)[1]) // TWIN_SPLIT_BLOCK}" for i in ids]
    following = frames_following(path)  # frames that tile the line, for the rows around each
    return SegmentationData(
        str(path),
        ids,
        pixels,
        [rles.get(i, {}) for i in ids],
        SEVERSTAL_CLASSES,
        groups,
        [following.get(i, False) for i in ids],
    )


def load_segmentation(path: Path) -> SegmentationData:
    kind = dataset_kind(path)
    if kind == "severstal":
        data = _severstal(path)
    elif kind == "twin":
        data = _twin(path)
    else:
        raise SourceError(f"{path} is a {kind} folder: segmentation needs Severstal or twin masks")
    log.info(
        "%s: %d images of %dx%d, %d masks",
        path,
        len(data),
        data.images.shape[2],
        data.images.shape[1],
        sum(len(r) for r in data.rles),
    )
    return data


def _resize_to(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if image.shape[:2] == shape:
        return image
    return cv2.resize(image, (shape[1], shape[0]), interpolation=cv2.INTER_AREA)


# A data set is in colour when at least this share of its pictures is: colour may be what
# tells its classes apart (red scale), while a grey set loses nothing but a channel count.
COLOUR_SHARE = 0.1


def _class_picture(path: Path) -> np.ndarray | None:
    """A picture to classify: RGB (H, W, 3) uint8 when it shows colour, else grey (H, W)
    (a grey picture stored as colour, as NEU's JPEGs are, becomes grey); None: unreadable."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        return None
    rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return rgb if colourful(rgb) else cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


def _classification_data(
    path: Path, ids: list[str], pixels: list[np.ndarray], labels: list[int], names: list[str]
) -> ClassificationData:
    """Pictures brought to the folder's most common size, and all to colour when enough of
    them are in colour (else all to grey), stacked with their labels."""
    colour = bool(pixels) and sum(p.ndim == 3 for p in pixels) >= COLOUR_SHARE * len(pixels)
    channels = 3 if colour else 1
    if colour:
        log.info("%s: pictures in colour, classified in colour (RGB)", path)
    shape = Counter(p.shape[:2] for p in pixels).most_common(1)[0][0]
    pixels = [with_channels(_resize_to(p, shape)[None], channels)[0] for p in pixels]
    return ClassificationData(str(path), ids, np.stack(pixels), np.array(labels), names)


def _image_class(stem: str, found: set[str]) -> str | None:
    """An image's single class: its boxes' class, or where its boxes name several, the one
    its file is named after (NEU's own image-level label, as in NEU-CLS)."""
    if len(found) == 1:
        return next(iter(found))
    named = [name for name in found if stem.startswith(f"{name}_")]
    return named[0] if len(named) == 1 else None


def _neu_det(path: Path) -> ClassificationData:
    images, parsed, _ = LABEL_READERS["neu-det"](path)
    _warn_errors(parsed.errors)
    classes_of: dict[str, set[str]] = {}
    for label in parsed.labels:
        classes_of.setdefault(label["image_id"], set()).add(label["class_name"])
    names = list(NEU_CLASSES.values())
    ids, pixels, labels, skipped, mixed = [], [], [], [], 0
    for image in images:
        name = _image_class(image.path.stem, classes_of.get(image.image_id, set()))
        if name is None:
            skipped.append(image.path.name)
            continue
        mixed += len(classes_of[image.image_id]) > 1
        ids.append(image.image_id)
        pixels.append(_class_picture(image.path))
        labels.append(names.index(name))
    if mixed:
        log.info(
            "%d images also show boxes of another class; labelled by their file's class", mixed
        )
    if skipped:
        log.warning("skipped %d images whose class is unclear (e.g. %s)", len(skipped), skipped[:3])
    return _classification_data(path, ids, pixels, labels, names)


def _class_folders(path: Path) -> ClassificationData:
    names = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    ids, pixels, labels = [], [], []
    for k, name in enumerate(names):
        for file in sorted((path / name).iterdir()):
            if file.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            image = _class_picture(file)
            if image is None:
                log.warning("skipped %s: not a readable image", file)
                continue
            ids.append(f"{name}/{file.name}")
            pixels.append(image)
            labels.append(k)
    return _classification_data(path, ids, pixels, labels, names)


def load_classification(path: Path) -> ClassificationData:
    kind = dataset_kind(path)
    if kind == "neu-det":
        data = _neu_det(path)
    elif kind == "class-folders":
        data = _class_folders(path)
    else:
        raise SourceError(
            f"{path} is a {kind} folder: classification needs NEU-DET or class folders"
        )
    log.info("%s: %d images in %d classes", path, len(data), len(data.class_names))
    return data


@dataclass
class Prepared:
    """A model kind's labelled data split once: train, validation and the fixed holdout,
    in whatever form the kind's family fits and scores (models.kinds)."""

    kind: str
    source: str
    train: Any
    validation: Any
    holdout: Any
    holdout_ids: list[str]
    counts: dict[str, int]

    @property
    def holdout_digest(self) -> str:
        return digest_ids(self.holdout_ids)


def _split(kind: str, path: Path, data: SegmentationData | ClassificationData) -> Prepared:
    split = data.splits()
    empty = [name for name, index in split.items() if len(index) == 0]
    if empty:
        raise ValueError(
            f"{path} has {len(data)} images, too few for a train/validation/holdout split "
            f"({', '.join(empty)} would be empty): record or label more"
        )
    log.info("%s split: %s", path, {k: len(v) for k, v in split.items()})
    return Prepared(
        kind,
        data.source,
        data.subset(split["train"]),
        data.subset(split["validation"]),
        data.subset(split["holdout"]),
        [data.ids[i] for i in split["holdout"]],
        {k: len(v) for k, v in split.items()},
    )


def _defect_masks(kind: str, path: Path, workdir: Path, recipe) -> Prepared:
    return _split(kind, path, load_segmentation(path))


def _class_images(kind: str, path: Path, workdir: Path, recipe) -> Prepared:
    return _split(kind, path, load_classification(path))


def _marking_boxes(kind: str, path: Path, workdir: Path, recipe) -> Prepared:
    dataset = write_yolo_dataset(
        find_pairs(path),
        workdir / "yolo",
        recipe.max_images,
        stacked_at=recipe.imgsz if recipe.stacked else None,
    )
    log.info("marking dataset %s: %s", path, dataset.counts)
    if not dataset.counts["train"] or not dataset.counts["validation"]:
        raise ValueError(f"{path} has too few pictures for a train/validation split")
    return Prepared(
        kind,
        str(path),
        dataset,
        dataset,  # one YOLO folder holds both parts
        dataset.holdout,
        list(dataset.holdout.names),
        dataset.counts,
    )


def _imprint_crops(kind: str, path: Path, workdir: Path, recipe) -> Prepared:
    o = load_observations(path)
    split = o.splits()
    log.info("imprint crops %s: %s", path, {k: len(v) for k, v in split.items()})
    holdout = o.subset(split["holdout"])
    return Prepared(
        kind,
        str(path),
        o.subset(split["train"]),
        o.subset(split["validation"]),
        holdout,
        [
            f"{s}/{f}/{k}"
            for s, f, k in zip(holdout.sources, holdout.frame_ids, holdout.sheet_ids, strict=True)
        ],
        {k: len(v) for k, v in split.items()},
    )


# A model kind's ``reader`` (models.kinds) → (kind, path, workdir, recipe) → Prepared.
READERS: Mapping[str, Callable[[str, Path, Path, Any], Prepared]] = MappingProxyType(
    {
        "defect-masks": _defect_masks,
        "class-images": _class_images,
        "marking-boxes": _marking_boxes,
        "imprint-crops": _imprint_crops,
    }
)
# Readers whose whole folder can be scored at once (`steelsight evaluate --split all`).
WHOLE = MappingProxyType({"defect-masks": load_segmentation, "class-images": load_classification})
