"""Builders of small datasets on disk for tests, from the real data in shared/."""

from __future__ import annotations

import csv
import shutil
from dataclasses import dataclass
from pathlib import Path


def copy_severstal(shared_data: Path, dest: Path) -> Path:
    """A writable copy of the real Severstal sample."""
    shutil.copytree(shared_data / "severstal-sample", dest)
    for path in dest.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    dest.chmod(0o755)
    return dest


def severstal_rows(folder: Path) -> list[dict[str, str]]:
    with (folder / "train.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def to_old_layout(folder: Path) -> None:
    """Rewrite train.csv in the competition's first layout: four rows per image."""
    masks = {(r["ImageId"], r["ClassId"]): r["EncodedPixels"] for r in severstal_rows(folder)}
    images = sorted(p.name for p in (folder / "train_images").iterdir())
    rows = [
        [f"{image}_{c}", masks.get((image, str(c)), "")] for image in images for c in range(1, 5)
    ]
    write_csv(folder / "train.csv", ["ImageId_ClassId", "EncodedPixels"], rows)


def copy_neu_subset(shared_data: Path, dest: Path, per_class: int = 5) -> Path:
    """A small NEU-DET folder: the first images of each class with their annotations."""
    (dest / "images").mkdir(parents=True)
    (dest / "annotations").mkdir()
    source = shared_data / "neu-det"
    prefixes = ("crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches")
    for prefix in prefixes:
        for n in range(1, per_class + 1):
            stem = f"{prefix}_{n}"
            shutil.copyfile(source / "images" / f"{stem}.jpg", dest / "images" / f"{stem}.jpg")
            shutil.copyfile(
                source / "annotations" / f"{stem}.xml", dest / "annotations" / f"{stem}.xml"
            )
    return dest


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def deliver(archives: list[Path], landing: Path) -> None:
    """As a recorder does: each archive appears in the landing folder whole (a rename)."""
    landing.mkdir(parents=True, exist_ok=True)
    for archive in archives:
        archive.rename(landing / archive.name)


LINE_SHEETS = 6


@dataclass(frozen=True)
class MainJob:
    """A home where the main job ran: demo-size champions trained on a 30-sheet twin
    line, then a 6-sheet line (and a cut recording) ingested from the landing folder and
    inspected on a LocalCluster."""

    root: Path
    home: Path
    line: Path  # the line's inspection archive, as it arrived in the landing folder
    ingested: list[dict]
    inspected: list[dict]
    trained: dict[str, dict]  # kind -> what its retrain run returned
